"""LoRA (cogvx_mini.training.lora) against diffusers' CogVideoX LoRA loading, and LoRA in the mini
loop, scale/train.py (FSDP over gloo), scale/sample.py and the benchmark. CPU, float32."""

import argparse
import copy
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("peft")
pytest.importorskip("diffusers")
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from scale_helpers import run_gloo, torchrun  # noqa: E402
from test_transformer_diffusers import _diffusers_rope  # noqa: E402
from tiny_models import SMALL_TRANSFORMER  # noqa: E402

from cogvx_mini.training.lora import (  # noqa: E402
    LORA_FILE,
    LoraSettings,
    add_lora,
    base_weights,
    load_lora_diffusers,
    lora_layers,
    merge_lora,
    save_lora_diffusers,
    unload_lora,
    unmerge_lora,
)
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig  # noqa: E402
from cogvx_mini.weights.diffusers import (  # noqa: E402
    transformer_config_from_diffusers,
    transformer_state_dict_from_diffusers,
)

G = torch.Generator().manual_seed(1)
LATENTS = torch.randn(2, 4, 3, 8, 12, generator=G)  # the 8 x 12 training grid, 3 latent frames
TEXT = torch.randn(2, 7, 20, generator=G)
STEPS = torch.tensor([3.0, 901.0])


def _theirs(seed: int = 0) -> CogVideoXTransformer3DModel:
    """A small 5B-like (RoPE) diffusers transformer, the same for the same seed."""
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        **SMALL_TRANSFORMER, use_rotary_positional_embeddings=True
    ).eval()


def _ours(theirs) -> CogVideoXTransformer:
    config = transformer_config_from_diffusers(dict(theirs.config))
    ours = CogVideoXTransformer(config).eval()
    plain = {k: v for k, v in theirs.state_dict().items() if ".lora_" not in k}
    ours.load_state_dict(transformer_state_dict_from_diffusers(plain, config))
    return ours


