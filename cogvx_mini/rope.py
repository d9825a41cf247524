"""Where is a video token? 3D rotary embeddings (CogVideoX-5B) and 3D sinusoidal ones (2B).

**3D-RoPE** [@su2021roformer; @yang2024cogvideox] splits each attention head's channels into three
groups and rotates them by the token's frame index ``t``, row ``h`` and column ``w``: a quarter of
the channels for time and three eighths each for height and width (16 + 24 + 24 of 64). Channel
pairs ``(2i, 2i+1)`` of a group turn by the angle ``position · theta^(-2i/d)``, so the score
``q·k`` between two rotated vectors depends only on their offset ``(Δt, Δh, Δw)``. It acts on the
video queries and keys only; text tokens carry no position.

**3D sinusoidal** absolute embeddings (CogVideoX-2B) are added to the video tokens once, after the
patch embedding: a quarter of the width encodes ``t``, the rest ``(w, h)``, each as
``[sin | cos]`` of ``position / interpolation_scale`` at geometric frequencies.

Position grids: a grid of another size either *extrapolates* (positions ``0, 1, 2, ...`` at
every size: the front of one larger table; a grid larger than any trained on reaches positions
never seen in training) or *interpolates* (the grid is squeezed into the base grid's range,
positions become fractional). CogVideoX trains with the first (its released training code slices
the front of one table for every sample); diffusers' CogVideoX 1.0 pipeline interpolates a video
of another size into the 30 x 45 base grid at sampling time. On the base grid both are equal.
"""

from __future__ import annotations

import torch

Grid = tuple[int, int, int]
Positions = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of one head given to ``(t, h, w)``: ``(d/4, 3d/8, 3d/8)``, e.g. 64 -> (16, 24, 24).

    Every group must hold whole rotation pairs, so ``head_dim`` must be a multiple of 16.
    """
    if head_dim % 16:
        raise ValueError(f"expected a head dimension divisible by 16 for 3D-RoPE, got {head_dim}")
    return head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3


def rope_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angular frequencies ``theta^(-2i/dim)`` of the ``dim/2`` rotation pairs, ``[dim/2]``."""
    return theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def positions_extrapolated(grid: Grid) -> Positions:
    """Integer positions ``0..t-1, 0..h-1, 0..w-1``: a bigger grid = the front of a bigger table."""
    return tuple(torch.arange(n, dtype=torch.float32) for n in grid)  # type: ignore[return-value]


def positions_interpolated(grid: Grid, base: tuple[int, int]) -> Positions:
    """Positions of a ``(t, h, w)`` grid squeezed into a ``base = (h0, w0)`` training grid.

    The grid is resized to fit the base grid with its aspect ratio kept, centred, and its rows
    and columns spread evenly over the covered part, exactly as CogVideoX 1.0's released pipeline
    computes it (``linspace(start, stop·(n-1)/n, n)``; time is never interpolated). On the base
    grid itself this is ``0, 1, 2, ...``.
    """
    t, h, w = grid
    bh, bw = base
    if h / w > bh / bw:
        rh, rw = bh, round(bh / h * w)
    else:
        rw, rh = bw, round(bw / w * h)
    top, left = round((bh - rh) / 2), round((bw - rw) / 2)
    pos_h = torch.linspace(top, (top + rh) * (h - 1) / h, h, dtype=torch.float32)
    pos_w = torch.linspace(left, (left + rw) * (w - 1) / w, w, dtype=torch.float32)
    pos_t = torch.linspace(0, t * (t - 1) / t, t, dtype=torch.float32)
    return pos_t, pos_h, pos_w


