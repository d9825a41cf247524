"""Patchify: cut latents into non-overlapping patches, one token per patch, and put them back.

A latent video ``[B, C, T, H, W]`` becomes ``T/q · H/p · W/p`` tokens of ``C·q·p·p`` features,
ordered frame by frame, row by row (``t`` slowest, ``w`` fastest). CogVideoX 1.0 uses ``p = 2``
spatially and no temporal patch (``q = 1``); CogVideoX 1.5 uses ``q = 2``. Within a token the
features are ordered ``(c, q, p_h, p_w)``, the order of a ``Conv3d``/``Conv2d`` kernel, so a patch
embedding ``Linear`` and a strided convolution hold the same weights up to a reshape.
"""

from __future__ import annotations

import torch
from einops import rearrange


def patch_grid(
    frames: int, height: int, width: int, patch_size: int = 2, temporal_patch_size: int = 1
) -> tuple[int, int, int]:
    """Token grid ``(T/q, H/p, W/p)`` of a latent of ``frames x height x width``.

    Raises ``ValueError`` naming the axis when a size is not divisible by its patch.
    """
    for name, size, patch in (
        ("latent frames", frames, temporal_patch_size),
        ("latent height", height, patch_size),
        ("latent width", width, patch_size),
    ):
        if size < 1 or size % patch:
            raise ValueError(f"expected {name} divisible by the patch size {patch}, got {size}")
    return frames // temporal_patch_size, height // patch_size, width // patch_size


def patchify(
    latents: torch.Tensor, patch_size: int = 2, temporal_patch_size: int = 1
) -> torch.Tensor:
    """Latents ``[B, C, T, H, W]`` -> tokens ``[B, T/q · H/p · W/p, C · q · p · p]``."""
    if latents.ndim != 5:
        raise ValueError(f"expected latents [B, C, T, H, W], got shape {tuple(latents.shape)}")
    patch_grid(*latents.shape[2:], patch_size, temporal_patch_size)
    return rearrange(
        latents,
        "b c (t q) (h ph) (w pw) -> b (t h w) (c q ph pw)",
        q=temporal_patch_size,
        ph=patch_size,
        pw=patch_size,
    )


def unpatchify(
    tokens: torch.Tensor,
    grid: tuple[int, int, int],
    patch_size: int = 2,
    temporal_patch_size: int = 1,
) -> torch.Tensor:
    """Tokens ``[B, t·h·w, C · q · p · p]`` on the token grid ``(t, h, w)`` -> ``[B, C, T, H, W]``.

    The exact inverse of :func:`patchify`.
    """
    t, h, w = grid
    if tokens.ndim != 3 or tokens.shape[1] != t * h * w:
        raise ValueError(
            f"expected tokens [B, {t}*{h}*{w}={t * h * w}, features] for grid {grid}, "
            f"got shape {tuple(tokens.shape)}"
        )
    per_patch = temporal_patch_size * patch_size * patch_size
    if tokens.shape[2] % per_patch:
        raise ValueError(
            f"expected a feature count divisible by q*p*p = {per_patch}, got {tokens.shape[2]}"
        )
    return rearrange(
        tokens,
        "b (t h w) (c q ph pw) -> b c (t q) (h ph) (w pw)",
        t=t,
        h=h,
        w=w,
        q=temporal_patch_size,
        ph=patch_size,
        pw=patch_size,
    )
