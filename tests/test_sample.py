"""scale/sample.py against diffusers' CogVideoXPipeline on a tiny random model saved to disk."""

import re

import pytest
import torch

pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from PIL import Image  # noqa: E402
from tiny_models import tiny_t5  # noqa: E402

from cogvx_mini.diffusion import NoiseSchedule  # noqa: E402
from scale.sample import main, sample  # noqa: E402

PROMPT = "a small red circle moves left"


# What each released variant changes in the transformer's config (1.5: temporal patch 2, RoPE
# sliced from its table; I2V: twice the VAE's channels in; 5B-I2V: learned positions; 1.5-I2V: ofs).
VARIANTS = {
    "2b": {},
    "5b": {"use_rotary_positional_embeddings": True},
    "1.5": {"use_rotary_positional_embeddings": True, "patch_size_t": 2, "patch_bias": False},
    "5b-i2v": {
        "use_rotary_positional_embeddings": True,
        "use_learned_positional_embeddings": True,
        "in_channels": 32,
        "out_channels": 16,
    },
    "1.5-i2v": {
        "use_rotary_positional_embeddings": True,
        "patch_size_t": 2,
        "patch_bias": False,
        "in_channels": 32,
        "out_channels": 16,
        "ofs_embed_dim": 16,
    },
}


def _tiny_pipeline(variant: str, vae_config: dict | None = None):
    tokenizer, t5 = tiny_t5(num_layers=1)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        time_embed_dim=16,
        text_embed_dim=16,
        num_layers=2,
        sample_height=4,
        sample_width=6,
        sample_frames=9,
        **VARIANTS[variant],
    )
    if "learned" in str(VARIANTS[variant]):  # a "trained" table, so that a lost one shows
        with torch.no_grad():
            transformer.patch_embed.pos_embedding.normal_(std=0.5)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
        **(vae_config or {}),
    )  # fmt: skip
    scheduler = CogVideoXDDIMScheduler(**NoiseSchedule.cogvideox_2b().to_diffusers_config())
    kind = CogVideoXImageToVideoPipeline if "i2v" in variant else CogVideoXPipeline
    return kind(tokenizer, t5, vae, transformer, scheduler)


def _ours(folder, dynamic_cfg=False, image=None, frames=9):
    video = sample(folder, [PROMPT], steps=4, guidance=6.0, dynamic_cfg=dynamic_cfg, seed=3,
                   frames=frames, height=32, width=48, dtype=torch.float32, device="cpu",
                   tiled=False, progress=False, image=image)  # fmt: skip
    return (video / 2 + 0.5).transpose(1, 2)  # as diffusers' frames: [B, T, C, H, W] in [0, 1]


@pytest.mark.parametrize("variant,dynamic_cfg", [("2b", False), ("5b", True), ("1.5", False)])
def test_same_video_as_diffusers_pipeline(tmp_path, variant, dynamic_cfg):
    _tiny_pipeline(variant).save_pretrained(tmp_path)
    pipe = CogVideoXPipeline.from_pretrained(tmp_path)  # as users load it: eval mode, no dropout
    kwargs = dict(num_frames=9, height=32, width=48, num_inference_steps=4, guidance_scale=6.0)
    ref = pipe(
        PROMPT,
        **kwargs,
        use_dynamic_cfg=dynamic_cfg,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).frames  # [B, T, C, H, W] in [0, 1]
    ours = _ours(tmp_path, dynamic_cfg)
    assert ours.shape == ref.shape == (1, 9, 3, 32, 48)  # 1.5: 3 latent frames padded to 4
    assert ref.std() > 0.01  # a real picture, not a constant
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant,invert", [("5b-i2v", False), ("1.5-i2v", True)])
def test_same_video_as_diffusers_image_to_video(tmp_path, variant, invert):
    """The image resized, encoded, sampled from its posterior, scaled (divided under 1.5's
    invert_scale_latents) and read beside the noise at every step, as diffusers does."""
    vae = {"scaling_factor": 0.7, "invert_scale_latents": invert}
    _tiny_pipeline(variant, vae).save_pretrained(tmp_path / "model")
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(30, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "first.png")  # not 32 x 48: both resize it
    image = Image.open(tmp_path / "first.png")
    ref = pipe(
        image, PROMPT, num_frames=9, height=32, width=48, num_inference_steps=4,
        guidance_scale=6.0, generator=torch.Generator().manual_seed(3), output_type="pt",
    ).frames  # fmt: skip
    ours = _ours(tmp_path / "model", image=tmp_path / "first.png")
    assert ours.shape == ref.shape == (1, 9, 3, 32, 48)
    assert ref.std() > 0.01
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    other = _ours(tmp_path / "model", image=torch.zeros(1, 3, 32, 48))
    assert (other - ours).abs().max() > 1e-3  # the image reaches the transformer


def test_image_arguments_are_checked_before_loading(tmp_path, capsys):
    _tiny_pipeline("5b-i2v").save_pretrained(tmp_path / "i2v")
    _tiny_pipeline("5b").save_pretrained(tmp_path / "t2v")
    with pytest.raises(ValueError, match="image-to-video .*pass --image"):
        _ours(tmp_path / "i2v")
    with pytest.raises(ValueError, match="reads 16 channels"):
        _ours(tmp_path / "t2v", image=torch.zeros(1, 3, 32, 48))
    with pytest.raises(ValueError, match=r"expected \[1 or 1, 3, 32, 48\]"):
        _ours(tmp_path / "i2v", image=torch.zeros(1, 3, 16, 48))
    with pytest.raises(ValueError, match="learned positions exist for 9 x 32 x 48 only"):
        _ours(tmp_path / "i2v", image=torch.zeros(1, 3, 32, 48), frames=5)
    base = ["--model", str(tmp_path / "i2v"), "--prompt", PROMPT, "--height", "32"]
    with pytest.raises(SystemExit):
        main([*base, "--width", "48", "--frames", "9", "--image", str(tmp_path / "none.png")])
    assert "--image: expected an image file" in capsys.readouterr().err


def test_cli_writes_a_video(tmp_path, capsys):
    pipe = _tiny_pipeline("5b")
    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "v.gif"
    paths = main(
        ["--model", str(tmp_path / "model"), "--prompt", PROMPT, "--out", str(out)]
        + ["--steps", "2", "--frames", "5", "--height", "32", "--width", "32", "--dtype", "fp32"]
    )
    assert paths == [out] and out.stat().st_size > 0
    with pytest.raises(SystemExit):  # an argparse error, before anything loads
        main(["--model", str(tmp_path / "model"), "--prompt", PROMPT, "--frames", "8"])
    assert re.search("4k\\+1|frames", capsys.readouterr().err)


def test_end_to_end_benchmark_smoke(tmp_path):
    from cogvx_mini.bench.end_to_end import main as bench

    out = ["--workdir", str(tmp_path / "model"), "--out", str(tmp_path / "e2e.json")]
    rows = bench(["--device", "cpu", "--variant", "tiny", "--steps", "2", *out])
    assert [r["mode"] for r in rows][0] == "diffusers CogVideoXPipeline" and len(rows) == 3
    assert all(r["seconds"] > 0 for r in rows) and rows[2]["mean_abs_diff_vs_diffusers"] < 0.2
