"""The VAE's fast inference path: the same function as the plain modules of
:mod:`cogvx_mini.vae`, in less time and memory. Read ``vae.py`` for the algorithm; this module is
only about speed, and ``tests/test_vae_fast.py`` asserts that both paths agree (float32, relative
error at most 1e-5, on random and on the shipped weights).

``VAE3D`` takes this path without autograd (``VAE3D.fast_inference``, on by default); training and
``fast_inference = False`` take the plain one. What differs from the plain path:

* **Fused norm.** GroupNorm, its affine map, the spatial norm's modulation and the SiLU that
  follows fold into one multiply-add per element, ``x * A + B``: ``A = rstd · weight [· scale]``
  and ``B = (bias - mean · rstd · weight) [· scale + shift]`` are computed in float32 at low
  resolution (per channel, or per latent pixel for the spatial norm, whose ``scale``/``shift``
  are resized to the feature map by a broadcast instead of a nearest-neighbour copy). One pass
  writes ``x.dtype`` (arithmetic in float32), then an in-place SiLU.
* **Residuals in place.** A ResNet block writes ``conv2(...) + x`` into ``x`` itself.
* **Streaming** (``VAE3D.time_slice = n``). Every norm computes its statistics over the whole
  chunk first, then normalises, activates and convolves ``n`` frames at a time, carrying the conv
  cache from slice to slice: only two full-size activations are alive at once instead of half a
  dozen. Statistics are computed slice by slice in float32 and combined exactly.
* **Conv kernels** (:class:`FastConv3d`, used by both paths): a 2D conv per frame for one-frame
  kernels, and oneDNN called directly for float32 3D convs on a CPU.

Tensors are videos or feature maps ``[B, C, T, H, W]``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class FastConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same result) with faster kernels where PyTorch's default
    choice is slow; ``nn.Conv3d.forward`` is the reference it is tested against."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size[0] == 1 and self.stride[0] == 1 and self.padding[0] == 0:
            # One frame in time: a 2D conv per frame (faster than a 3D conv on every backend).
            y = F.conv2d(
                rearrange(x, "b c t h w -> (b t) c h w"),
                self.weight[:, :, 0],
                self.bias,
                self.stride[1:],
                self.padding[1:],
                self.dilation[1:],
                self.groups,
            )
            return rearrange(y, "(b t) c h w -> b c t h w", b=x.shape[0])
        if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.enabled:
            # PyTorch's heuristic sends small batch-1 3D convs to a slow im2col kernel on CPU
            # (8x slower here); oneDNN is called directly instead (same math, autograd works).
            return torch.mkldnn_convolution(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(x)


def time_slices(frames: int, size: int | None) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive slices of ``size`` frames (one slice when ``None``)."""
    if size is None or size >= frames:
        return [(0, frames)]
    return [(s, min(s + size, frames)) for s in range(0, frames, size)]


def nearest_time_index(frames_out: int, frames_in: int, split_first: bool) -> list[int]:
    """Source frame of each output frame for nearest resizing in time (as ``F.interpolate``),
    with the first frame resized on its own when ``split_first`` (the causal first frame)."""
    if split_first and frames_out > 1 and frames_in > 1:
        rest_in, rest_out = frames_in - 1, frames_out - 1
        rest = [min(math.floor(i * (rest_in / rest_out)), rest_in - 1) for i in range(rest_out)]
        return [0] + [1 + i for i in rest]
    return [min(math.floor(i * (frames_in / frames_out)), frames_in - 1) for i in range(frames_out)]


