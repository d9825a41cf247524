"""The 3D causal VAE of CogVideoX: video ``[B, 3, 4k+1, H, W]`` <-> ``[B, 16, k+1, H/8, W/8]``.

Structure (the released model; diffusers' ``AutoencoderKLCogVideoX`` has the same weights):

* **Encoder**: causal conv in, 4 down blocks of ResNet blocks (GroupNorm -> SiLU -> causal 3x3x3
  conv, twice, plus the input); blocks 0-2 end with a down-sampling (2x2 in space, stride-2
  conv); those of blocks 0 and 1 also halve time, keeping the first frame on its own (so
  4k+1 -> 2k+1 -> k+1 frames); a mid block of 2 ResNets; GroupNorm, SiLU, causal conv out to the
  mean and log-variance of 16 channels.
* **Decoder**: the mirror image with one more ResNet per block and nearest up-sampling; every norm
  is a *spatial norm*: ``GroupNorm(f) * scale(z) + shift(z)`` with ``scale``, ``shift`` 1x1 convs
  of the latents ``z`` resized (nearest) to the feature map, so the latents condition every layer.

**Chunks.** Videos are processed along time in chunks, carrying the conv cache from chunk to
chunk: encoding 8 frames at a time (the first chunk takes the remainder, 1 + 8 for 4k+1 frames)
and decoding 2 latent frames at a time (the first chunk takes the remainder). GroupNorm statistics
are those of the chunk, so the VAE is causal chunk by chunk: the outputs of a chunk never depend on
later chunks. This matches diffusers' chunking, so the outputs equal diffusers'.

The modules here are the plain algorithm, which training (autograd) runs. Without autograd,
``VAE3D`` runs the same function through :mod:`cogvx_mini.vae_fast` (fused norms, residuals in
place, optional streaming of a chunk in time slices); tests assert that both agree. Weights of
diffusers' model convert with :mod:`cogvx_mini.weights.diffusers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cogvx_mini import vae_fast
from cogvx_mini.causal_conv import CausalConv3d, ConvCache
from cogvx_mini.shapes import check_frame_count


@dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of :class:`VAE3D`: ``cogvideox()`` the released model, ``mini()`` a CPU one.

    ``block_out_channels`` has one entry per resolution level (spatial compression
    ``2 ** (levels - 1)``); the first ``log2(temporal_compression)`` down-samplings halve time.
    ``scaling_factor`` multiplies latents before the transformer sees them (2B: 1.15258426).
    ``invert_scale_latents``: an image-to-video model was trained with its image latents
    *divided* by ``scaling_factor`` (CogVideoX 1.5's VAE config says so); see
    :attr:`image_latent_scale`.
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
    invert_scale_latents: bool = False

    @property
    def image_latent_scale(self) -> float:
        """What image-to-video multiplies the first frame's latents by."""
        return 1 / self.scaling_factor if self.invert_scale_latents else self.scaling_factor

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
        """Pixels per latent pixel along H and along W (8 for four levels)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def time_levels(self) -> int:
        """How many of the down-samplings also halve time."""
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


@dataclass
class ChunkContext:
    """What every layer needs to know about the chunk it processes.

    ``cache``: the conv cache carried between chunks (and between slices of a chunk).
    ``first``: the chunk holds the video's first frame (which the time resampling keeps alone).
    ``zq``: the latent chunk ``[B, C_lat, T', h, w]`` conditioning the decoder's spatial norms.
    ``fast``: run the fast inference path of :mod:`cogvx_mini.vae_fast` (no autograd).
    ``time_slice``: with ``fast``, frames per slice inside the chunk (``None``: the whole chunk).
    """

    cache: ConvCache = field(default_factory=dict)
    first: bool = True
    zq: torch.Tensor | None = None
    fast: bool = False
    time_slice: int | None = None


def resize_nearest(x: torch.Tensor, size: tuple[int, ...], first: bool) -> torch.Tensor:
    """Nearest resizing of ``x [B, C, T, h, w]`` to ``size = (T', H, W)``. In the chunk holding
    the video's first frame (``first``), frame 0 is resized on its own: it stands for output frame
    0 alone, as the causal VAE keeps the first frame apart."""
    size = tuple(size)
    if first and size[0] > 1 and x.shape[2] > 1:
        head = F.interpolate(x[:, :, :1], size=(1, *size[1:]), mode="nearest")
        rest = F.interpolate(x[:, :, 1:], size=(size[0] - 1, *size[1:]), mode="nearest")
        return torch.cat([head, rest], dim=2)
    return F.interpolate(x, size=size, mode="nearest")


class GroupNorm3D(nn.GroupNorm):
    """GroupNorm over ``[B, C, T, H, W]`` (statistics over C/G, T, H, W); called as
    ``norm(x, ctx)`` like :class:`SpatialNorm3D` (``ctx`` is not needed)."""

    def forward(self, x: torch.Tensor, ctx: ChunkContext | None = None) -> torch.Tensor:
        return super().forward(x)


class SpatialNorm3D(nn.Module):
    """GroupNorm modulated by the latents: ``GroupNorm(f) * scale(zq) + shift(zq)``.

    ``forward(f [B, C, T, H, W], ctx) -> [B, C, T, H, W]`` with ``ctx.zq [B, C_lat, T', h, w]``.
    ``scale`` and ``shift`` are 1x1x1 convs; they run on the latents before the nearest resizing
    to ``T, H, W`` (a 1x1 conv commutes with it), never at full resolution. In the chunk holding
    the first frame, the first latent frame maps to the first feature frame only.
    """

    def __init__(self, channels: int, zq_channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.scale = CausalConv3d(zq_channels, channels, 1)
        self.shift = CausalConv3d(zq_channels, channels, 1)

    def forward(self, f: torch.Tensor, ctx: ChunkContext) -> torch.Tensor:
        scale = resize_nearest(self.scale(ctx.zq), f.shape[2:], ctx.first)
        shift = resize_nearest(self.shift(ctx.zq), f.shape[2:], ctx.first)
        return self.norm(f) * scale + shift


def norm_silu_conv(norm: nn.Module, conv: CausalConv3d, x: torch.Tensor, ctx: ChunkContext):
    """``conv(silu(norm(x)))`` with the chunk's conv cache: ``[B, C_in, T, H, W]`` ->
    ``[B, C_out, T, H, W]``."""
    if ctx.fast:
        return vae_fast.norm_silu_conv(norm, conv, x, ctx)
    return conv(F.silu(norm(x, ctx)), ctx.cache)


class ResnetBlock3D(nn.Module):
    """norm -> SiLU -> causal conv -> norm -> SiLU -> causal conv, plus the input (through a
    1x1x1 conv when the width changes).

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

    def forward(self, x: torch.Tensor, ctx: ChunkContext) -> torch.Tensor:
        if ctx.fast:  # the same function, fused and in place (x may be overwritten)
            return vae_fast.resnet_block(self, x, ctx)
        h = norm_silu_conv(self.norm1, self.conv1, x, ctx)
        h = norm_silu_conv(self.norm2, self.conv2, h, ctx)
        return h + (x if self.shortcut is None else self.shortcut(x))


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
        if ctx.time_slice:  # streaming: the fast inference path only
            return vae_fast.in_time_slices(self.downsample_frames, x, ctx.time_slice)
        return self.downsample_frames(x)

    def downsample_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial half: ``[B, C, T, H, W]`` -> ``[B, C, T, H/2, W/2]``, frame by frame."""
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        y = self.conv(F.pad(frames, (0, 1, 0, 1)))
        return rearrange(y, "(b t) c h w -> b c t h w", b=x.shape[0])


class Upsample3D(nn.Module):
    """Double H and W (nearest) then a 3x3 conv per frame; with ``compress_time`` also double
    time (nearest), keeping the video's first frame single: ``T' = 2T - 1`` (first chunk) or
    ``2T``. ``[B, C, T, H, W]`` -> ``[B, C, T', 2H, 2W]``."""

    def __init__(self, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def output_frames(self, frames: int, first: bool) -> int:
        """Frames out for ``frames`` in (``first``: the chunk holds the video's first frame)."""
        if not self.compress_time:
            return frames
        return 2 * frames - 1 if first else 2 * frames

    def forward(self, x: torch.Tensor, ctx: ChunkContext) -> torch.Tensor:
        if ctx.time_slice:  # streaming: the fast inference path only
            return vae_fast.upsample_streamed(self, x, ctx)
        frames = self.output_frames(x.shape[2], ctx.first)
        if frames != x.shape[2]:
            x = resize_nearest(x, (frames, *x.shape[3:]), ctx.first)
        return self.upsample_frames(x)

    def upsample_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial half: ``[B, C, T, H, W]`` -> ``[B, C, T, 2H, 2W]``, frame by frame."""
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        y = self.conv(F.interpolate(frames, scale_factor=2.0, mode="nearest"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=x.shape[0])


class DownBlock3D(nn.Module):
    """One encoder level: ResNet blocks, then (except at the last level) a down-sampling."""

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
    """One decoder level: ResNet blocks, then (except at the last level) an up-sampling."""

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
        return norm_silu_conv(self.norm_out, self.conv_out, x, ctx)


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
        return norm_silu_conv(self.norm_out, self.conv_out, x, ctx)


class DiagonalGaussian:
    """The encoder's posterior ``N(mean, exp(logvar))`` over latents ``[B, C_lat, T', h, w]``."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std · ε``, ``ε`` drawn on the generator's device (a CPU generator gives the
        same draw for latents on any device, as diffusers' ``randn_tensor`` does)."""
        device = generator.device if generator is not None else self.mean.device
        dtype = self.mean.dtype
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def kl(self) -> torch.Tensor:
        """KL divergence to ``N(0, I)`` summed over all latent values: ``[B]``."""
        kl = 0.5 * (self.mean**2 + self.std**2 - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)


class VAE3D(nn.Module):
    """The 3D causal VAE. ``encode(video [B, 3, 4k+1, H, W]) -> DiagonalGaussian`` over
    ``[B, 16, k+1, H/8, W/8]``; ``decode(latents) -> video``.

    Without autograd, and unless ``fast_inference`` is switched off, the same function runs
    through :mod:`cogvx_mini.vae_fast`; there ``time_slice`` (frames per slice inside a chunk;
    ``None`` = whole chunk) trades a few kernel launches for much less activation memory. Results
    are the same up to float rounding.
    """

    def __init__(
        self, config: VAEConfig, time_slice: int | None = None, fast_inference: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.time_slice = time_slice
        self.fast_inference = fast_inference
        self.encoder = Encoder3D(config)
        self.decoder = Decoder3D(config)

    # -- checks -------------------------------------------------------------------------------
    def _check_dtype_and_batch(self, name: str, x: torch.Tensor) -> None:
        weights = self.encoder.conv_in.conv.weight.dtype
        if x.dtype != weights:
            raise ValueError(
                f"{name}: expected dtype {weights} (the VAE's weights), got {x.dtype}; cast with "
                f".to({weights}) or move the VAE with .to(dtype)"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name}: expected a batch of at least 1, got shape {tuple(x.shape)}")

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
        self._check_dtype_and_batch("video", video)
        low, high = (v.item() for v in torch.aminmax(video))  # one synchronisation per call
        if not (-1.5 <= low and high <= 1.5):  # also false for NaN
            raise ValueError(
                f"video: expected pixel values in [-1, 1], got values in [{low:g}, {high:g}] "
                "(frames in [0, 255] map to [-1, 1] as x / 127.5 - 1)"
            )

    def _check_latents(self, z: torch.Tensor) -> None:
        c = self.config.latent_channels
        if z.ndim != 5 or z.shape[1] != c:
            raise ValueError(f"expected latents [B, {c}, T', h, w], got shape {tuple(z.shape)}")
        self._check_dtype_and_batch("latents", z)

    # -- chunked encode / decode --------------------------------------------------------------
    @property
    def per_frame(self) -> bool:
        """True for a per-frame (2D) configuration: no time kernel, compression or chunks."""
        cfg = self.config
        return (cfg.time_kernel, cfg.temporal_compression) == (1, 1) and (
            cfg.encode_chunk_frames,
            cfg.decode_chunk_latents,
        ) == (1, 1)

    def _context(self) -> ChunkContext:
        """A fresh context: the fast path without autograd (if enabled), else the plain one."""
        fast = self.fast_inference and not torch.is_grad_enabled()
        return ChunkContext(fast=fast, time_slice=self.time_slice if fast else None)

    def _run_chunks(self, x: torch.Tensor, size: int, decode: bool) -> torch.Tensor:
        """The encoder (or decoder) over ``x`` chunk by chunk in time, carrying the conv cache."""
        ctx = self._context()
        if self.per_frame:
            # Chunks of one frame are independent images: run them as one batch (same result).
            frames = rearrange(x, "b c t h w -> (b t) c 1 h w")
            ctx.zq = frames if decode else None
            y = (self.decoder if decode else self.encoder)(frames, ctx)
            return rearrange(y, "(b t) c 1 h w -> b c t h w", b=x.shape[0])
        out = []
        for i, (s, e) in enumerate(temporal_chunks(x.shape[2], size)):
            ctx.first = i == 0
            if decode:
                ctx.zq = x[:, :, s:e]
            out.append((self.decoder if decode else self.encoder)(x[:, :, s:e], ctx))
        return torch.cat(out, dim=2)

    def _encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        return self._run_chunks(video, self.config.encode_chunk_frames, decode=False)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        return self._run_chunks(z, self.config.decode_chunk_latents, decode=True)

    def encode(self, video: torch.Tensor, tiled: bool = False) -> DiagonalGaussian:
        """``video [B, 3, 4k+1, H, W]`` in [-1, 1] -> posterior over ``[B, 16, k+1, H/8, W/8]``.

        ``video`` must have the weights' dtype. ``tiled`` encodes overlapping spatial tiles of
        ``config.tile_sample_size`` and blends them linearly (for frames too large to encode at
        once)."""
        self._check_video(video)
        big = video.shape[3] > self.config.tile_sample_size[0]
        big = big or video.shape[4] > self.config.tile_sample_size[1]
        moments = self._tiled(video, encode=True) if tiled and big else self._encode_frames(video)
        return DiagonalGaussian(moments)

    def decode(self, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """``latents [B, 16, T', h, w]`` (the weights' dtype) -> video ``[B, 3, 4(T'-1)+1, 8h,
        8w]``."""
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
    def from_file(cls, config: VAEConfig, path: str | Path) -> VAE3D:
        """A ``config`` VAE with the weights of a safetensors file, in eval mode; a
        ``scaling_factor`` in the file's metadata (measured after training) replaces the
        config's."""
        from safetensors import safe_open

        from cogvx_mini.weights.checkpoint import load_weights

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "vae_config" in meta:  # the architecture it was trained with (vae_train --model)
            config = replace(config, **architecture_from_json(meta["vae_config"]))
        if "scaling_factor" in meta:
            config = replace(config, scaling_factor=float(meta["scaling_factor"]))
        vae = cls(config)
        vae.load_state_dict(load_weights(path))
        return vae.eval()


ARCHITECTURE_FIELDS = ("block_out_channels", "layers_per_block", "norm_groups", "latent_channels")


def architecture_json(config: VAEConfig) -> str:
    """The fields of ``config`` that decide the weights' shapes, as JSON (stored with weights)."""
    import json

    return json.dumps({name: getattr(config, name) for name in ARCHITECTURE_FIELDS})


def architecture_from_json(text: str) -> dict:
    """The inverse of :func:`architecture_json`: keyword arguments for ``replace(config, ...)``."""
    import json

    fields = json.loads(text)
    unknown = sorted(set(fields) - set(ARCHITECTURE_FIELDS))
    if unknown:
        raise ValueError(f"vae_config: unknown keys {unknown}; expected {ARCHITECTURE_FIELDS}")
    if "block_out_channels" in fields:
        fields["block_out_channels"] = tuple(fields["block_out_channels"])
    return fields


def load_mini_vae(path: str | Path | None = None) -> VAE3D:
    """The mini VAE with the shipped weights (``weights/assets/vae_mini.safetensors``, or
    ``path``): eval mode, CPU, float32."""
    from cogvx_mini.weights.assets import asset_path

    return VAE3D.from_file(VAEConfig.mini(), path or asset_path("vae_mini.safetensors"))


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> None:
    """In place: the first ``extent`` rows of ``b`` along ``dim`` fade in from ``a``'s last ones."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent == 0:
        return
    w = torch.arange(extent, dtype=torch.float32, device=b.device) / extent
    w = w.view(*([1] * dim), extent, *([1] * (b.ndim - dim - 1))).to(b.dtype)
    head = b.narrow(dim, 0, extent)
    head.copy_(a.narrow(dim, a.shape[dim] - extent, extent) * (1 - w) + head * w)


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
        # A block's output is its last layer's (blocks are run layer by layer, not called).
        module = modules[name]
        if isinstance(module, nn.ModuleList):
            module = module[-1]
        elif isinstance(module, DownBlock3D | UpBlock3D):
            module = module.layers()[-1]
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
