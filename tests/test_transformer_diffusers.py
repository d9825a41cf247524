"""cogvx_mini's transformer against diffusers' CogVideoXTransformer3DModel (the `interop` extra)."""

import inspect

import pytest
import torch

from cogvx_mini.rope import positions_interpolated, rope_3d, sincos_3d
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig
from cogvx_mini.weights.diffusers import (
    transformer_config_from_diffusers,
    transformer_config_to_diffusers,
    transformer_state_dict_from_diffusers,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import CogVideoXTransformer3DModel  # noqa: E402
from diffusers.models.embeddings import (  # noqa: E402
    get_3d_rotary_pos_embed,
    get_3d_sincos_pos_embed,
)
from diffusers.pipelines.cogvideo.pipeline_cogvideox import (  # noqa: E402
    get_resize_crop_region_for_grid,
)
from tiny_models import SMALL_TRANSFORMER  # noqa: E402

from cogvx_mini.bench.transformer import _diffusers_rope  # noqa: E402

# Small configs shaped like the released models: 2B (sincos positions), 5B (3D-RoPE), 1.5
# (temporal patch 2, RoPE sliced from a larger table). The training grid is 8 x 12 latents.
SMALL = SMALL_TRANSFORMER
LIKE = {
    "2b": {},
    "5b": {"use_rotary_positional_embeddings": True},
    "1.5": {"use_rotary_positional_embeddings": True, "patch_size_t": 2, "patch_bias": False},
    "2b without patch bias": {"patch_bias": False},
    # 1.5-I2V: the image latents on channels and the ofs condition added to the timestep's
    "1.5-i2v": {
        "use_rotary_positional_embeddings": True,
        "patch_size_t": 2,
        "patch_bias": False,
        "in_channels": 8,
        "ofs_embed_dim": SMALL["time_embed_dim"],
    },
}


def _pair(like, seed=0):
    torch.manual_seed(seed)
    theirs = CogVideoXTransformer3DModel(**{**SMALL, **LIKE[like]}).eval()
    config = transformer_config_from_diffusers(dict(theirs.config))
    ours = CogVideoXTransformer(config).eval()
    ours.load_state_dict(transformer_state_dict_from_diffusers(theirs.state_dict(), config))
    return theirs, ours


@pytest.mark.parametrize("like", list(LIKE))
def test_same_output_as_diffusers(like):
    theirs, ours = _pair(like)
    # odd latent frame count (even for the temporal patch), non-square and not the training
    # grid: 4 x 12 latents -> 2 x 6 tokens, centred with an offset in the 4 x 6 RoPE base grid
    c = theirs.config
    frames = 4 if c.patch_size_t else 3
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, c.in_channels, frames, 4, 12, generator=g)
    text = torch.randn(2, 7, 20, generator=g)  # diffusers' sincos path needs the full length
    steps = torch.tensor([3.0, 901.0])
    rope = (
        _diffusers_rope(theirs, frames, 4, 12)
        if theirs.config.use_rotary_positional_embeddings
        else None
    )
    ofs = 3.0  # not the pipelines' 2.0, so that a model ignoring the argument fails
    kwargs = {"ofs": torch.full((1,), ofs)} if c.ofs_embed_dim else {}
    with torch.no_grad():
        ref = theirs(
            latents.transpose(1, 2), text, steps, image_rotary_emb=rope, return_dict=False,
            **kwargs,
        )[0]  # fmt: skip
        out = ours(latents, text, steps, ofs=ofs)
    ref = ref.transpose(1, 2)
    assert out.shape == ref.shape == (2, c.out_channels, *latents.shape[2:])
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-5
    assert ref.abs().mean() > 0.1  # random weights: a real signal, not zeros


def test_position_tables_match_diffusers():
    cos, sin = rope_3d(64, (3, 5, 7), positions_interpolated((3, 5, 7), (30, 45)))
    crops = get_resize_crop_region_for_grid((5, 7), 45, 30)
    ref_cos, ref_sin = get_3d_rotary_pos_embed(64, crops, (5, 7), 3)
    torch.testing.assert_close(cos, ref_cos, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=1e-6, atol=1e-6)
    emb = sincos_3d(128, (3, 5, 7), 1.875, 1.0)
    ref = get_3d_sincos_pos_embed(128, (7, 5), 3, 1.875, 1.0).flatten(0, 1)
    torch.testing.assert_close(emb, ref.float(), rtol=1e-6, atol=1e-6)


