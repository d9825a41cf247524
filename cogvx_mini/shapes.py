"""Shape arithmetic of the CogVideoX pipeline, shared by every module that needs it.

The pipeline is video ``[B, 3, T, H, W]`` -> 3D causal VAE -> latents ``[B, 16, T', H/8, W/8]``
-> patchify -> video tokens ``[B, N_video, D]`` -> expert transformer with text tokens
``[B, L, D]`` -> unpatchify -> latents -> VAE decode -> video. These functions compute every
intermediate shape from the compression factors (the VAE's from its ``VAEConfig``), so chapters and
tests never type a shape by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cogvx_mini.vae import VAEConfig


def check_frame_count(frames: int, temporal_compression: int = 4) -> None:
    """Raise ``ValueError`` unless ``frames`` is ``temporal_compression * k + 1`` for some k >= 0.

    CogVideoX's causal VAE keeps the first frame on its own and compresses the rest in groups of
    ``temporal_compression`` frames, so only ``4k + 1`` frames map onto whole latent frames.
    """
    if frames < 1 or (frames - 1) % temporal_compression != 0:
        below = (max(frames - 1, 0) // temporal_compression) * temporal_compression + 1
        raise ValueError(
            f"expected a frame count of the form {temporal_compression}k+1 (1, 5, 9, ..., 49), "
            f"got {frames}; the nearest valid counts are {below} and {below + temporal_compression}"
        )


def latent_frames(frames: int, temporal_compression: int = 4) -> int:
    """Number of latent frames for ``frames`` pixel frames: ``(T - 1) / 4 + 1`` (49 -> 13)."""
    check_frame_count(frames, temporal_compression)
    return (frames - 1) // temporal_compression + 1


def pixel_frames(latent_frames: int, temporal_compression: int = 4) -> int:
    """Inverse of :func:`latent_frames`: ``4 (T' - 1) + 1`` pixel frames (13 -> 49)."""
    if latent_frames < 1:
        raise ValueError(f"expected at least 1 latent frame, got {latent_frames}")
    return (latent_frames - 1) * temporal_compression + 1


def temporal_patch_padding(latent_frames: int, temporal_patch_size: int) -> int:
    """How many latent frames diffusers' CogVideoX pipelines put in front of ``latent_frames``
    so that the temporal patch divides them (1.5: 81 frames -> 21 latent frames -> 1 more); the
    sampler drops that many from the front before decoding."""
    return -latent_frames % temporal_patch_size


@dataclass(frozen=True)
class PipelineShapes:
    """Every tensor shape on the way through CogVideoX for one video size.

    Attributes hold shapes as tuples: ``video`` ``[B, 3, T, H, W]``, ``latents``
    ``[B, C_lat, T', H', W']``, ``video_tokens`` ``[B, N_video, D]``, ``text_tokens``
    ``[B, L, D]``, ``sequence`` ``[B, L + N_video, D]`` (what attention sees).
    """

    video: tuple[int, ...]
    latents: tuple[int, ...]
    patch_grid: tuple[int, int, int]
    video_tokens: tuple[int, int, int]
    text_tokens: tuple[int, int, int]
    sequence: tuple[int, int, int]

    def rows(self) -> list[tuple[str, tuple[int, ...]]]:
        """(stage, shape) pairs in pipeline order, for tables and figures."""
        return [
            ("video", self.video),
            ("VAE latents", self.latents),
            ("video tokens", self.video_tokens),
            ("text tokens", self.text_tokens),
            ("[text; video] sequence", self.sequence),
            ("predicted latents", self.latents),
            ("decoded video", self.video),
        ]


def pipeline_shapes(
    frames: int,
    height: int,
    width: int,
    *,
    batch: int = 1,
    vae: VAEConfig | None = None,
    patch_size: int = 2,
    temporal_patch_size: int = 1,
    text_length: int = 226,
    hidden_dim: int = 1920,
) -> PipelineShapes:
    """Shapes of the whole pipeline for a ``frames x height x width`` video.

    The latents are those of ``vae`` (default: the released VAE, 8x8x4 with 16 channels); the
    other defaults are CogVideoX-2B's: 2x2 patches, 226 T5 tokens, width 1920. Raises
    ``ValueError`` with the expected and received values when a size does not divide.
    """
    from cogvx_mini.vae import VAEConfig  # vae.py imports this module

    vae = vae or VAEConfig.cogvideox()
    check_frame_count(frames, vae.temporal_compression)
    s = vae.spatial_compression
    for name, size in (("height", height), ("width", width)):
        if size % s:
            raise ValueError(f"expected {name} divisible by {s}, got {size}")
    video = (batch, vae.in_channels, frames, height, width)
    latents = vae.latent_shape(video)
    t_lat, h_lat, w_lat = latents[2:]
    for name, size in (("latent height", h_lat), ("latent width", w_lat)):
        if size % patch_size:
            raise ValueError(f"expected {name} divisible by patch size {patch_size}, got {size}")
    if t_lat % temporal_patch_size:
        raise ValueError(
            f"expected latent frames divisible by temporal patch {temporal_patch_size}, got {t_lat}"
        )
    grid = (t_lat // temporal_patch_size, h_lat // patch_size, w_lat // patch_size)
    n_video = grid[0] * grid[1] * grid[2]
    return PipelineShapes(
        video=video,
        latents=latents,
        patch_grid=grid,
        video_tokens=(batch, n_video, hidden_dim),
        text_tokens=(batch, text_length, hidden_dim),
        sequence=(batch, text_length + n_video, hidden_dim),
    )
