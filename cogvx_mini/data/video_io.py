"""Writing videos to GIF/MP4 and drawing them as film strips.

Videos here are tensors ``[C, T, H, W]`` or ``[B, C, T, H, W]`` (B = 1) with values in [-1, 1].
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from cogvx_mini.checks import positive_int


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[C, T, H, W]`` (or ``[1, C, T, H, W]``) in [-1, 1] -> ``uint8`` array ``[T, H, W, C]``."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected one video [1, C, T, H, W], got batch {video.shape[0]}")
        video = video[0]
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a video [C, T, H, W] with C in (1, 3), got {tuple(video.shape)}"
        )
    frames = rearrange(video.detach().float().cpu(), "c t h w -> t h w c")
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def save_video(video: torch.Tensor, path: str | Path, fps: int = 8) -> Path:
    """Write ``video`` (``[C, T, H, W]`` in [-1, 1]) as GIF or MP4, chosen by the file suffix.

    The file is written next to its target and renamed into place, so an interrupted write never
    leaves a truncated video behind.
    """
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"expected a .gif or .mp4 path, got {path}")
    positive_int("fps", fps)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot write {path}: its folder cannot be made ({err.strerror})"
        ) from None
    frames = to_uint8_frames(video)
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    if suffix == ".gif":
        iio.imwrite(tmp, frames, extension=".gif", duration=1000 / fps, loop=0)
    else:
        iio.imwrite(tmp, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    tmp.replace(path)
    return path


def film_strip(video: torch.Tensor, max_frames: int = 9) -> np.ndarray:
    """Up to ``max_frames`` evenly spaced frames side by side: ``uint8`` ``[H, n * W, C]``."""
    frames = to_uint8_frames(video)
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    return rearrange(frames[idx], "n h w c -> h (n w) c")


def read_image(path: str | Path, height: int, width: int) -> torch.Tensor:
    """An image file as ``[3, height, width]`` float32 in [-1, 1], converted to RGB and resized
    with Lanczos when its size differs (what diffusers' ``VideoProcessor.preprocess`` does)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1) * 2 - 1


def read_video(path: str | Path) -> torch.Tensor:
    """Read a GIF/MP4 (anything imageio reads) as ``[3, T, H, W]`` float32 in [-1, 1].

    Raises ``ValueError`` naming the file when it cannot be decoded, or when it decodes to fewer
    frames than its container states (a truncated download: see :func:`check_frame_total`).
    """
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise ValueError(f"cannot read video {path}: expected a video file, got {what}")
    try:
        # Naming the format by suffix keeps imageio from probing every plugin on a broken file.
        ext = path.suffix.lower() if path.suffix.lower() in (".gif", ".mp4") else None
        with warnings.catch_warnings():  # plugins imageio tries on a broken file warn noisily
            warnings.simplefilter("ignore", DeprecationWarning)
            frames = np.asarray(iio.imread(path, index=None, extension=ext))
            meta = iio.immeta(path, extension=ext) if ext != ".gif" else {}
    except Exception as err:  # imageio raises many types for a broken file
        reason = str(err).split("\n=== stderr")[0]  # not ffmpeg's whole banner and log
        raise ValueError(f"cannot read video {path}: {reason}") from err
    check_frame_total(path, len(frames) if frames.ndim == 4 else 1, meta)
    if frames.ndim == 3:  # one grey frame or one frame without a time axis
        frames = frames[None] if frames.shape[-1] in (3, 4) else frames[..., None]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"cannot read video {path}: got an array of shape {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    frames = torch.from_numpy(frames[..., :3].astype(np.float32))
    return rearrange(frames, "t h w c -> c t h w") / 127.5 - 1


def check_frame_total(path: Path, decoded: int, meta: dict) -> None:
    """Raise ``ValueError`` if ``decoded`` frames fall short of the count the container states.

    A file cut short (an interrupted download of a "web" MP4, whose index comes first) still
    decodes, to its first part only. ffmpeg's metadata keeps the stated ``nframes`` or
    ``duration`` and ``fps``; a shortfall beyond rounding (2 frames or 5 %) means truncation.
    Formats without that metadata (GIF) are not checked.
    """
    nframes, duration, fps = meta.get("nframes"), meta.get("duration"), meta.get("fps")
    if isinstance(nframes, int | float) and math.isfinite(nframes) and nframes > 0:
        stated, source = round(nframes), "nframes"
    elif duration and fps and math.isfinite(duration * fps):
        stated, source = round(duration * fps), f"{duration} s at {fps} fps"
    else:
        return
    if decoded + max(2, stated // 20) < stated:
        raise ValueError(
            f"truncated video {path}: expected the {stated} frames its container states "
            f"({source}), got {decoded} decodable frames"
        )
