import pytest
import torch
from einops import repeat

from cogvx_mini.data.text_encoder import ToyTextEncoder
from cogvx_mini.data.video_io import read_video
from cogvx_mini.diffusion import NoiseSchedule
from cogvx_mini.pipeline import Pipeline, generate, save_videos
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig
from cogvx_mini.vae import VAEConfig


class UpsampleVAE(torch.nn.Module):
    """Stand-in decoder with the VAE's shapes: 3 of 16 channels, 4x in time, 8x8 in space."""

    config = VAEConfig.mini()

    def decode(self, z):
        first = repeat(z[:, :3, :1], "b c t h w -> b c t (h p) (w q)", p=8, q=8)
        rest = repeat(z[:, :3, 1:], "b c t h w -> b c (t r) (h p) (w q)", r=4, p=8, q=8)
        return torch.tanh(torch.cat([first, rest], dim=2))


def tiny_pipe(scale=2.0):
    torch.manual_seed(0)
    model = CogVideoXTransformer(
        TransformerConfig.mini(num_layers=1, num_heads=2, head_dim=16, time_embed_dim=32)
    )
    for p in model.parameters():  # AdaLN-zero starts at v = 0; give it some output
        p.data.add_(0.05 * torch.randn_like(p))
    return Pipeline(model.eval(), UpsampleVAE(), ToyTextEncoder(), NoiseSchedule(), scale)


def test_generate_shapes_determinism_and_guidance():
    pipe = tiny_pipe()
    prompts = ["a small red circle moves left", "a large blue square moves up"]
    a = generate(prompts, pipe, frames=9, height=32, width=48, steps=4, progress=False)
    assert a.shape == (2, 3, 9, 32, 48) and a.abs().max() <= 1
    b = generate(prompts, pipe, frames=9, height=32, width=48, steps=4, progress=False)
    assert torch.equal(a, b)
    other_seed = generate(
        prompts, pipe, frames=9, height=32, width=48, steps=4, seed=1, progress=False
    )
    assert not torch.allclose(a, other_seed)
    # The prompt matters, and so does the guidance scale.
    swapped = generate(prompts[::-1], pipe, frames=9, height=32, width=48, steps=4, progress=False)
    assert not torch.allclose(a[0], swapped[1])
    g1 = generate(
        prompts, pipe, frames=9, height=32, width=48, steps=4, guidance=1.0, progress=False
    )
    assert not torch.allclose(a, g1)


def test_generate_divides_by_the_latent_scale():
    def latents(scale):
        _, z = generate(
            ["a red circle moves up"],
            tiny_pipe(scale),
            frames=5,
            height=16,
            width=16,
            steps=3,
            progress=False,
            return_latents=True,
        )
        return z

    torch.testing.assert_close(latents(2.0) * 2, latents(1.0))


def test_generate_rejects_bad_sizes():
    pipe = tiny_pipe()
    with pytest.raises(ValueError, match="4k\\+1"):
        generate(["x"], pipe, frames=8, progress=False)
    with pytest.raises(ValueError, match="divisible by 8"):
        generate(["x"], pipe, height=30, progress=False)
    with pytest.raises(TypeError, match="list"):
        generate("x", pipe, progress=False)


def test_save_videos(tmp_path):
    videos = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    paths = save_videos(videos, tmp_path, ["a", "b"], fmt="gif")
    assert [p.name for p in paths] == ["a.gif", "b.gif"]
    assert read_video(paths[1]).shape == (3, 5, 16, 16)


def test_latent_shape_is_the_vae_configs():
    from cogvx_mini.vae_2d import per_frame_config

    pipe = tiny_pipe()
    assert pipe.latent_shape(2, 9, 32, 48) == (2, 16, 3, 4, 6)
    assert (pipe.latent_channels, pipe.spatial_compression, pipe.temporal_compression) == (16, 8, 4)
    pipe.vae.config = per_frame_config(latent_channels=4)  # no temporal compression, 4 channels
    assert pipe.latent_shape(1, 9, 32, 48) == (1, 4, 9, 4, 6)


def test_generate_passes_spacing_and_callback_to_the_sampler():
    pipe = tiny_pipe()
    seen = []
    kwargs = dict(frames=5, height=16, width=16, steps=3, progress=False, return_latents=True)
    _, z = generate(["a red circle moves up"], pipe, callback=lambda *a: seen.append(a), **kwargs)
    assert [t for _, t, _, _ in seen] == [999, 666, 332]
    torch.testing.assert_close(seen[-1][2] / pipe.latent_scale, z)  # the last step's sample
    _, leading = generate(["a red circle moves up"], pipe, spacing="leading", **kwargs)
    assert not torch.allclose(leading, z)