@functools.lru_cache(maxsize=256)
def index_tensor(index: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``torch.tensor(index)`` on ``device``, cached: creating an index tensor on a GPU copies from
    the host and synchronises, and the same few patterns recur in every chunk."""
    # Made outside inference mode: a cached tensor created under torch.inference_mode() could
    # never be used by a later autograd run (training).
    with torch.inference_mode(False):
        return torch.tensor(index, device=device)


def group_stats(
    x: torch.Tensor, groups: int, eps: float, time_slice: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std per (batch, group) over channels-in-group, T, H, W, in float32: ``[B, G]``.

    Computed slice by slice (never a float32 copy of the whole chunk) and combined exactly.
    """
    xg = rearrange(x, "b (g c) t h w -> b g c t h w", g=groups)
    means, variances, counts = [], [], []
    if time_slice is None and x.dtype != torch.float32:
        time_slice = 2  # the float32 copy is made 2 frames at a time, never for the whole chunk
    for s, e in time_slices(x.shape[2], time_slice):
        v, m = torch.var_mean(xg[:, :, :, s:e].float(), dim=(2, 3, 4, 5), correction=0)
        means.append(m), variances.append(v), counts.append(e - s)
    if len(means) == 1:
        return means[0], torch.rsqrt(variances[0] + eps)
    # Combine the slices exactly (Chan et al.): weights are Python floats, so no host-to-device
    # copy (and no synchronisation) happens here.
    w = [n / x.shape[2] for n in counts]
    mean = sum(m * wi for m, wi in zip(means, w, strict=True))
    var = sum((v + (m - mean) ** 2) * wi for m, v, wi in zip(means, variances, w, strict=True))
    return mean, torch.rsqrt(var + eps)


def fused_norm_silu(x: torch.Tensor, stats, norm: nn.GroupNorm, scale=None, shift=None):
    """``silu(GroupNorm(x) [* scale + shift])`` on a slice ``x [B, C, t, H, W]`` with the chunk's
    ``stats``, in ``x.dtype``; ``scale``/``shift`` ``[B, C, t, h, w]`` at latent resolution."""
    mean, rstd = stats
    g = norm.num_groups
    weight = rearrange(norm.weight.float(), "(g c) -> g c", g=g)
    a = rearrange(rstd[:, :, None] * weight, "b g c -> b (g c)")
    b = norm.bias.float() - torch.repeat_interleave(mean, x.shape[1] // g, dim=1) * a
    a, b = a[:, :, None, None, None], b[:, :, None, None, None]
    out = torch.empty_like(x)  # keeps x's memory format (channels-last stays channels-last)
    if scale is None:
        torch.addcmul(b, x, a, out=out)
        return F.silu(out, inplace=True)
    h, w = scale.shape[-2:]  # the decoder's feature maps are whole multiples of h, w
    a, b = a * scale.float(), b * scale.float() + shift.float()
    # Nearest resizing by whole factors repeats each latent pixel: a broadcast over (i, j).
    pattern = "b c t (h i) (w j) -> b c t h i w j"
    a = rearrange(a, "b c t h w -> b c t h 1 w 1")
    b = rearrange(b, "b c t h w -> b c t h 1 w 1")
    torch.addcmul(b, rearrange(x, pattern, h=h, w=w), a, out=rearrange(out, pattern, h=h, w=w))
    return F.silu(out, inplace=True)


def norm_silu_conv(norm: nn.Module, conv: nn.Module, x: torch.Tensor, ctx, residual=None):
    """``conv(silu(norm(x))) [+ residual]`` slice by slice, with chunk-wide norm statistics and
    the conv cache; the sum is written into ``residual`` itself (no separate output buffer).

    ``norm`` is a ``GroupNorm3D`` or a ``SpatialNorm3D`` (``.norm``, ``.scale``, ``.shift``),
    ``conv`` a ``CausalConv3d``, ``ctx`` the ``ChunkContext`` of :mod:`cogvx_mini.vae`.
    """
    spatial = not isinstance(norm, nn.GroupNorm)
    group_norm = norm.norm if spatial else norm
    stats = group_stats(x, group_norm.num_groups, group_norm.eps, ctx.time_slice)
    frames = x.shape[2]
    if spatial:  # scale and shift at latent resolution; resized to each slice below
        mod = norm.scale(ctx.zq), norm.shift(ctx.zq)
        index = nearest_time_index(frames, ctx.zq.shape[2], ctx.first)
    slices = time_slices(frames, ctx.time_slice)
    out = residual
    for s, e in slices:
        if spatial:
            idx = index_tensor(tuple(index[s:e]), x.device)
            scale_shift = [m.index_select(2, idx) for m in mod]
        a = fused_norm_silu(x[:, :, s:e], stats, group_norm, *(scale_shift if spatial else ()))
        y = conv(a, ctx.cache)
        del a
        if residual is not None:
            out[:, :, s:e] += y
        elif len(slices) == 1:
            return y
        else:
            if out is None:
                out = y.new_empty((*y.shape[:2], frames, *y.shape[3:]))
            out[:, :, s:e] = y
    return out


def resnet_block(block: nn.Module, x: torch.Tensor, ctx) -> torch.Tensor:
    """``ResnetBlock3D.forward`` (``block``) without autograd; ``x`` is overwritten with the output
    when the block has no shortcut conv."""
    h = norm_silu_conv(block.norm1, block.conv1, x, ctx)
    if block.shortcut is None:
        return norm_silu_conv(block.norm2, block.conv2, h, ctx, residual=x)
    h = norm_silu_conv(block.norm2, block.conv2, h, ctx)
    for s, e in time_slices(x.shape[2], ctx.time_slice):
        h[:, :, s:e] += block.shortcut(x[:, :, s:e])
    return h


def in_time_slices(per_frame, x: torch.Tensor, time_slice: int) -> torch.Tensor:
    """``per_frame(x)`` for a frame-wise function, run ``time_slice`` frames at a time."""
    return torch.cat([per_frame(x[:, :, s:e]) for s, e in time_slices(x.shape[2], time_slice)], 2)


def upsample_streamed(block: nn.Module, x: torch.Tensor, ctx) -> torch.Tensor:
    """``Upsample3D.forward`` (``block``) ``time_slice`` output frames at a time: each slice
    gathers its source frames (nearest in time) and up-samples and convolves them alone."""
    b, c, t, h, w = x.shape
    t_out = block.output_frames(t, ctx.first)
    index = nearest_time_index(t_out, t, ctx.first)
    out = x.new_empty((b, c, t_out, 2 * h, 2 * w))
    for s, e in time_slices(t_out, ctx.time_slice):
        source = x.index_select(2, index_tensor(tuple(index[s:e]), x.device))
        out[:, :, s:e] = block.upsample_frames(source)
    return out
