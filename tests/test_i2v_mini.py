"""The mini image-to-video model: widening, the first-frame cache, the objective, generation."""

import dataclasses

import pytest
import torch

from cogvx_mini.data.text_encoder import ToyTextEncoder
from cogvx_mini.diffusion import NoiseSchedule
from cogvx_mini.image_to_video import generate_from_image
from cogvx_mini.pipeline import Pipeline, generate
from cogvx_mini.training.i2v import (
    FirstFrameBeside,
    ImageConditionedObjective,
    evaluation_clips,
    start_kept,
    widen_input,
)
from cogvx_mini.training.objective import DiffusionBatch, Objective
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig
from cogvx_mini.vae import VAE3D, VAEConfig


def _base(seed: int = 0) -> CogVideoXTransformer:
    torch.manual_seed(seed)
    model = CogVideoXTransformer(TransformerConfig.mini(num_layers=1)).eval()
    for p in model.parameters():  # AdaLN-zero starts at zero output: make the test see weights
        p.data.normal_(0, 0.05)
    return model


def _inputs(model, batch: int = 2, frames: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, frames, 8, 8, generator=g)
    text = torch.randn(batch, model.config.max_text_len, model.config.text_dim, generator=g)
    return x, text, torch.tensor([10, 700])[:batch]


def test_widened_model_starts_as_the_text_to_video_model():
    base = _base()
    wide = widen_input(base).eval()
    x, text, t = _inputs(base)
    condition = torch.randn_like(x)
    assert wide.config.in_channels == 32 and wide.config.out_channels == 16
    torch.testing.assert_close(wide(torch.cat([x, condition], 1), text, t), base(x, text, t))
    with pytest.raises(ValueError, match="text-to-video"):
        widen_input(wide)


def test_first_frame_beside_is_the_frame_encoded_alone():
    torch.manual_seed(0)
    vae = VAE3D(VAEConfig.mini()).eval()
    video = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        moments = FirstFrameBeside(vae).encode(video)
        clip, first = vae.encode(video), vae.encode(video[:, :, :1])
    assert moments.mean.shape == (2, 32, 3, 4, 4)
    torch.testing.assert_close(moments.mean[:, :16], clip.mean)
    torch.testing.assert_close(moments.std[:, :16], clip.std)
    torch.testing.assert_close(moments.mean[:, 16:, :1], first.mean)
    torch.testing.assert_close(moments.std[:, 16:, :1], first.std)
    assert not moments.mean[:, 16:, 1:].any() and not moments.std[:, 16:, 1:].any()
    # a 9-frame clip's latent frame 0 is not the lone frame's (the norms see the whole clip)
    assert not torch.allclose(clip.mean[:, :, :1], first.mean, atol=1e-4)


def test_objective_noises_only_the_video_and_feeds_the_image_beside_it():
    base = _base()
    wide = widen_input(base)
    x, text, t = _inputs(base)
    image = torch.zeros_like(x)
    image[:, :, :1] = torch.randn_like(x[:, :, :1])
    noise = torch.randn(2, 32, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    batch = DiffusionBatch(torch.cat([x, image], 1), noise, text, t)
    schedule = NoiseSchedule()
    got = ImageConditionedObjective(schedule).per_sample_loss(wide, batch)
    plain = DiffusionBatch(x, noise[:, :16], text, t)
    # the widened model ignores the image: the loss is the plain loss of the video channels
    torch.testing.assert_close(got, Objective(schedule).per_sample_loss(base, plain))
    with torch.no_grad():  # now the model reads the image channels
        wide.patch_embed.weight[:, 16 * 4 :].normal_(0, 0.05)
    loss = ImageConditionedObjective(schedule).per_sample_loss
    reference = loss(wide, batch)
    other_image = dataclasses.replace(batch, x0=torch.cat([x, image.roll(1, dims=-1)], 1))
    assert not torch.allclose(loss(wide, other_image), reference)
    unused = noise.clone()
    unused[:, 16:, 1] = 0.0  # the image noise of a frame after 0 (and not its last value)
    torch.testing.assert_close(loss(wide, dataclasses.replace(batch, noise=unused)), reference)


def test_generate_from_image_equals_text_to_video_while_the_image_weights_are_zero():
    base = _base()
    torch.manual_seed(0)
    vae = VAE3D(VAEConfig.mini()).eval()
    text = ToyTextEncoder(64, 32)
    pipe = Pipeline(base, vae, text, NoiseSchedule(), latent_scale=1.2)
    wide = dataclasses.replace(pipe, transformer=widen_input(base).eval())
    prompts = ["a small red circle moves left", "a large blue square moves up"]
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    kwargs = {"frames": 5, "height": 16, "width": 16, "steps": 3, "seed": 4, "progress": False}
    want = generate(prompts, pipe, **kwargs)
    kwargs.pop("height"), kwargs.pop("width")
    got = generate_from_image(images, prompts, wide, **kwargs)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="pipe: expected an image-to-video transformer"):
        generate_from_image(images, prompts, pipe, **kwargs)
    with pytest.raises(ValueError, match="images: expected"):
        generate_from_image(images[:1], prompts, wide, **kwargs)


def test_start_kept_reads_where_each_object_starts():
    (video, caption), *_ = evaluation_clips("train", 1)
    assert all(start_kept(video, video, caption, tolerance=3.0))
    moved = torch.roll(video, shifts=6, dims=-1)
    assert not any(start_kept(moved, video, caption, tolerance=3.0))
