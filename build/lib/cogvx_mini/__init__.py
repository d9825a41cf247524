"""cogvx-mini: CogVideoX built piece by piece, small enough to run on a laptop CPU.

One module per concept; the chapters in ``chapters/`` import from here and never re-implement.
Videos are ``[B, C, T, H, W]`` at pixel and latent level; token sequences are ``[B, N, D]``.
"""

__version__ = "0.1.0"
