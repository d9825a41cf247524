"""Causal 3D convolution: output frame t sees input frames <= t only.

A 3D convolution with a kernel of k frames normally pads (k-1)/2 frames on each side in time, so
frame t sees the future. CogVideoX's VAE pads all k-1 frames on the *past* side instead, filled
with copies of the first frame, which makes every layer causal in time. Two things follow:

* **Conv cache.** A video can be processed chunk by chunk along time: a chunk needs only the last
  k-1 input frames of the previous chunk (the cache) in place of the replicated first frame, and
  the chunked output equals the whole-video output. Memory then depends on the chunk length, not
  on the video length.
* **Context parallelism.** The same idea across devices: each rank holds a slice of the time axis
  and receives the last k-1 frames of the previous rank (CogVideoX paper, Fig. 3b); rank 0 pads
  with its first frame.

Tensors are videos ``[B, C, T, H, W]``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from cogvx_mini.vae_fast import FastConv3d

# A conv cache maps each causal conv (by identity) to the last k-1 input frames it saw. One dict
# is threaded through a whole network; ``None`` means "no chunking: this is the whole video".
ConvCache = dict[nn.Module, torch.Tensor]


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)


class CausalConv3d(nn.Module):
    """3D convolution padded only on the past side in time; spatial padding keeps H and W.

    ``forward(x [B, C_in, T, H, W], cache=None) -> [B, C_out, T, H, W]``.

    With ``cache=None`` the k-1 missing past frames are copies of frame 0. With a cache dict, the
    conv uses the frames stored for it by the previous chunk (or frame 0 on the first chunk) and
    stores its own last k-1 input frames for the next chunk.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"expected odd spatial kernel sizes, got {kh}x{kw}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.time_pad = kt - 1
        # Time is padded by hand (causally); space by the conv itself (zeros, symmetric). A
        # FastConv3d is an nn.Conv3d that picks faster kernels on some backends (same result).
        self.conv = FastConv3d(
            in_channels, out_channels, (kt, kh, kw), padding=(0, kh // 2, kw // 2), bias=bias
        )

    def pad_time(self, x: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        """Prepend ``past`` ``[B, C, k-1, H, W]`` (or k-1 copies of frame 0 when ``None``)."""
        if self.time_pad == 0:
            return x
        if past is None:
            past = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
        elif past.shape[2] != self.time_pad:
            raise ValueError(f"expected {self.time_pad} cached frames, got {past.shape[2]}")
        return torch.cat([past, x], dim=2)

    def run_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution itself on an already time-padded input ``[B, C_in, T + k - 1, H, W]``."""
        return self.conv(x)

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected a video [B, {self.in_channels}, T, H, W], got {tuple(x.shape)}"
            )
        if cache is None:
            return self.run_conv(self.pad_time(x, None))
        padded = self.pad_time(x, cache.get(self))
        if self.time_pad:
            # Keep only the k-1 frames the next chunk needs (a copy, so the chunk can be freed).
            cache[self] = padded[:, :, -self.time_pad :].clone()
        return self.run_conv(padded)


class CausalConvStack(nn.Sequential):
    """Causal convs with SiLU in between, for tests and chapters: ``[B, C, T, H, W]`` in and out.

    Each layer widens the receptive field by k-1 past frames; the stack stays causal.
    """

    def __init__(self, channels: int, depth: int, kernel_size: int = 3) -> None:
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(CausalConv3d(channels, channels, kernel_size))
            if i < depth - 1:
                layers.append(nn.SiLU())
        super().__init__(*layers)

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x


def run_chunked(
    model: nn.Module, video: torch.Tensor, chunk_sizes: list[int] | int
) -> torch.Tensor:
    """Run ``model(x, cache)`` over ``video [B, C, T, H, W]`` chunk by chunk along time.

    ``chunk_sizes`` is one length for all chunks (the last may be shorter) or the list of
    lengths. Returns the outputs concatenated along time; with causal convs only (no norm over
    time), this equals ``model(video)``.
    """
    total = video.shape[2]
    if isinstance(chunk_sizes, int):
        sizes = [min(chunk_sizes, total - s) for s in range(0, total, chunk_sizes)]
    else:
        sizes = list(chunk_sizes)
    if sum(sizes) != total:
        raise ValueError(f"chunk sizes {sizes} add up to {sum(sizes)}, expected {total} frames")
    cache: ConvCache = {}
    outputs = []
    for piece in torch.split(video, sizes, dim=2):
        outputs.append(model(piece, cache))
    return torch.cat(outputs, dim=2)


def exchange_past_frames(
    x: torch.Tensor, frames: int, group: dist.ProcessGroup | None = None
) -> torch.Tensor | None:
    """Context parallelism: send my last ``frames`` frames to the next rank, receive the previous
    rank's. Returns ``[B, C, frames, H, W]`` from rank r-1, or ``None`` on rank 0.

    Every rank holds a consecutive slice of the time axis ``x [B, C, T_local, H, W]`` (rank order
    = time order) with ``T_local >= frames``.
    """
    if frames == 0:
        return None
    if x.shape[2] < frames:
        raise ValueError(f"expected at least {frames} local frames per rank, got {x.shape[2]}")
    group = group or dist.group.WORLD
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    ops = []
    if rank + 1 < world:
        tail = x[:, :, -frames:].contiguous()
        ops.append(dist.P2POp(dist.isend, tail, dist.get_global_rank(group, rank + 1), group))
    past = None
    if rank > 0:
        past = torch.empty_like(x[:, :, :frames], memory_format=torch.contiguous_format)
        ops.append(dist.P2POp(dist.irecv, past, dist.get_global_rank(group, rank - 1), group))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return past


def context_parallel_conv(
    conv: CausalConv3d, x: torch.Tensor, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """``conv`` applied to a video whose time axis is split across ranks: ``[B, C, T_local, H, W]``
    in, ``[B, C_out, T_local, H, W]`` out; the gathered outputs equal ``conv(whole video)``."""
    past = exchange_past_frames(x, conv.time_pad, group)
    return conv.run_conv(conv.pad_time(x, past))


def context_parallel_stack(
    stack: CausalConvStack, x: torch.Tensor, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """A :class:`CausalConvStack` over a time-split video: one k-1-frame message per conv."""
    for layer in stack:
        x = context_parallel_conv(layer, x, group) if isinstance(layer, CausalConv3d) else layer(x)
    return x


def simulate_context_parallel(
    stack: CausalConvStack, video: torch.Tensor, sizes: list[int]
) -> tuple[list[torch.Tensor], list[list[tuple[int, ...]]]]:
    """Context parallelism in one process, for figures: the time axis of ``video`` is split into
    ``sizes`` (one slice per simulated rank) and every conv runs on each slice after the slice
    receives the previous one's last k-1 input frames, exactly as :func:`context_parallel_conv`
    does across processes. Returns the per-rank outputs and, per conv, the shape of each message.
    """
    if sum(sizes) != video.shape[2]:
        raise ValueError(f"sizes {sizes} add up to {sum(sizes)}, expected {video.shape[2]}")
    local = list(torch.split(video, sizes, dim=2))
    messages = []
    for layer in stack:
        if not isinstance(layer, CausalConv3d):
            local = [layer(x) for x in local]
            continue
        k1 = layer.time_pad
        sent = [x[:, :, x.shape[2] - k1 :] for x in local[:-1]] if k1 else [None] * (len(local) - 1)
        messages.append([tuple(m.shape) for m in sent if m is not None])
        past = [None, *sent]
        local = [layer.run_conv(layer.pad_time(x, p)) for x, p in zip(local, past, strict=True)]
    return local, messages


@torch.no_grad()
def frame_dependencies(model: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Which input frames each output frame depends on, measured by perturbing one frame at a
    time: bool ``[T_out, T_in]`` for ``model(video [1, C, T_in, H, W]) -> [1, C', T_out, H, W]``.
    """
    base = model(video)
    deps = torch.zeros(base.shape[2], video.shape[2], dtype=torch.bool)
    for j in range(video.shape[2]):
        bumped = video.clone()
        bumped[:, :, j] += 1.0
        deps[:, j] = (model(bumped) - base).abs().flatten(3).amax(dim=(0, 1, 3)) > 0
    return deps