@torch.no_grad()
def _predict(model) -> torch.Tensor:
    """v-prediction ``[2, 4, 3, 8, 12]`` of either implementation on the shared inputs."""
    if isinstance(model, CogVideoXTransformer):
        return model(LATENTS, TEXT, STEPS)
    rope = _diffusers_rope(model, 3, 8, 12)
    out = model(LATENTS.transpose(1, 2), TEXT, STEPS, image_rotary_emb=rope, return_dict=False)
    return out[0].transpose(1, 2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _pipeline(transformer) -> CogVideoXPipeline:
    """A pipeline around ``transformer`` only: ``load_lora_weights`` needs nothing else."""
    return CogVideoXPipeline(None, None, None, transformer, None)


def _train_a_few_steps(model, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    target = torch.randn(LATENTS.shape, generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        (model(LATENTS, TEXT, STEPS) - target).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_lora_trained_here_gives_diffusers_the_same_prediction(tmp_path):
    theirs = _theirs()
    ours = _ours(theirs)
    plain = copy.deepcopy(ours.state_dict())
    add_lora(ours, LoraSettings(rank=4, alpha=8.0))  # scale 2: diffusers must get it from B
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 4 * 2  # 2 blocks x (qkv, out, fc1, fc2) x (A, B)
    assert all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    start = _predict(ours)
    assert _rel(start, _predict(theirs)) <= 1e-5  # B = 0: the model it fine-tunes

    _train_a_few_steps(ours)
    for key, value in base_weights(ours, plain).items():  # the frozen weights did not move
        assert torch.equal(ours.state_dict()[key], value), key
    tuned = _predict(ours)
    assert _rel(tuned, start) > 1e-3  # the LoRA changes the prediction

    path = save_lora_diffusers(ours, tmp_path)
    assert path == tmp_path / LORA_FILE
    modules = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
    modules += ("ff.net.0.proj", "ff.net.2")
    expected = {
        f"transformer.transformer_blocks.{i}.{m}.lora_{x}.weight"
        for i in range(2)
        for m in modules
        for x in "AB"
    }
    assert set(load_file(path)) == expected
    pipe = _pipeline(theirs)
    pipe.load_lora_weights(tmp_path)  # as a diffusers user loads it
    assert _rel(tuned, _predict(pipe.transformer)) <= 1e-5


def _diffusers_lora(folder, targets, rank_pattern, alpha_pattern, with_metadata):
    """A LoRA made with diffusers + peft on ``_theirs()``, random (trained-like) B, saved with
    ``save_lora_weights``; returns the model that made it."""
    source = _theirs()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    source.add_adapter(config)
    with torch.no_grad():
        for name, p in source.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    extra = {"transformer_lora_adapter_metadata": config.to_dict()} if with_metadata else {}
    CogVideoXPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(source), **extra
    )
    return source


@pytest.mark.parametrize(
    "targets,rank_pattern,alpha_pattern,with_metadata",
    [
        # every projection, the conv patch embedding ("proj"), other ranks and alphas per module,
        # the peft config stored in the file (diffusers then uses its alphas)
        (["to_q", "to_k", "to_v", "to_out.0", "proj", "ff.net.2"], {"to_v": 6},
         {"to_out.0": 16}, True),
        # a LoRA on to_q and to_v only (to_k's block of qkv stays zero), no config in the file
        (["to_q", "to_v"], {}, {}, False),
    ],
)  # fmt: skip
def test_lora_made_with_diffusers_loads_here(
    tmp_path, targets, rank_pattern, alpha_pattern, with_metadata
):
    source = _diffusers_lora(tmp_path / "theirs", targets, rank_pattern, alpha_pattern,
                             with_metadata)  # fmt: skip
    pipe = _pipeline(_theirs())
    pipe.load_lora_weights(tmp_path / "theirs")
    ref = _predict(pipe.transformer)
    if not with_metadata:
        # diffusers' quirk: without the config the file carries no alpha, so it loads at scale
        # 1 (alpha = rank), not the source's 8/4; cogvx_mini reads the file as diffusers does.
        assert _rel(_predict(source), ref) > 1e-3
    ours = load_lora_diffusers(_ours(_theirs()), tmp_path / "theirs")
    out = _predict(ours)
    assert _rel(out, ref) <= 1e-5
    assert _rel(out, _predict(_ours(_theirs()))) > 1e-3  # the LoRA is really applied

    # and back: the file cogvx_mini writes has the source's keys and shapes and, read by
    # diffusers, gives the same prediction again
    save_lora_diffusers(ours, tmp_path / "ours")
    original, written = (
        load_file(tmp_path / "theirs" / LORA_FILE),
        load_file(tmp_path / "ours" / LORA_FILE),
    )
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in original.items()}
    again = _pipeline(_theirs())
    again.load_lora_weights(tmp_path / "ours")
    assert _rel(_predict(again.transformer), ref) <= 1e-5

    # the strength: cogvx_mini's scale is diffusers' adapter weight
    pipe.set_adapters("default_0", 0.5)
    half = load_lora_diffusers(_ours(_theirs()), tmp_path / "theirs", scale=0.5)
    assert _rel(_predict(half), _predict(pipe.transformer)) <= 1e-5


def test_merge_unmerge_and_unload_keep_the_prediction():
    plain_model = _ours(_theirs())
    base = _predict(plain_model)
    keys = list(plain_model.state_dict())
    ours = add_lora(copy.deepcopy(plain_model), LoraSettings(rank=4, alpha=4.0, dropout=0.1))
    with torch.no_grad():
        for layer in lora_layers(ours).values():
            layer.lora_B["default"].weight.normal_(std=0.1)
    unmerged = _predict(ours)  # eval mode: no dropout
    assert _rel(unmerged, base) > 1e-3
    qkv = ours.blocks[0].attn.qkv.base_layer.weight
    before = qkv.detach().clone()
    merge_lora(ours)
    assert not torch.equal(qkv, before)
    assert _rel(_predict(ours), unmerged) <= 1e-5
    unmerge_lora(ours)
    torch.testing.assert_close(qkv, before, rtol=0, atol=1e-6)
    assert _rel(_predict(ours), unmerged) <= 1e-6

    merged = unload_lora(copy.deepcopy(ours), merge=True)
    assert list(merged.state_dict()) == keys and not lora_layers(merged)  # plain names again
    assert _rel(_predict(merged), unmerged) <= 1e-5
    dropped = unload_lora(copy.deepcopy(ours), merge=False)
    assert _rel(_predict(dropped), base) <= 1e-6
    add_lora(dropped, LoraSettings(rank=2))  # a plain model again: LoRA can be added anew
    assert len(lora_layers(dropped)) == 8


def _write(folder, tensors, metadata=None):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone() for k, v in tensors.items()}, folder / LORA_FILE, metadata=metadata)
    return folder