def test_released_configs_convert_to_ours():
    # the constructor's defaults are CogVideoX-2B's config; 5B changes heads, layers, positions
    signature = inspect.signature(CogVideoXTransformer3DModel.__init__).parameters.items()
    defaults = {k: p.default for k, p in signature if k != "self"}
    assert transformer_config_from_diffusers(defaults) == TransformerConfig.cogvideox_2b()
    five_b = {**defaults, "num_attention_heads": 48, "num_layers": 42}
    five_b["use_rotary_positional_embeddings"] = True
    assert transformer_config_from_diffusers(five_b) == TransformerConfig.cogvideox_5b()
    i2v = {**five_b, "in_channels": 32, "out_channels": 16}
    i2v["use_learned_positional_embeddings"] = True
    assert transformer_config_from_diffusers(i2v) == TransformerConfig.cogvideox_5b_i2v()
    # CogVideoX1.5-5B's and 1.5-5B-I2V's transformer/config.json (the keys they change)
    one_five = {**five_b, "patch_size_t": 2, "patch_bias": False, "sample_frames": 81}
    one_five |= {"sample_height": 300, "sample_width": 300}
    assert transformer_config_from_diffusers(one_five) == TransformerConfig.cogvideox1_5_5b()
    one_five |= {"in_channels": 32, "out_channels": 16, "ofs_embed_dim": 512}
    assert transformer_config_from_diffusers(one_five) == TransformerConfig.cogvideox1_5_5b_i2v()


def test_key_mismatch_lists_the_keys():
    theirs, _ = _pair("2b")
    config = transformer_config_from_diffusers(dict(theirs.config))
    state = dict(theirs.state_dict())
    state.pop("proj_out.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(
        KeyError, match=r"missing \['proj_out.bias'\], unexpected \['extra.weight'\]"
    ):
        transformer_state_dict_from_diffusers(state, config)
    with pytest.raises(ValueError, match="learned positions exist only with RoPE"):
        transformer_config_from_diffusers({"use_learned_positional_embeddings": True})
    with pytest.raises(ValueError, match="ofs_embed_dim None or time_embed_dim=512"):
        transformer_config_from_diffusers({"ofs_embed_dim": 256})


def test_image_to_video_variant_with_learned_positions():
    """5B-I2V: 2x input channels (the image latent), RoPE plus a stored [text; video] embedding
    that only exists for the training grid and the full text length."""
    torch.manual_seed(0)
    kwargs = {**SMALL, "in_channels": 8, "use_rotary_positional_embeddings": True}
    theirs = CogVideoXTransformer3DModel(**kwargs, use_learned_positional_embeddings=True).eval()
    with torch.no_grad():  # a "learned" table, text rows included
        theirs.patch_embed.pos_embedding.normal_()
    config = transformer_config_from_diffusers(dict(theirs.config))
    assert config.learned_positions and config.in_channels == 8 and config.out_channels == 4
    ours = CogVideoXTransformer(config).eval()
    ours.load_state_dict(transformer_state_dict_from_diffusers(theirs.state_dict(), config))
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 8, 3, 8, 12, generator=g)  # the training grid: 3 x 4 x 6 tokens
    text = torch.randn(2, 7, 20, generator=g)
    steps = torch.tensor([3.0, 901.0])
    rope = _diffusers_rope(theirs, 3, 8, 12)
    with torch.no_grad():
        ref = theirs(latents.transpose(1, 2), text, steps, image_rotary_emb=rope, return_dict=False)
        out = ours(latents, text, steps)
    ref = ref[0].transpose(1, 2)
    assert out.shape == ref.shape == (2, 4, 3, 8, 12)
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-5
    with pytest.raises(ValueError, match="learned positions exist for a"):
        ours(latents[..., :8], text, steps)


@pytest.mark.parametrize(
    "make",
    [
        TransformerConfig.mini,
        TransformerConfig.cogvideox_2b,
        TransformerConfig.cogvideox_5b,
        TransformerConfig.cogvideox_5b_i2v,
        TransformerConfig.cogvideox1_5_5b,
        TransformerConfig.cogvideox1_5_5b_i2v,
    ],
)
def test_config_round_trips_through_diffusers(make):
    config = make()
    assert transformer_config_from_diffusers(transformer_config_to_diffusers(config)) == config
    # the delegating methods that callers outside cogvx_mini.weights use
    assert TransformerConfig.from_diffusers_config(config.to_diffusers_config()) == config


def test_benchmark_smoke_on_cpu(tmp_path):
    from cogvx_mini.bench.transformer import main

    rows = main(
        [
            "--device",
            "cpu",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--checkpointing",
            "selective",
            "--json",
            str(tmp_path / "rows.json"),
        ]
    )
    check = next(r for r in rows if r["impl"] == "check")
    assert check["relative_error"] < 1e-5
    timed = [r for r in rows if "train_s" in r]
    assert {r["impl"] for r in timed} == {"diffusers auto", "cogvx_mini auto ckpt=selective"}
    assert (tmp_path / "rows.json").exists()