def _angles_1d(dim: int, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Angle of each rotation pair, repeated for both channels of the pair: ``[len(pos), dim]``."""
    freqs = rope_frequencies(dim, theta).to(torch.float32)
    return torch.outer(pos.to(torch.float32), freqs).repeat_interleave(2, dim=1)


def rope_1d(
    dim: int, positions: torch.Tensor, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """1D RoPE tables ``(cos, sin)``, each float32 ``[len(positions), dim]``: pair ``i`` of a
    token at position ``p`` turns by ``p · theta^(-2i/dim)``."""
    if dim % 2:
        raise ValueError(f"expected an even dimension for RoPE, got {dim}")
    angles = _angles_1d(dim, torch.as_tensor(positions), theta)
    return angles.cos(), angles.sin()


def rope_3d(
    head_dim: int,
    grid: Grid,
    positions: Positions | None = None,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation tables ``(cos, sin)``, each ``[t·h·w, head_dim]`` float32, one row per video token.

    Rows follow the token order of :func:`cogvx_mini.patchify.patchify` (``t`` slowest). Channels
    hold ``t``'s group first, then ``h``'s, then ``w``'s (:func:`rope_split`); both channels of a
    rotation pair hold the same angle. ``positions`` defaults to
    :func:`positions_extrapolated`.
    """
    t, h, w = grid
    dt, dh, dw = rope_split(head_dim)
    pos_t, pos_h, pos_w = positions_extrapolated(grid) if positions is None else positions
    if (len(pos_t), len(pos_h), len(pos_w)) != (t, h, w):
        raise ValueError(f"expected positions of lengths {grid}, got {len(pos_t), len(pos_h)}, ...")
    a_t = _angles_1d(dt, pos_t, theta)[:, None, None, :].expand(t, h, w, dt)
    a_h = _angles_1d(dh, pos_h, theta)[None, :, None, :].expand(t, h, w, dh)
    a_w = _angles_1d(dw, pos_w, theta)[None, None, :, :].expand(t, h, w, dw)
    angles = torch.cat([a_t, a_h, a_w], dim=-1).reshape(t * h * w, head_dim).to(device)
    return angles.cos(), angles.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)``: each pair turned by 90 degrees."""
    x_even, x_odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x_odd, x_even), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., N, d]`` by the tables ``cos, sin [N, d]``: ``x·cos + rotate_pairs(x)·sin``.

    Norms are preserved (each pair is a 2D rotation). Computed in ``x``'s dtype.
    """
    if cos.shape != (x.shape[-2], x.shape[-1]) or sin.shape != cos.shape:
        raise ValueError(
            f"expected rope tables of shape {(x.shape[-2], x.shape[-1])}, "
            f"got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_pairs(x) * sin


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[sin | cos]`` of ``pos · 10000^(-2i/dim)``, float64 ``[len(pos), dim]``."""
    if dim % 2:
        raise ValueError(f"expected an even embedding dimension, got {dim}")
    omega = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.outer(pos.to(torch.float64), omega)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(
    dim: int,
    grid: Grid,
    spatial_scale: float = 1.875,
    temporal_scale: float = 1.0,
    positions: Positions | None = None,
) -> torch.Tensor:
    """CogVideoX-2B's absolute 3D embedding, float32 ``[t·h·w, dim]``, rows in token order.

    Channels: ``dim/4`` for time, then ``3dim/8`` for the column ``w`` and ``3dim/8`` for the row
    ``h`` (the reference's order). Positions (``None``: :func:`positions_extrapolated`, as 2B)
    are divided by the interpolation scales: 2B was trained with ``spatial_scale = 1.875``, so
    its 30 x 45 grid spans rows 0..15.5 and columns 0..23.5, the positions of a 16 x 24 grid.
    """
    if dim % 16:
        raise ValueError(f"expected a width divisible by 16 for the 3D sincos embedding, got {dim}")
    t, h, w = grid
    d_t, d_s = dim // 4, 3 * dim // 4
    pos_t, pos_h, pos_w = positions_extrapolated(grid) if positions is None else positions
    pos_t, pos_h, pos_w = pos_t / temporal_scale, pos_h / spatial_scale, pos_w / spatial_scale
    e_t = sincos_1d(d_t, pos_t)[:, None, None, :].expand(t, h, w, d_t)
    e_w = sincos_1d(d_s // 2, pos_w)[None, None, :, :].expand(t, h, w, d_s // 2)
    e_h = sincos_1d(d_s // 2, pos_h)[None, :, None, :].expand(t, h, w, d_s // 2)
    return torch.cat([e_t, e_w, e_h], dim=-1).reshape(t * h * w, dim).to(torch.float32)