def test_bad_files_and_settings_are_refused_with_the_key(tmp_path):
    model = _ours(_theirs())
    q = "transformer.transformer_blocks.0.attn1.to_q"
    a, b = torch.zeros(4, 32), torch.zeros(32, 4)
    cases = {
        "in features": ({f"{q}.lora_A.weight": torch.zeros(4, 31), f"{q}.lora_B.weight": b},
                        r"to_q: lora_A \(4, 31\) and lora_B \(32, 4\) do not fit blocks.0.attn"),
        "ranks": ({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": torch.zeros(32, 5)},
                  "to_q lora_A .* have different ranks"),
        "module": ({"transformer.transformer_blocks.7.attn1.to_q.lora_A.weight": a,
                    "transformer.transformer_blocks.7.attn1.to_q.lora_B.weight": b},
                   r"transformer_blocks.7.attn1.to_q' is not in .* of this config \(2 layers\)"),
        "alpha key": ({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b,
                       f"{q}.alpha": torch.tensor(4.0)}, r"to_q.alpha' is not a peft LoRA factor"),
        "text encoder": ({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b,
                          "text_encoder.x.lora_A.weight": a}, "transformer's LoRA only"),
        "half a pair": ({f"{q}.lora_B.weight": b}, "to_q needs a 2-d lora_A and lora_B"),
    }  # fmt: skip
    for name, (tensors, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            load_lora_diffusers(model, _write(tmp_path / name, tensors))
    dora = {"lora_adapter_metadata": json.dumps({"transformer.use_dora": True})}
    with pytest.raises(ValueError, match="DoRA"):
        load_lora_diffusers(model, _write(tmp_path / "dora", {f"{q}.lora_A.weight": a}, dora))
    assert not lora_layers(model)  # nothing was injected by the failed loads

    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_lora_weights.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match=r"pickled files \['pytorch_lora_weights.bin'\]"):
        load_lora_diffusers(model, tmp_path / "pickled")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / LORA_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_lora_diffusers(model, tmp_path / "broken")
    with pytest.raises(FileNotFoundError, match="no LoRA folder or file"):
        load_lora_diffusers(model, tmp_path / "missing")
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_lora_diffusers(model, tmp_path / "out")
    add_lora(model, LoraSettings(rank=2))
    with pytest.raises(ValueError, match="already has LoRA layers"):
        add_lora(model, LoraSettings(rank=2))
    for bad, message in [
        (dict(rank=0), "lora.rank"),
        (dict(alpha=-1.0), "lora.alpha"),
        (dict(dropout=1.0), "lora.dropout"),
        (dict(targets=("to_q",)), r"lora.targets: expected some of \['qkv'"),
    ]:
        with pytest.raises(ValueError, match=message):
            LoraSettings(**bad)


# -- scale/sample.py -----------------------------------------------------------------------------


def test_sample_with_lora_matches_diffusers_pipeline(tmp_path):
    from test_sample import PROMPT, _tiny_pipeline

    from scale.sample import SampleRuntime, main, sample

    pipe = _tiny_pipeline("5b")
    pipe.save_pretrained(tmp_path / "model")
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    layers = get_peft_model_state_dict(pipe.transformer)
    CogVideoXPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=layers)

    reference = CogVideoXPipeline.from_pretrained(tmp_path / "model")
    reference.load_lora_weights(tmp_path / "lora")
    reference.set_adapters("default_0", 0.7)
    kwargs = dict(num_frames=9, height=32, width=48, num_inference_steps=2, guidance_scale=6.0)
    g = torch.Generator().manual_seed(3)
    ref = reference(PROMPT, **kwargs, generator=g, output_type="pt").frames
    args = dict(steps=2, guidance=6.0, seed=3, frames=9, height=32, width=48)
    args.update(dtype=torch.float32, device="cpu", tiled=False, progress=False)
    runtime = SampleRuntime(lora=tmp_path / "lora", lora_scale=0.7)
    ours = (sample(tmp_path / "model", [PROMPT], **args, runtime=runtime) / 2 + 0.5).transpose(1, 2)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    plain = (sample(tmp_path / "model", [PROMPT], **args) / 2 + 0.5).transpose(1, 2)
    assert (plain - ref).abs().max() > 1e-3  # the LoRA changed the video
    with pytest.raises(SystemExit):  # checked before anything loads
        main(["--model", str(tmp_path / "model"), "--prompt", PROMPT, "--lora", "nowhere"])


