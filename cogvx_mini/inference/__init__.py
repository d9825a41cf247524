"""Sampling tooling beyond the paper: step caching (lossy, opt-in) and memory savers (block
streaming, weight-only quantization), applied to a built transformer from outside."""
