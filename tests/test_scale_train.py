"""scale/train.py end to end on the CPU: two gloo processes under torchrun, the toy world.

Three launches share one global batch of 8 per step and one schedule of 12 steps:
A) torchrun, 2 data-parallel ranks (FSDP over both), 12 steps;
S) one process, interrupted after step 6 (a checkpoint is written);
R) torchrun, 2 context-parallel ranks (dp 1 x cp 2), resuming S's checkpoint to step 12.
A's loss falls; S == A for steps 1-6 (FSDP == single process); R == A for steps 7-12 (resume is
exact, across a change of world size and of parallel layout, and CP training == data parallel).
"""

import json

import pytest
import scale_helpers
from scale_helpers import ROOT, torchrun

from cogvx_mini.training.scale_config import CONFIGS
from scale.train import check_checkpoint_config, latest_checkpoint

CONFIG = str(CONFIGS / "tiny.yaml")
COMMON = ["--config", CONFIG, "--data", "toy", "--set", "train.steps=12"]
COMMON += ["--set", "train.checkpoint_every=100", "--set", "data.toy_samples=16"]
COMMON += ["--set", "train.log_every=6", "--set", "optim.warmup_steps=3"]


def _losses(out) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_train")
    a, s = root / "a", root / "s"
    log_a = torchrun(2, *COMMON, "--out", str(a))
    torchrun(1, *COMMON, "--out", str(s), "--stop-after", "6")
    log_r = torchrun(2, *COMMON, "--out", str(s), "--set", "parallel.cp=2")
    return a, s, log_a.stdout + log_a.stderr, log_r.stdout + log_r.stderr


def test_loss_falls_and_logs_throughput(runs):
    a, _, log, _ = runs
    losses = _losses(a)
    assert len(losses) == 12
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    assert "dp=2 x cp=1" in log and "tokens/s" in log
    record = json.loads((a / "metrics.jsonl").read_text().splitlines()[5])
    assert record["samples_per_s"] > 0 and record["loss_by_t"]
    assert (a / "transformer.safetensors").is_file() and (
        a / "transformer_ema.safetensors"
    ).is_file()


def test_fsdp_on_two_ranks_equals_one_process(runs):
    a, s, _, _ = runs
    single = _losses(s)[:6]
    assert single == pytest.approx(_losses(a)[:6], rel=1e-4)


def test_resume_on_another_layout_continues_exactly(runs):
    a, s, _, log_r = runs
    assert "dp=1 x cp=2" in log_r and "resuming from" in log_r
    resumed = _losses(s)[6:]
    assert len(resumed) == 6
    assert resumed == pytest.approx(_losses(a)[6:], rel=1e-4)


def test_checkpoint_of_another_config_is_refused(runs):
    from cogvx_mini.training.scale_config import load_config

    _, s, _, _ = runs
    path = latest_checkpoint(s / "checkpoints")
    assert path.name == "step_00000012"
    assert not list((s / "checkpoints").glob(".tmp*"))  # saved atomically, nothing left over
    other = load_config(CONFIG, ["model.overrides.num_layers=3"])
    with pytest.raises(ValueError, match="another model config.*num_layers: checkpoint 2"):
        check_checkpoint_config(path, other)
    assert scale_helpers.ROOT == ROOT
