"""Frame pack: clips of any length and size become 4k+1-frame videos in shape buckets.

CogVideoX trains on videos of mixed durations and resolutions. A clip is first brought to a
frame count the causal VAE accepts (``4k + 1``): a short clip repeats its **last frame** (never
black frames, which the model would learn to produce), a long clip is **uniformly subsampled**
(e.g. every third frame of 24 fps footage gives 8 fps) and then **truncated** to its first
``frames`` frames. Clips are then grouped in *buckets* of one ``(frames, height, width)``, so
every batch has a single shape and no padding tokens; the transformer takes the positions of a
smaller grid from the front of one large position table, so all buckets share it.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from cogvx_mini.shapes import check_frame_count


def floor_4k1(frames: int) -> int:
    """Largest ``4k + 1 <= frames`` (``frames >= 1``): 16 -> 13, 17 -> 17."""
    if frames < 1:
        raise ValueError(f"expected at least 1 frame, got {frames}")
    return (frames - 1) // 4 * 4 + 1


def _check_video(video: torch.Tensor) -> None:
    if video.ndim != 4:
        raise ValueError(f"expected a video [C, T, H, W], got shape {tuple(video.shape)}")


def pad_last_frame(video: torch.Tensor, frames: int) -> torch.Tensor:
    """``[C, T, H, W]`` -> ``[C, frames, H, W]`` by repeating the last frame (``T <= frames``)."""
    _check_video(video)
    t = video.shape[1]
    if t > frames:
        raise ValueError(f"expected at most {frames} frames to pad, got {t}; truncate instead")
    return torch.cat([video, video[:, -1:].expand(-1, frames - t, -1, -1)], dim=1)


def subsample_then_truncate(video: torch.Tensor, frames: int, stride: int = 1) -> torch.Tensor:
    """Every ``stride``-th frame from the first, then the first ``frames`` of them.

    ``[C, T, H, W]`` -> ``[C, min(frames, ceil(T / stride)), H, W]``.
    """
    _check_video(video)
    if stride < 1:
        raise ValueError(f"expected a stride >= 1, got {stride}")
    return video[:, ::stride][:, :frames]


def pack_frames(video: torch.Tensor, frames: int, stride: int = 1) -> torch.Tensor:
    """Frame pack one clip to exactly ``frames`` (a 4k+1 count) frames: ``[C, frames, H, W]``.

    Subsample by ``stride`` and truncate if the clip is long enough, else repeat its last frame.
    """
    check_frame_count(frames)
    clip = subsample_then_truncate(video, frames, stride)
    return pad_last_frame(clip, frames) if clip.shape[1] < frames else clip


@dataclass(frozen=True, order=True)
class Bucket:
    """One training shape: ``frames`` (4k+1), ``height``, ``width`` in pixels."""

    frames: int
    height: int
    width: int

    def __post_init__(self):
        check_frame_count(self.frames)

    @property
    def aspect(self) -> float:
        return self.width / self.height


def assign_bucket(frames: int, height: int, width: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket for a ``frames x height x width`` clip.

    Nearest aspect ratio (in log space) first; among those, the longest bucket the clip fills
    without padding, or the shortest one if the clip is shorter than all of them.
    """
    if not buckets:
        raise ValueError("expected at least one bucket")
    aspect = math.log(width / height)
    best = min(abs(math.log(b.aspect) - aspect) for b in buckets)
    same = [b for b in buckets if abs(abs(math.log(b.aspect) - aspect) - best) < 1e-9]
    fitting = [b for b in same if b.frames <= frames]
    return max(fitting) if fitting else min(same)


def resize_to(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale to cover ``height x width`` and centre-crop: ``[C, T, H, W]`` -> ``[C, T, h, w]``."""
    _check_video(video)
    _, _, h, w = video.shape
    if (h, w) == (height, width):
        return video
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    frames = rearrange(video, "c t h w -> t c h w")
    frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    frames = frames[:, :, top : top + height, left : left + width]
    return rearrange(frames, "t c h w -> c t h w")


def pack_to_bucket(video: torch.Tensor, bucket: Bucket, stride: int = 1) -> torch.Tensor:
    """Frame pack and resize a clip: ``[C, T, H, W]`` -> the bucket's ``[C, frames, H, W]``."""
    return resize_to(pack_frames(video, bucket.frames, stride), bucket.height, bucket.width)


def bucket_batches(
    shapes: Sequence[tuple[int, int, int]],
    buckets: Sequence[Bucket],
    batch_size: int,
    seed: int = 0,
    drop_last: bool = False,
) -> list[tuple[Bucket, list[int]]]:
    """Group clip indices by bucket into batches of one shape, in a seeded shuffled order.

    ``shapes[i]`` is clip ``i``'s ``(frames, height, width)``. Returns ``(bucket, indices)``
    pairs; each batch holds at most ``batch_size`` indices, all of one bucket.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    rng = random.Random(seed)
    groups: dict[Bucket, list[int]] = defaultdict(list)
    for i, (t, h, w) in enumerate(shapes):
        groups[assign_bucket(t, h, w, buckets)].append(i)
    batches = []
    for bucket in sorted(groups):
        idx = groups[bucket]
        rng.shuffle(idx)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            if len(chunk) == batch_size or not drop_last:
                batches.append((bucket, chunk))
    rng.shuffle(batches)
    return batches


def positions_from_table(table: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Rows of a position table ``[T_max, H_max, W_max, D]`` for a smaller ``grid`` ``(t, h, w)``.

    Takes the front ``[:t, :h, :w]`` and flattens it in ``(t h w)`` token order: ``[t*h*w, D]``.
    A bucket's token at ``(i, j, k)`` gets the same position as in the largest bucket.
    """
    t, h, w = grid
    if table.ndim != 4 or t > table.shape[0] or h > table.shape[1] or w > table.shape[2]:
        raise ValueError(
            f"expected a table [T, H, W, D] covering grid {grid}, got {tuple(table.shape)}"
        )
    return rearrange(table[:t, :h, :w], "t h w d -> (t h w) d")
