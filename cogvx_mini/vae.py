"""The 3D causal VAE of CogVideoX: video ``[B, 3, 4k+1, H, W]`` <-> ``[B, 16, k+1, H/8, W/8]``.

Structure (the released model; diffusers' ``AutoencoderKLCogVideoX`` has the same weights):

* **Encoder**: causal conv in, 4 down blocks of ResNet blocks (causal 3x3x3 convs, GroupNorm,
  SiLU); blocks 0-2 end with a down-sampling (2x2 in space, stride-2 conv); those of blocks 0 and
  1 also halve time, keeping the first frame on its own (so 4k+1 -> 2k+1 -> k+1 frames); a mid
  block of 2 ResNets; GroupNorm, SiLU, causal conv out to the mean and log-variance of 16 channels.
* **Decoder**: the mirror image with one more ResNet per block and nearest up-sampling; every norm
  is a *spatial norm*: GroupNorm whose scale and shift are 1x1 convs of the latents, resized to
  the feature map, so the latents condition every layer.

**Chunks.** Videos are processed along time in chunks, carrying the conv cache from chunk to
chunk: encoding 8 frames at a time (the first chunk takes the remainder, 1 + 8 for 4k+1 frames)
and decoding 2 latent frames at a time (the first chunk takes the remainder). GroupNorm statistics
are those of the chunk, so the VAE is causal chunk by chunk: the outputs of a chunk never depend on
later chunks. This matches diffusers' chunking, so the outputs equal diffusers'.

**Exact streaming inside a chunk.** Memory is dominated by full-resolution activations of one
chunk. With ``time_slice=n`` every ResNet computes the GroupNorm statistics of its input over the
whole chunk first, then normalises, activates and convolves ``n`` frames at a time, carrying the
conv cache from slice to slice. The result is the same as the whole-chunk computation (up to float
rounding), but only two full-size activations are alive at once instead of half a dozen. The
spatial norm's 1x1 convs run on the small latents before the nearest up-sampling (which commutes
with a 1x1 conv), never at full resolution.

Weights of diffusers' model convert with :func:`vae_state_dict_from_diffusers`.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cogvx_mini.causal_conv import CausalConv3d, ConvCache
from cogvx_mini.shapes import check_frame_count


@dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of :class:`VAE3D`: ``cogvideox()`` the released model, ``mini()`` a CPU one.

    ``block_out_channels`` has one entry per resolution level (spatial compression
    ``2 ** (levels - 1)``); the first ``log2(temporal_compression)`` down-samplings halve time.
    ``scaling_factor`` multiplies latents before the transformer sees them (2B: 1.15258426).
    """

    in_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    layers_per_block: int = 3
    norm_groups: int = 32
    norm_eps: float = 1e-6
    temporal_compression: int = 4
    time_kernel: int = 3
    scaling_factor: float = 1.15258426
    encode_chunk_frames: int = 8
    decode_chunk_latents: int = 2
    tile_sample_size: tuple[int, int] = (240, 360)
    tile_overlap: tuple[float, float] = (1 / 6, 1 / 5)

    @classmethod
    def cogvideox(cls, scaling_factor: float = 1.15258426) -> VAEConfig:
        """The released CogVideoX VAE (2B scaling factor; pass 0.7 for 5B)."""
        return cls(scaling_factor=scaling_factor)

    @classmethod
    def mini(cls) -> VAEConfig:
        """Same structure (8x8x4, 16 latent channels), narrow and shallow for a 2-core CPU."""
        return cls(
            block_out_channels=(16, 32, 48, 48),
            layers_per_block=1,
            norm_groups=8,
            scaling_factor=1.0,
            tile_sample_size=(64, 64),
        )

    @classmethod
    def from_diffusers(cls, config: dict) -> VAEConfig:
        """Config of a diffusers ``AutoencoderKLCogVideoX`` (its ``vae/config.json`` as a dict)."""
        h, w = config.get("sample_height", 480), config.get("sample_width", 720)
        return cls(
            in_channels=config.get("in_channels", 3),
            latent_channels=config.get("latent_channels", 16),
            block_out_channels=tuple(config.get("block_out_channels", (128, 256, 256, 512))),
            layers_per_block=config.get("layers_per_block", 3),
            norm_groups=config.get("norm_num_groups", 32),
            norm_eps=config.get("norm_eps", 1e-6),
            temporal_compression=int(config.get("temporal_compression_ratio", 4)),
            scaling_factor=config.get("scaling_factor", 1.15258426),
            tile_sample_size=(h // 2, w // 2),
        )

    def row_tiles(self, height: int, width: int) -> VAEConfig:
        """A copy whose tiles span the whole ``width`` and half the ``height`` of the frame,
        overlapping in height only: fewer tiles and less recomputation than diffusers' grid of
        quarter-frame tiles. With ``time_slice=2``, 480x720 decodes faster than diffusers'
        untiled decode in less memory than its tiled one (``book/benchmarks.md``)."""
        return replace(
            self, tile_sample_size=(height // 2, width), tile_overlap=(self.tile_overlap[0], 0.0)
        )

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def time_levels(self) -> int:
        return int(math.log2(self.temporal_compression))

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``[B, 3, T, H, W]`` -> ``[B, C_lat, (T-1)/4+1, H/8, W/8]``."""
        b, _, t, h, w = video_shape
        s = self.spatial_compression
        return (b, self.latent_channels, (t - 1) // self.temporal_compression + 1, h // s, w // s)


def temporal_chunks(frames: int, size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk: ``size`` frames each, the first also takes the remainder.

    17 frames in chunks of 8 -> (0, 9), (9, 17); 5 latent frames in chunks of 2 -> (0, 3), (3, 5).
    """
    n, rem = max(frames // size, 1), frames % size
    return [(0 if i == 0 else size * i + rem, min(size * (i + 1) + rem, frames)) for i in range(n)]


def time_slices(frames: int, size: int | None) -> list[tuple[int, int]]:
    if size is None or size >= frames:
        return [(0, frames)]
    return [(s, min(s + size, frames)) for s in range(0, frames, size)]


@dataclass
class ChunkContext:
    """What every layer needs to know about the chunk it processes.

    ``cache``: the conv cache carried between chunks (and between slices of a chunk).
    ``first``: the chunk holds the video's first frame (which the time resampling keeps alone).
    ``zq``: the latent chunk ``[B, C_lat, T', h, w]`` conditioning the decoder's spatial norms.
    ``time_slice``: frames per slice inside the chunk (``None``: the whole chunk at once).
    """

    cache: ConvCache = field(default_factory=dict)
    first: bool = True
    zq: torch.Tensor | None = None
    time_slice: int | None = None


def _group_stats(
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


def _normalise(x: torch.Tensor, stats, norm: nn.GroupNorm, scale=None, shift=None) -> torch.Tensor:
    """``silu(GroupNorm(x) [* scale + shift])`` on a slice ``[B, C, t, H, W]`` with precomputed
    ``stats``, returned in ``x.dtype``.

    The normalisation, the affine map and the modulation fold into one multiply-add per element,
    ``x * A + B``: ``A = rstd · weight [· scale]`` and ``B = (bias - mean · rstd · weight)
    [· scale + shift]`` are computed in float32 at low resolution (per channel, or per latent
    pixel for the spatial norm, whose ``scale``/``shift`` ``[B, C, t, h, w]`` are resized to
    ``H, W`` by a broadcast instead of a nearest-neighbour copy). Without autograd this is one
    pass writing ``x.dtype`` (arithmetic in float32) plus an in-place SiLU.
    """
    mean, rstd = stats
    g = norm.num_groups
    per_group = x.shape[1] // g
    weight = rearrange(norm.weight.float(), "(g c) -> g c", g=g)
    a = rearrange(rstd[:, :, None] * weight, "b g c -> b (g c)")
    b = norm.bias.float() - torch.repeat_interleave(mean, per_group, dim=1) * a
    a, b = a[:, :, None, None, None], b[:, :, None, None, None]
    view = x
    if scale is not None:
        h, w = scale.shape[-2:]  # the decoder's feature maps are whole multiples of h, w
        a, b = a * scale.float(), b * scale.float() + shift.float()
        # Nearest resizing by whole factors repeats each latent pixel: a broadcast over (i, j).
        pattern = "b c t (h i) (w j) -> b c t h i w j"
        view = rearrange(x, pattern, h=h, w=w)
        a = rearrange(a, "b c t h w -> b c t h 1 w 1")
        b = rearrange(b, "b c t h w -> b c t h 1 w 1")
    if torch.is_grad_enabled():
        y = F.silu(view * a + b).to(x.dtype)
        return y.reshape(x.shape)
    out = torch.empty_like(x)  # keeps x's memory format (channels-last stays channels-last)
    torch.addcmul(b, view, a, out=out if view is x else rearrange(out, pattern, h=h, w=w))
    return F.silu(out, inplace=True)


@functools.lru_cache(maxsize=256)
def _index_tensor(index: tuple[int, ...], device: torch.device) -> torch.Tensor:
    # Cached: creating an index tensor on a GPU copies from the host and synchronises; the same
    # few patterns recur in every chunk. Made outside inference mode: a cached tensor created
    # under torch.inference_mode() could never be used by a later autograd run (training).
    with torch.inference_mode(False):
        return torch.tensor(index, device=device)


def _nearest_time_index(frames_out: int, frames_in: int, split_first: bool) -> list[int]:
    """Source frame of each output frame for nearest resizing in time (as ``F.interpolate``),
    with the first frame resized on its own when ``split_first`` (the causal first frame)."""
    if split_first and frames_out > 1:
        rest_in, rest_out = frames_in - 1, frames_out - 1
        return [0] + [
            1 + min(math.floor(i * (rest_in / rest_out)), rest_in - 1) for i in range(rest_out)
        ]
    return [min(math.floor(i * (frames_in / frames_out)), frames_in - 1) for i in range(frames_out)]


class GroupNorm3D(nn.GroupNorm):
    """GroupNorm over ``[B, C, T, H, W]`` (statistics over C/G, T, H, W) in two steps:
    ``stats(x)`` over the chunk, then ``apply(slice, stats, ...)`` -> ``silu(norm(slice))`` on
    any time slice (the SiLU that always follows is fused in)."""

    def stats(self, x: torch.Tensor, ctx: ChunkContext):
        return _group_stats(x, self.num_groups, self.eps, ctx.time_slice)

    def apply(self, x, stats, ctx: ChunkContext, start: int, frames: int) -> torch.Tensor:
        return _normalise(x, stats, self)


class SpatialNorm3D(nn.Module):
    """GroupNorm whose output is modulated by the latents: ``GN(f) * scale(zq) + shift(zq)``.

    ``zq`` ``[B, C_lat, T', h, w]`` is resized (nearest) to the feature map's ``T, H, W``; in the
    chunk holding the first frame, the first latent frame maps to the first feature frame only.
    ``scale`` and ``shift`` are 1x1x1 convs, run on the latents before resizing. Like
    :class:`GroupNorm3D`, ``apply`` returns ``silu(norm(f) * scale + shift)`` for a time slice.
    """

    def __init__(self, channels: int, zq_channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.scale = CausalConv3d(zq_channels, channels, 1)
        self.shift = CausalConv3d(zq_channels, channels, 1)

    def stats(self, f: torch.Tensor, ctx: ChunkContext):
        return _group_stats(f, self.norm.num_groups, self.norm.eps, ctx.time_slice)

    def modulation(self, ctx: ChunkContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and shift at latent resolution, ``[B, C, T', h, w]`` each."""
        return self.scale.run_conv(ctx.zq), self.shift.run_conv(ctx.zq)

    def apply(self, f, stats, ctx: ChunkContext, start: int, frames: int, mod=None) -> torch.Tensor:
        scale, shift = mod if mod is not None else self.modulation(ctx)
        index = _nearest_time_index(frames, ctx.zq.shape[2], ctx.first)[start : start + f.shape[2]]
        idx = _index_tensor(tuple(index), f.device)
        # Resized in time here (a few latent frames); in space inside _normalise (a broadcast).
        return _normalise(
            f, stats, self.norm, scale.index_select(2, idx), shift.index_select(2, idx)
        )


class ResnetBlock3D(nn.Module):
    """norm -> SiLU -> causal conv -> norm -> SiLU -> causal conv, plus a (1x1x1) shortcut.

    ``forward(x [B, C_in, T, H, W], ctx) -> [B, C_out, T, H, W]``. ``zq_channels`` switches the
    norms to :class:`SpatialNorm3D` (decoder).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        groups: int,
        eps: float,
        zq_channels: int | None = None,
        time_kernel: int = 3,
    ) -> None:
        super().__init__()
        if zq_channels is None:
            self.norm1 = GroupNorm3D(groups, cin, eps=eps)
            self.norm2 = GroupNorm3D(groups, cout, eps=eps)
        else:
            self.norm1 = SpatialNorm3D(cin, zq_channels, groups, eps)
            self.norm2 = SpatialNorm3D(cout, zq_channels, groups, eps)
        self.conv1 = CausalConv3d(cin, cout, (time_kernel, 3, 3))
        self.conv2 = CausalConv3d(cout, cout, (time_kernel, 3, 3))
        self.shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else None

    @staticmethod
    def _norm_act_conv(
        norm, conv: CausalConv3d, x: torch.Tensor, ctx: ChunkContext, residual=None
    ) -> torch.Tensor:
        """``conv(silu(norm(x))) [+ residual]`` slice by slice; chunk-wide norm statistics,
        cached conv. Without autograd the sum is written into ``residual`` itself, slice by
        slice: streaming then holds no separate output buffer."""
        stats = norm.stats(x, ctx)
        mod = norm.modulation(ctx) if isinstance(norm, SpatialNorm3D) else None
        slices = time_slices(x.shape[2], ctx.time_slice)
        in_place = residual is not None and not torch.is_grad_enabled()
        out = residual if in_place else None
        for s, e in slices:
            kw = {"mod": mod} if mod is not None else {}
            a = norm.apply(x[:, :, s:e], stats, ctx, s, x.shape[2], **kw)  # norm + SiLU
            y = conv(a, ctx.cache)
            del a
            if in_place:
                out[:, :, s:e] += y
                continue
            if residual is not None:
                y = y + residual[:, :, s:e]
            if len(slices) == 1:
                return y
            if out is None:
                out = y.new_empty((*y.shape[:2], x.shape[2], *y.shape[3:]))
            out[:, :, s:e] = y
        return out

    def forward(self, x: torch.Tensor, ctx: ChunkContext) -> torch.Tensor:
        """Without autograd and without a shortcut conv, ``x`` is overwritten (the output)."""
        h = self._norm_act_conv(self.norm1, self.conv1, x, ctx)
        if self.shortcut is None:
            return self._norm_act_conv(self.norm2, self.conv2, h, ctx, residual=x)
        h = self._norm_act_conv(self.norm2, self.conv2, h, ctx)
        for s, e in time_slices(x.shape[2], ctx.time_slice):
            h[:, :, s:e] += self.shortcut(x[:, :, s:e])
        return h


class Downsample3D(nn.Module):
    """Halve H and W (zero pad right/bottom, 3x3 stride-2 conv per frame); with ``compress_time``
    also halve time by averaging frame pairs, keeping the video's first frame alone.

    ``[B, C, T, H, W]`` -> ``[B, C, T', H/2, W/2]`` with ``T' = 1 + (T-1)/2`` (first chunk) or
    ``T/2``."""

    def __init__(self, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor, ctx: ChunkContext) -> torch.Tensor:
        if self.compress_time:
            head, rest = (x[:, :, :1], x[:, :, 1:]) if ctx.first else (x[:, :, :0], x)
            if rest.shape[2] % 2:
                raise ValueError(
                    f"expected an even number of frames to pair up, got {rest.shape[2]}"
                )
            pairs = rearrange(rest, "b c (t two) h w -> b c t two h w", two=2).mean(3)
            x = torch.cat([head, pairs], dim=2) if head.shape[2] else pairs
        b = x.shape[0]
        out = []
        for s, e in time_slices(x.shape[2], ctx.time_slice):
            frames = rearrange(x[:, :, s:e], "b c t h w -> (b t) c h w")
            y = self.conv(F.pad(frames, (0, 1, 0, 1)))
            out.append(rearrange(y, "(b t) c h w -> b c t h w", b=b))
        return torch.cat(out, 2) if len(out) > 1 else out[0]


class Upsample3D(nn.Module):
    """Double H and W (nearest) then a 3x3 conv per frame; with ``compress_time`` also double
    time (nearest), keeping the video's first frame single: ``T' = 2T - 1`` (first chunk) or
    ``2T``. ``[B, C, T, H, W]`` -> ``[B, C, T', 2H, 2W]``."""

    def __init__(self, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, ctx: ChunkContext) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.compress_time:
            t_out = 2 * t - 1 if ctx.first else 2 * t
            index = _nearest_time_index(t_out, t, ctx.first)
        else:
            t_out, index = t, list(range(t))
        out = None
        for s, e in time_slices(t_out, ctx.time_slice):
            if self.compress_time:
                src = x.index_select(2, _index_tensor(tuple(index[s:e]), x.device))
            else:
                src = x[:, :, s:e]
            frames = rearrange(src, "b c t h w -> (b t) c h w")
            y = self.conv(F.interpolate(frames, scale_factor=2.0, mode="nearest"))
            y = rearrange(y, "(b t) c h w -> b c t h w", b=b)
            if s == 0 and e == t_out:
                return y
            if out is None:
                out = y.new_empty((b, c, t_out, 2 * h, 2 * w))
            out[:, :, s:e] = y
        return out


class DownBlock3D(nn.Module):
    def __init__(self, cin, cout, layers, groups, eps, downsample, compress_time, kt=3) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(cin if i == 0 else cout, cout, groups, eps, None, kt)
            for i in range(layers)
        )
        self.downsample = Downsample3D(cout, compress_time) if downsample else None

    def layers(self) -> list[nn.Module]:
        return [*self.resnets, *([self.downsample] if self.downsample is not None else [])]


class UpBlock3D(nn.Module):
    def __init__(self, cin, cout, layers, groups, eps, zq, upsample, compress_time, kt=3) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(cin if i == 0 else cout, cout, groups, eps, zq, kt) for i in range(layers)
        )
        self.upsample = Upsample3D(cout, compress_time) if upsample else None

    def layers(self) -> list[nn.Module]:
        return [*self.resnets, *([self.upsample] if self.upsample is not None else [])]


class Encoder3D(nn.Module):
    """One chunk of video ``[B, 3, T, H, W]`` -> moments ``[B, 2*C_lat, T', H/8, W/8]``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, g, eps = cfg.block_out_channels, cfg.norm_groups, cfg.norm_eps
        kt = cfg.time_kernel
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], (kt, 3, 3))
        self.down = nn.ModuleList(
            DownBlock3D(
                ch[max(i - 1, 0)],
                ch[i],
                cfg.layers_per_block,
                g,
                eps,
                downsample=i < len(ch) - 1,
                compress_time=i < cfg.time_levels,
                kt=kt,
            )
            for i in range(len(ch))
        )
        self.mid = nn.ModuleList(ResnetBlock3D(ch[-1], ch[-1], g, eps, None, kt) for _ in range(2))
        self.norm_out = GroupNorm3D(g, ch[-1], eps=1e-6)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, (kt, 3, 3))

    def forward(self, x: torch.Tensor, ctx: ChunkContext) -> torch.Tensor:
        x = self.conv_in(x, ctx.cache)
        # One flat loop over layers: a nested call would keep each block's input alive.
        for layer in [*(m for block in self.down for m in block.layers()), *self.mid]:
            x = layer(x, ctx)
        return ResnetBlock3D._norm_act_conv(self.norm_out, self.conv_out, x, ctx)


class Decoder3D(nn.Module):
    """One chunk of latents ``ctx.zq`` ``[B, C_lat, T', h, w]`` -> video ``[B, 3, T, 8h, 8w]``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = tuple(reversed(cfg.block_out_channels))
        g, eps, zq, kt = cfg.norm_groups, cfg.norm_eps, cfg.latent_channels, cfg.time_kernel
        self.conv_in = CausalConv3d(zq, ch[0], (kt, 3, 3))
        self.mid = nn.ModuleList(ResnetBlock3D(ch[0], ch[0], g, eps, zq, kt) for _ in range(2))
        self.up = nn.ModuleList(
            UpBlock3D(
                ch[max(i - 1, 0)],
                ch[i],
                cfg.layers_per_block + 1,
                g,
                eps,
                zq,
                upsample=i < len(ch) - 1,
                compress_time=i < cfg.time_levels,
                kt=kt,
            )
            for i in range(len(ch))
        )
        self.norm_out = SpatialNorm3D(ch[-1], zq, g, 1e-6)
        self.conv_out = CausalConv3d(ch[-1], cfg.in_channels, (kt, 3, 3))

    def forward(self, z: torch.Tensor, ctx: ChunkContext) -> torch.Tensor:
        x = self.conv_in(z, ctx.cache)
        for layer in [*self.mid, *(m for block in self.up for m in block.layers())]:
            x = layer(x, ctx)
        return ResnetBlock3D._norm_act_conv(self.norm_out, self.conv_out, x, ctx)


class DiagonalGaussian:
    """The encoder's posterior ``N(mean, exp(logvar))`` over latents ``[B, C_lat, T', h, w]``."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to ``N(0, I)`` summed over all latent values: ``[B]``."""
        kl = 0.5 * (self.mean**2 + self.std**2 - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)


class VAE3D(nn.Module):
    """The 3D causal VAE. ``encode(video [B, 3, 4k+1, H, W]) -> DiagonalGaussian`` over
    ``[B, 16, k+1, H/8, W/8]``; ``decode(latents) -> video``.

    ``time_slice`` (frames per slice inside a chunk; ``None`` = whole chunk) trades a few kernel
    launches for much less activation memory; results are the same up to float rounding.
    """

    def __init__(self, config: VAEConfig, time_slice: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.time_slice = time_slice
        self.encoder = Encoder3D(config)
        self.decoder = Decoder3D(config)

    # -- checks -------------------------------------------------------------------------------
    def _check_video(self, video: torch.Tensor) -> None:
        cfg = self.config
        if video.ndim != 5:
            raise ValueError(f"expected a video [B, C, T, H, W], got shape {tuple(video.shape)}")
        if video.shape[1] != cfg.in_channels:
            raise ValueError(
                f"expected {cfg.in_channels} channels (dim 1 of [B, C, T, H, W]), "
                f"got {video.shape[1]} in shape {tuple(video.shape)}"
            )
        check_frame_count(video.shape[2], cfg.temporal_compression)
        s = cfg.spatial_compression
        for name, size in (("height", video.shape[3]), ("width", video.shape[4])):
            if size % s:
                raise ValueError(f"expected {name} divisible by {s}, got {size}")

    def _check_latents(self, z: torch.Tensor) -> None:
        c = self.config.latent_channels
        if z.ndim != 5 or z.shape[1] != c:
            raise ValueError(f"expected latents [B, {c}, T', h, w], got shape {tuple(z.shape)}")

    # -- chunked encode / decode --------------------------------------------------------------
    @property
    def per_frame(self) -> bool:
        """True for a per-frame (2D) configuration: no time kernel, compression or chunks."""
        cfg = self.config
        return (cfg.time_kernel, cfg.temporal_compression) == (1, 1) and (
            cfg.encode_chunk_frames,
            cfg.decode_chunk_latents,
        ) == (1, 1)

    def _fold_frames(self, run, x: torch.Tensor) -> torch.Tensor:
        # Chunks of one frame are independent images: run them as one batch (same result).
        b = x.shape[0]
        y = run(rearrange(x, "b c t h w -> (b t) c 1 h w"), ChunkContext(zq=None))
        return rearrange(y, "(b t) c 1 h w -> b c t h w", b=b)

    def _encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        if self.per_frame:
            return self._fold_frames(self.encoder, video)
        ctx = ChunkContext(time_slice=self.time_slice)
        out = []
        for i, (s, e) in enumerate(
            temporal_chunks(video.shape[2], self.config.encode_chunk_frames)
        ):
            ctx.first = i == 0
            out.append(self.encoder(video[:, :, s:e], ctx))
        return torch.cat(out, dim=2)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        if self.per_frame:
            return self._fold_frames(lambda zq, ctx: self.decoder(zq, replace(ctx, zq=zq)), z)
        ctx = ChunkContext(time_slice=self.time_slice)
        chunks = temporal_chunks(z.shape[2], self.config.decode_chunk_latents)
        out = None
        t0 = 0
        for i, (s, e) in enumerate(chunks):
            ctx.first, ctx.zq = i == 0, z[:, :, s:e]
            y = self.decoder(ctx.zq, ctx)
            if len(chunks) == 1:
                return y
            if out is None:  # write chunks into one buffer: no list of chunks, no final concat
                frames = (z.shape[2] - 1) * self.config.temporal_compression + 1
                out = y.new_empty((*y.shape[:2], frames, *y.shape[3:]))
            out[:, :, t0 : t0 + y.shape[2]] = y
            t0 += y.shape[2]
            del y
        return out

    def encode(self, video: torch.Tensor, tiled: bool = False) -> DiagonalGaussian:
        """``video [B, 3, 4k+1, H, W]`` in [-1, 1] -> posterior over ``[B, 16, k+1, H/8, W/8]``.

        ``tiled`` encodes overlapping spatial tiles of ``config.tile_sample_size`` and blends them
        linearly (for frames too large to encode at once)."""
        self._check_video(video)
        big = video.shape[3] > self.config.tile_sample_size[0]
        big = big or video.shape[4] > self.config.tile_sample_size[1]
        moments = self._tiled(video, encode=True) if tiled and big else self._encode_frames(video)
        return DiagonalGaussian(moments)

    def decode(self, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """``latents [B, 16, T', h, w]`` -> video ``[B, 3, 4(T'-1)+1, 8h, 8w]``."""
        self._check_latents(latents)
        s = self.config.spatial_compression
        th, tw = (x // s for x in self.config.tile_sample_size)
        big = latents.shape[3] > th or latents.shape[4] > tw
        return self._tiled(latents, encode=False) if tiled and big else self._decode_frames(latents)

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruct ``video``: ``(reconstruction [B, 3, T, H, W], posterior)``. The latents are a
        posterior sample in training mode and its mean in eval mode."""
        posterior = self.encode(video)
        z = posterior.sample(generator) if self.training else posterior.mean
        return self.decode(z), posterior

    # -- spatial tiling -----------------------------------------------------------------------
    def _tiled(self, x: torch.Tensor, encode: bool) -> torch.Tensor:
        """Overlapping tiles, each run through all chunks, blended linearly over the overlap
        (earlier tiles are blended into later ones in raster order, as diffusers does).

        Strides are whole latent pixels, so tiles of the input and of the output line up for any
        tile size; for diffusers' default sizes this is exactly its tiling."""
        s = self.config.spatial_compression
        sample = self.config.tile_sample_size
        latent = tuple(int(v / s) for v in sample)
        stride_latent = [int(latent[k] * (1 - self.config.tile_overlap[k])) for k in range(2)]
        tile_in = sample if encode else latent
        tile_out = latent if encode else sample
        stride = tuple(v * s if encode else v for v in stride_latent)  # in input pixels
        keep = tuple(v if encode else v * s for v in stride_latent)  # in output pixels
        blend = tuple(tile_out[k] - keep[k] for k in range(2))
        run = self._encode_frames if encode else self._decode_frames
        rows = [
            [
                run(x[:, :, :, i : i + tile_in[0], j : j + tile_in[1]])
                for j in range(0, x.shape[4], stride[1])
            ]
            for i in range(0, x.shape[3], stride[0])
        ]
        out_rows = []
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                if i > 0:
                    _blend(rows[i - 1][j], tile, blend[0], dim=3)
                if j > 0:
                    _blend(row[j - 1], tile, blend[1], dim=4)
            out_rows.append(torch.cat([t[:, :, :, : keep[0], : keep[1]] for t in row], dim=4))
        return torch.cat(out_rows, dim=3)

    # -- weights ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained_mini(cls, path: str | None = None) -> VAE3D:
        """The mini VAE with the shipped weights (``weights/assets/vae_mini.safetensors``)."""
        from cogvx_mini.weights.assets import asset_path

        return _load_shipped(cls, VAEConfig.mini(), path or asset_path("vae_mini.safetensors"))


def _load_shipped(cls, config: VAEConfig, path) -> VAE3D:
    """Weights plus the ``scaling_factor`` measured after training (safetensors metadata)."""
    from safetensors import safe_open

    from cogvx_mini.weights.checkpoint import load_weights

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "scaling_factor" in meta:
        config = replace(config, scaling_factor=float(meta["scaling_factor"]))
    vae = cls(config)
    vae.load_state_dict(load_weights(path))
    return vae.eval()


def load_mini_vae(path: str | None = None) -> VAE3D:
    """Shortcut for :meth:`VAE3D.from_pretrained_mini` (eval mode, CPU, float32)."""
    return VAE3D.from_pretrained_mini(path)


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> None:
    """In place: the first ``extent`` rows of ``b`` along ``dim`` fade in from ``a``'s last ones."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent == 0:
        return
    w = torch.arange(extent, dtype=torch.float32, device=b.device) / extent
    w = w.view(*([1] * dim), extent, *([1] * (b.ndim - dim - 1))).to(b.dtype)
    head = b.narrow(dim, 0, extent)
    head.copy_(a.narrow(dim, a.shape[dim] - extent, extent) * (1 - w) + head * w)


_DIFFUSERS_RULES = [
    (r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample."),
    (r"\.up_blocks\.(\d+)\.upsamplers\.0\.", r".up.\1.upsample."),
    (r"\.down_blocks\.", ".down."),
    (r"\.up_blocks\.", ".up."),
    (r"\.mid_block\.resnets\.", ".mid."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.norm_layer\.", ".norm."),
    (r"\.conv_y\.", ".scale."),
    (r"\.conv_b\.", ".shift."),
]


def vae_state_dict_from_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of a diffusers ``AutoencoderKLCogVideoX`` state dict to :class:`VAE3D`'s.

    Raises ``ValueError`` for the optional quant convs, which the released models do not use.
    """
    out = {}
    for key, value in state_dict.items():
        if "quant_conv" in key:
            raise ValueError(f"quant convs are not supported (got key {key})")
        new = key
        for pattern, repl in _DIFFUSERS_RULES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def architecture_shapes(
    config: VAEConfig, frames: int, height: int, width: int
) -> list[tuple[str, tuple[int, ...]]]:
    """``(layer, output shape)`` through encoder and decoder for one video taken as one chunk,
    computed on the meta device (no memory, no compute: works for the full-size model on a CPU).
    """
    with torch.device("meta"):
        vae = VAE3D(config)
    named = ["encoder.conv_in", *[f"encoder.down.{i}" for i in range(len(vae.encoder.down))]]
    named += ["encoder.mid", "encoder.conv_out", "decoder.conv_in", "decoder.mid"]
    named += [f"decoder.up.{i}" for i in range(len(vae.decoder.up))] + ["decoder.conv_out"]
    modules = dict(vae.named_modules())
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name in named:
        module = modules[name][-1] if name.endswith("mid") else modules[name]
        hooks.append(
            module.register_forward_hook(lambda m, i, o, n=name: shapes.append((n, o.shape)))
        )
    video = torch.empty(1, config.in_channels, frames, height, width, device="meta")
    moments = vae.encoder(video, ChunkContext())
    z = moments[:, : config.latent_channels]
    vae.decoder(z, ChunkContext(zq=z))
    for h in hooks:
        h.remove()
    return [("video", tuple(video.shape))] + [(n, tuple(s)) for n, s in shapes]
