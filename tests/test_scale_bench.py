"""cogvx_mini/bench/scale.py's CPU smoke mode, and loading released weights into a sharded model."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from scale_helpers import ROOT, run_gloo

from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig
from cogvx_mini.weights.checkpoint import save_weights
from cogvx_mini.weights.loading import load_transformer_weights


def test_bench_cpu_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "cogvx_mini.bench", "scale", "--device", "cpu"]
    cmd += ["--steps", "2", "--warmup", "1", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "s/step" in run.stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "step" and len(result["times_s"]) == 2
    assert result["time_per_step_s"] > 0 and result["tokens_per_sample"] == 3 * 2 * 2 + 8


def _config(**overrides):
    return TransformerConfig.mini(**{"num_layers": 2, "num_heads": 4, "head_dim": 16, **overrides})


def test_weights_of_another_config_are_refused(tmp_path):
    torch.manual_seed(0)
    source = CogVideoXTransformer(_config())
    path = save_weights(source.state_dict(), tmp_path / "w.safetensors")
    same = CogVideoXTransformer(_config())
    load_transformer_weights(same, path)
    for k, v in source.state_dict().items():
        assert torch.equal(same.state_dict()[k], v)
    with pytest.raises(ValueError, match=r"another transformer config: 20 missing .*blocks\.2"):
        load_transformer_weights(CogVideoXTransformer(_config(num_layers=3)), path)
    with pytest.raises(ValueError, match="of another shape"):
        load_transformer_weights(CogVideoXTransformer(_config(text_dim=32)), path)


def _sharded_load(rank, world, path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    from cogvx_mini.parallel import apply_fsdp, load_full_state_dict, materialize
    from cogvx_mini.weights.checkpoint import load_weights

    with torch.device("meta"):
        model = CogVideoXTransformer(_config())
    assert apply_fsdp(model, init_device_mesh("cpu", (world,)), "fp32") is model  # in place
    materialize(model, torch.device("cpu"), seed=0)
    shard = next(model.parameters())
    assert shard.to_local().shape[0] * world == shard.shape[0]  # really sharded
    # The benchmark's initialisation does not depend on the sharding.
    with torch.device("meta"):
        whole = CogVideoXTransformer(_config())
    materialize(whole, torch.device("cpu"), seed=0)
    drawn = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    for k, v in whole.state_dict().items():
        assert torch.equal(drawn[k], v), k
    load_full_state_dict(model, load_weights(path) if rank == 0 else {})
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    if rank == 0:
        expected = load_weights(path)
        assert sorted(full) == sorted(expected)  # the plain model's names, no prefix
        for k, v in full.items():
            assert torch.equal(v, expected[k]), k
    dist.barrier()


def test_released_weights_load_into_the_sharded_model(tmp_path):
    """The CUDA path of train.py: meta model, sharded, rank 0 reads the file and broadcasts."""
    torch.manual_seed(1)
    path = save_weights(CogVideoXTransformer(_config()).state_dict(), tmp_path / "w.safetensors")
    run_gloo(_sharded_load, 2, str(path))


def test_init_from_a_diffusers_folder(tmp_path):
    """``train.init_from`` may name a released model's folder (diffusers layout)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    small = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4)
    small.update(time_embed_dim=24, text_embed_dim=20, num_layers=2, max_text_seq_length=7)
    reference = diffusers.CogVideoXTransformer3DModel(**small).eval()
    reference.save_pretrained(tmp_path / "transformer")
    config = TransformerConfig.from_diffusers_config(dict(reference.config))
    model = CogVideoXTransformer(config)
    load_transformer_weights(model, tmp_path)
    latents = torch.randn(1, 4, 2, 4, 6)
    text = torch.randn(1, 7, 20)
    t = torch.tensor([300])
    with torch.no_grad():
        ours = model(latents, text, t)
        theirs = reference(latents.transpose(1, 2), text, t, return_dict=False)[0].transpose(1, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_wrong_init_weights_stop_every_rank(tmp_path):
    """Rank 0 reads ``train.init_from``; its error reaches the other rank instead of a hang."""
    path = save_weights(CogVideoXTransformer(_config(num_layers=3)).state_dict(), tmp_path / "w")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    cmd += ["-m", "cogvx_mini.bench", "scale", "--device", "cpu", "--set"]
    cmd += [f"train.init_from={path}", "--steps", "1", "--warmup", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert run.returncode != 0
    assert run.stderr.count("another transformer config") >= 2, run.stderr[-3000:]
