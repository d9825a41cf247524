"""A per-frame 2D VAE baseline and a flicker score, for the paper's 3D-vs-2D VAE comparison.

The baseline is :class:`~cogvx_mini.vae.VAE3D` with its time axis switched off: kernels of one
frame, no temporal compression, and chunks of one frame (so even GroupNorm statistics are per
frame). Every frame is encoded and decoded on its own, as an image VAE would. It keeps about the
same number of latent values as the 3D VAE: 4 channels per frame at H/8 x W/8 (4 x 17 = 68 values
per latent pixel for 17 frames) against 16 channels per 4 frames (16 x 5 = 80).
"""

from __future__ import annotations

import torch

from cogvx_mini.vae import VAE3D, VAEConfig


def per_frame_config(base: VAEConfig | None = None, latent_channels: int = 4) -> VAEConfig:
    """``base`` (default: ``VAEConfig.mini()``) made per-frame: time kernel 1, no temporal
    compression, chunks of one frame, ``latent_channels`` per frame."""
    base = base or VAEConfig.mini()
    return VAEConfig(
        in_channels=base.in_channels,
        latent_channels=latent_channels,
        block_out_channels=base.block_out_channels,
        layers_per_block=base.layers_per_block,
        norm_groups=base.norm_groups,
        norm_eps=base.norm_eps,
        temporal_compression=1,
        time_kernel=1,
        scaling_factor=base.scaling_factor,
        encode_chunk_frames=1,
        decode_chunk_latents=1,
        tile_sample_size=base.tile_sample_size,
        tile_overlap=base.tile_overlap,
    )


def load_mini_vae2d(path: str | None = None) -> VAE3D:
    """The per-frame baseline with the weights shipped in ``assets/vae2d_mini.safetensors``."""
    from cogvx_mini.weights.assets import asset_path

    return VAE3D.from_file(per_frame_config(), path or asset_path("vae2d_mini.safetensors"))


def flicker_score(reconstruction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Flicker a codec adds: mean ``|(x̂_t - x̂_{t-1}) - (x_t - x_{t-1})|`` over t >= 1, in 8-bit
    levels (pixels in [-1, 1] count 127.5 levels per unit).

    It is the error of the *frame-to-frame changes*: a constant error (a static blur, a colour
    shift) scores 0, an error that changes from frame to frame scores high. Videos
    ``[B, C, T, H, W]`` -> one score per video ``[B]``.
    """
    if reconstruction.shape != reference.shape or reference.ndim != 5:
        raise ValueError(
            f"expected two videos [B, C, T, H, W] of one shape, got "
            f"{tuple(reconstruction.shape)} and {tuple(reference.shape)}"
        )
    if reference.shape[2] < 2:
        raise ValueError(f"expected at least 2 frames, got {reference.shape[2]}")
    d_rec = reconstruction.diff(dim=2)
    d_ref = reference.diff(dim=2)
    return (d_rec - d_ref).abs().flatten(1).mean(1) * 127.5


def psnr(reconstruction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per video for pixels in [-1, 1] (clamped): ``[B, C, T, H, W]`` -> ``[B]``."""
    mse = ((reconstruction.clamp(-1, 1) - reference) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
