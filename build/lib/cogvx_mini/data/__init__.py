"""The data the mini models learn from: the procedural toy world (videos, captions, judge), the
text encoders, and video file reading and writing."""
