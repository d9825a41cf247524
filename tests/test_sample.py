"""scale/sample.py against diffusers' CogVideoXPipeline on a tiny random model saved to disk."""

import re

import pytest
import torch

pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from tiny_models import tiny_t5  # noqa: E402

from cogvx_mini.diffusion import NoiseSchedule  # noqa: E402
from scale.sample import main, sample  # noqa: E402

PROMPT = "a small red circle moves left"


def _tiny_pipeline(like_5b: bool) -> CogVideoXPipeline:
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
        use_rotary_positional_embeddings=like_5b,
    )
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4
    )
    scheduler = CogVideoXDDIMScheduler(**NoiseSchedule.cogvideox_2b().to_diffusers_config())
    return CogVideoXPipeline(tokenizer, t5, vae, transformer, scheduler)


@pytest.mark.parametrize("like_5b,dynamic_cfg", [(False, False), (True, True)])
def test_same_video_as_diffusers_pipeline(tmp_path, like_5b, dynamic_cfg):
    _tiny_pipeline(like_5b).save_pretrained(tmp_path)
    pipe = CogVideoXPipeline.from_pretrained(tmp_path)  # as users load it: eval mode, no dropout
    kwargs = dict(num_frames=9, height=32, width=48, num_inference_steps=4, guidance_scale=6.0)
    ref = pipe(
        PROMPT,
        **kwargs,
        use_dynamic_cfg=dynamic_cfg,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).frames  # [B, T, C, H, W] in [0, 1]
    ours = sample(
        tmp_path,
        [PROMPT],
        steps=4,
        guidance=6.0,
        dynamic_cfg=dynamic_cfg,
        seed=3,
        frames=9,
        height=32,
        width=48,
        dtype=torch.float32,
        device="cpu",
        tiled=False,
        progress=False,
    )
    ours = (ours / 2 + 0.5).transpose(1, 2)
    assert ours.shape == ref.shape == (1, 9, 3, 32, 48)
    assert ref.std() > 0.01  # a real picture, not a constant
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_cli_writes_a_video(tmp_path, capsys):
    pipe = _tiny_pipeline(like_5b=True)
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
