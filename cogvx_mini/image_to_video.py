"""Image to video: the first frame is given, the transformer generates the motion.

CogVideoX-5B-I2V and 1.5-I2V condition the same denoiser on an image by widening its input
[@yang2024cogvideox]. The image, encoded by the VAE as a one-frame video and scaled like the
training latents, fills latent frame 0 of a *conditioning video* ``c`` whose other frames are
zero. At every step the transformer reads ``[x_t ; c]`` stacked on channels (``2·C_lat`` in) and
predicts ``v`` for ``x_t`` alone (``C_lat`` out):

    from cogvx_mini.image_to_video import ImageConditioned, encode_image, image_condition
    first = encode_image(vae, image, generator, vae.config.image_latent_scale)  # [B, C, 1, h, w]
    model = ImageConditioned(transformer, image_condition(first, latent_frames))
    v = model(x_t, text, t)                                                      # [B, C, T', h, w]

So nothing in the blocks changes; only ``patch_embed`` sees twice the channels. As in
diffusers' ``CogVideoXImageToVideoPipeline``, the image latent is a *sample* of the posterior
(drawn with the sampler's generator before the initial noise), not its mean.
"""

from __future__ import annotations

import torch
from torch import nn

from cogvx_mini.vae import VAE3D


def encode_image(
    vae: VAE3D, images: torch.Tensor, generator: torch.Generator | None, scale: float
) -> torch.Tensor:
    """``images [B, 3, H, W]`` in [-1, 1] -> latents ``[B, C_lat, 1, H/8, W/8]`` times ``scale``.

    Each image is encoded alone as a one-frame video and sampled from its posterior with
    ``generator``, in batch order (the order diffusers draws them in)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected [B, 3, H, W], got shape {tuple(images.shape)}")
    dtype = next(vae.parameters()).dtype
    frames = [vae.encode(image[None, :, None].to(dtype)).sample(generator) for image in images]
    return torch.cat(frames) * scale


def image_condition(first: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """The conditioning video ``[B, C, latent_frames, h, w]``: ``first`` (``[B, C, 1, h, w]``)
    at frame 0, zeros after.

    With a temporal patch (1.5) diffusers first pads the latent frame count to the patch (see
    :func:`cogvx_mini.shapes.temporal_patch_padding`); its extra rule, repeating frame 0 when the
    count is still odd, then never applies."""
    if first.ndim != 5 or first.shape[2] != 1:
        raise ValueError(f"first: expected [B, C, 1, h, w], got shape {tuple(first.shape)}")
    if latent_frames < 1:
        raise ValueError(f"latent_frames: expected >= 1, got {latent_frames}")
    b, c, _, h, w = first.shape
    zeros = first.new_zeros(b, c, latent_frames - 1, h, w)
    return torch.cat([first, zeros], dim=2)


class ImageConditioned(nn.Module):
    """``model(x [B', C, T', h, w], text [B', L, D], t [B'])`` -> ``denoiser([x ; c], text, t)``.

    ``condition`` ``[B, C, T', h, w]`` (:func:`image_condition`) is repeated along the batch
    when ``B'`` is a multiple of ``B`` (batched CFG stacks ``[cond; uncond]`` copies of ``x``, and
    both halves see the same image)."""

    def __init__(self, denoiser: nn.Module, condition: torch.Tensor) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.condition = condition

    def forward(self, x: torch.Tensor, text: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.condition
        if x.shape[0] % c.shape[0] or x.shape[2:] != c.shape[2:]:
            raise ValueError(
                f"x: expected [k·{c.shape[0]}, C, {', '.join(map(str, c.shape[2:]))}] to match "
                f"the image condition, got {tuple(x.shape)}"
            )
        c = c.to(x.dtype).repeat(x.shape[0] // c.shape[0], 1, 1, 1, 1)
        return self.denoiser(torch.cat([x, c], dim=1), text, t)


def generate_from_image(images: torch.Tensor, prompts: list[str], pipe, **generate_kwargs):
    """Videos ``[B, 3, T, H, W]`` of the mini pipeline ``pipe`` (an image-to-video transformer:
    ``2·C_lat`` input channels) that start from ``images`` ``[B, 3, H, W]`` in [-1, 1]; the
    keywords go to :func:`~cogvx_mini.pipeline.generate` (``frames``, ``steps``, ``seed``...).

    The image latents are a posterior sample drawn with ``seed`` before the initial noise."""
    import dataclasses

    from cogvx_mini.pipeline import generate

    wanted = 2 * pipe.latent_channels
    got = pipe.transformer.config.in_channels
    if got != wanted:
        raise ValueError(
            f"pipe: expected an image-to-video transformer ({wanted} input channels: the "
            f"latents and the image beside them), got one with {got}"
        )
    if images.ndim != 4 or len(images) != len(prompts):
        raise ValueError(
            f"images: expected [{len(prompts)}, 3, H, W], one per prompt, got {tuple(images.shape)}"
        )
    height, width = images.shape[-2:]
    frames = generate_kwargs.pop("frames", 17)
    generator = torch.Generator().manual_seed(generate_kwargs.get("seed", 0))
    device = next(pipe.transformer.parameters()).device
    first = encode_image(pipe.vae, images.to(device), generator, pipe.latent_scale)
    latent_frames = pipe.latent_shape(1, frames, height, width)[2]
    model = ImageConditioned(pipe.transformer, image_condition(first, latent_frames))
    conditioned = dataclasses.replace(pipe, transformer=model)
    return generate(
        prompts, conditioned, frames=frames, height=height, width=width, **generate_kwargs
    )