# -- the mini loop ---------------------------------------------------------------------------------


def test_mini_loop_trains_only_the_lora_and_resumes_only_with_it(tmp_path, capsys):
    from test_train import random_dataset

    from cogvx_mini.training.train import (
        CHECKPOINT_NAME,
        TrainConfig,
        export_ema,
        parse_args,
        train,
    )
    from cogvx_mini.weights.checkpoint import load_checkpoint
    from cogvx_mini.weights.mini import read_mini_weights

    config = TransformerConfig.mini(num_layers=1, num_heads=2, head_dim=16, time_embed_dim=32)
    torch.manual_seed(0)
    model = CogVideoXTransformer(config)
    for p in model.parameters():  # a "trained" model: AdaLN-zero would pass no gradient back
        torch.nn.init.normal_(p, std=0.05)
    plain = copy.deepcopy(model.state_dict())
    settings = LoraSettings(rank=2, alpha=4.0)
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup=2, checkpoint_every=3)
    result = train(add_lora(model, settings), random_dataset(), cfg, tmp_path, progress=False)
    assert result.step == 6
    for key, value in base_weights(model, plain).items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(
        layer.lora_B["default"].weight.abs().sum() > 0 for layer in lora_layers(model).values()
    )
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["lora"]["blocks.0.attn.qkv"] == [2, 4.0, 0.0]

    other = add_lora(CogVideoXTransformer(config), LoraSettings(rank=2, alpha=2.0))
    with pytest.raises(ValueError, match="another LoRA"):
        train(other, random_dataset(), cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another LoRA"):
        train(CogVideoXTransformer(config), random_dataset(), cfg, tmp_path, progress=False)

    args = argparse.Namespace(init_from="base.safetensors", lora=settings)
    weights = export_ema(result, tmp_path, config, cfg, args)
    assert (tmp_path / "lora" / LORA_FILE).is_file()
    loaded_config, state, meta = read_mini_weights(weights)  # plain names: the LoRA merged
    assert loaded_config == config and json.loads(meta["lora"])["rank"] == 2
    merged = CogVideoXTransformer(config)
    merged.load_state_dict(state)
    # the exported LoRA on the plain base weights is the EMA model (its frozen base = the base)
    from_file = load_lora_diffusers(CogVideoXTransformer(config), tmp_path / "lora")
    from_file.load_state_dict(base_weights(from_file, plain), strict=False)
    latents, text, t = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, 64), torch.tensor([400])
    with torch.no_grad():
        ema_out = result.ema(latents, text, t)
        base = CogVideoXTransformer(config)
        base.load_state_dict(plain)
        assert _rel(ema_out, base(latents, text, t)) > 1e-4  # the EMA's LoRA is not zero
        assert _rel(from_file(latents, text, t), ema_out) <= 1e-6
        # the merged weights file is float16: equal to its precision
        torch.testing.assert_close(merged(latents, text, t), ema_out, rtol=0, atol=5e-3)

    for argv, message in [
        (["--lora-rank", "4"], "give its weights with --init-from"),
        (["--init-from", "w", "--lora-rank", "4", "--lora-targets", "to_q"], "lora.targets"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


# -- scale/train.py ------------------------------------------------------------------------------

SETS = ["train.steps=8", "lora.rank=4", "lora.alpha=8", "train.checkpoint_every=4"]
SETS += ["data.toy_samples=8", "train.log_every=4", "optim.warmup_steps=2"]
SCALE = ["--config", "tiny", "--data", "toy", *(x for s in SETS for x in ("--set", s))]


def _tiny_base(path):
    from cogvx_mini.training.scale_config import load_config
    from cogvx_mini.weights.checkpoint import save_weights

    torch.manual_seed(5)
    model = CogVideoXTransformer(load_config("tiny").transformer_config())
    for p in model.parameters():  # a "trained" model: AdaLN-zero would pass no gradient back
        torch.nn.init.normal_(p, std=0.05)
    return save_weights(model.state_dict(), path)


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def scale_runs(tmp_path_factory):
    """One process for 8 steps in this process (checkpoints at 4 and 8), then two gloo ranks
    under torchrun resuming its step-4 checkpoint to step 8: FSDP over both (dp 2), and context
    parallel (dp 1 x cp 2, the video tokens split between them)."""
    import scale.train

    root = tmp_path_factory.mktemp("scale_lora")
    base = _tiny_base(root / "base.safetensors")
    args = [*SCALE, "--set", f"train.init_from={base}"]
    env = dict(os.environ)
    try:
        scale.train.main([*args, "--out", str(root / "one")])
    finally:  # init_distributed set RANK, WORLD_SIZE, ... for a world of one
        os.environ.clear()
        os.environ.update(env)
    logs = []
    for name, layout in (("two", []), ("cp", ["--set", "parallel.cp=2"])):
        resumed = root / name
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(
            root / "one/checkpoints/step_00000004", resumed / "checkpoints/step_00000004"
        )
        shutil.copy(root / "one/metrics.jsonl", resumed / "metrics.jsonl")
        log = torchrun(2, *args, *layout, "--out", str(resumed))
        logs.append(log.stdout + log.stderr)
    return root, base, *logs


def test_scale_lora_on_two_ranks_resumes_one_process_exactly(scale_runs):
    root, _, log, _ = scale_runs
    assert "LoRA rank 4: 8,192 trained" in log and "resuming from" in log and "dp=2" in log
    one, two = _losses(root / "one"), _losses(root / "two")
    assert len(one) == len(two) == 8
    assert two[4:] == pytest.approx(one[4:], rel=1e-4)  # FSDP LoRA == one process, after resume


def test_scale_lora_under_context_parallel_resumes_one_process_exactly(scale_runs):
    root, _, _, log = scale_runs
    assert "LoRA rank 4: 8,192 trained" in log and "dp=1 x cp=2" in log
    one, cp = _losses(root / "one"), _losses(root / "cp")
    assert len(cp) == 8
    assert cp[4:] == pytest.approx(one[4:], rel=1e-4)  # CP with LoRA == one process


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.load in one process
def test_scale_lora_exports_diffusers_files_and_keeps_the_base(scale_runs):
    import torch.distributed.checkpoint as dcp

    from cogvx_mini.weights.checkpoint import load_weights

    root, base, _, _ = scale_runs
    for name in ("lora", "lora_ema"):
        tensors = load_file(root / "two" / name / LORA_FILE)
        assert "transformer.transformer_blocks.1.attn1.to_v.lora_B.weight" in tensors
        assert any(v.abs().sum() > 0 for k, v in tensors.items() if "lora_B" in k)
    assert not (root / "two" / "transformer.safetensors").exists()  # the base is not re-written
    # The sharded checkpoint of step 8 holds the base weights unchanged.
    from cogvx_mini.training.scale_config import load_config

    model = add_lora(
        CogVideoXTransformer(load_config("tiny").transformer_config()), LoraSettings(4)
    )
    state = {"model": {k: torch.empty_like(v) for k, v in model.state_dict().items()}}
    dcp.load(state, checkpoint_id=root / "two" / "checkpoints" / "step_00000008")
    for key, value in base_weights(model, load_weights(base)).items():
        assert torch.equal(state["model"][key], value), key
    assert state["model"]["blocks.0.attn.qkv.lora_B.default.weight"].abs().sum() > 0
    # the same from a diffusers pipeline's point of view: the exported LoRA loads there too
    theirs = _pipeline(CogVideoXTransformer3DModel(**model.config.to_diffusers_config()))
    theirs.load_lora_weights(root / "two" / "lora")


def test_scale_checkpoint_of_another_lora_is_refused(scale_runs):
    from cogvx_mini.training.scale_config import load_config
    from scale.train import check_checkpoint_config, latest_checkpoint

    root, _, _, _ = scale_runs
    path = latest_checkpoint(root / "two" / "checkpoints")
    check_checkpoint_config(path, load_config("tiny", SETS))  # the same config resumes
    for change in ["lora.rank=0", "lora.rank=8", "lora.alpha=4", "lora.targets=[qkv]"]:
        other = load_config("tiny", [*SETS, change])
        with pytest.raises(ValueError, match="another model config.*lora: checkpoint"):
            check_checkpoint_config(path, other)


def _meta_build(rank, world, base):
    """The CUDA path of scale/train.py on gloo: built on meta, LoRA added, sharded,
    materialised, base weights broadcast by rank 0; then one step."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from cogvx_mini.parallel import init_distributed
    from cogvx_mini.training.scale_config import load_config
    from cogvx_mini.weights.checkpoint import load_weights
    from scale.train import build

    config = load_config("tiny", ["lora.rank=4", f"train.init_from={base}"])
    model, _ = build(config, init_distributed(1, "cpu"), on_meta=True)
    expected = base_weights(model, load_weights(base))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    assert all(torch.equal(full[k], v) for k, v in expected.items())
    assert all(full[k].abs().sum() == 0 for k in full if ".lora_B." in k)  # B = 0 again
    assert all(full[k].abs().sum() > 0 for k in full if ".lora_A." in k)
    latents, text = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 8, 64)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == 16
    model(latents, text, torch.tensor([10, 900])).pow(2).mean().backward()
    torch.optim.AdamW(params, lr=1e-2).step()
    after = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    assert all(torch.equal(after[k], v) for k, v in expected.items())  # frozen under FSDP
    assert all(after[k].abs().sum() > 0 for k in after if ".lora_B." in k)


def test_scale_lora_on_the_meta_path_starts_from_the_base(tmp_path):
    run_gloo(_meta_build, 2, str(_tiny_base(tmp_path / "base.safetensors")))


# -- the benchmark -------------------------------------------------------------------------------


def test_bench_lora_smoke_on_cpu(tmp_path):
    from cogvx_mini.bench.lora import SIZES, main
    from cogvx_mini.transformer import count_parameters

    result = main(["--size", "tiny", "--device", "cpu", "--repeats", "2", "--out",
                   str(tmp_path / "lora.json")])  # fmt: skip
    rows = result["rows"]
    assert [r["run"] for r in rows] == ["LoRA r=4", "LoRA r=8", "full fine-tune"]
    assert all(len(r["times_s"]) == 2 and r["step_s"] > 0 for r in rows)
    counts = [r["trainable_parameters"] for r in rows]
    assert counts[0] < counts[1] < counts[2] == count_parameters(SIZES["tiny"][0])
    assert json.loads((tmp_path / "lora.json").read_text())["rows"][0]["rank"] == 4
