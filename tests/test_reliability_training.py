"""Issue 15, training items: a run never loses a good state, never ships a worse model, never
runs code from a run folder, and refuses bad settings with a message naming them."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import scale_helpers
import torch
from test_train import CFG, random_dataset, tiny_model

from cogvx_mini.data.toyworld import chance_level
from cogvx_mini.training import train as mini
from cogvx_mini.training.scale_config import CONFIGS, load_config
from cogvx_mini.training.step import NonFiniteLossError
from cogvx_mini.training.vae_train import STATE_NAME
from cogvx_mini.weights.checkpoint import load_checkpoint, load_weights, save_weights

ROOT = scale_helpers.ROOT
TINY = str(CONFIGS / "tiny.yaml")


def scale_train(out, *sets, timeout=300, extra=()):
    """``python scale/train.py`` (one process) on the toy world; returns the CompletedProcess."""
    cmd = [
        sys.executable,
        str(ROOT / "scale" / "train.py"),
        "--config",
        TINY,
        "--data",
        "toy",
        "--out",
        str(out),
        "--set",
        "data.toy_samples=8",
        *extra,
    ]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


# 1. scale/train.py stops on a non-finite loss, keeps the last finite checkpoint, exits non-zero


def test_scale_stops_on_a_non_finite_loss(tmp_path):
    out = tmp_path / "run"
    sets = ["optim.lr=1e6", "train.steps=8", "train.checkpoint_every=1", "train.log_every=1"]
    proc = scale_train(out, *sets, "train.keep_checkpoints=2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "non-finite loss" in proc.stderr and "at step" in proc.stderr
    assert "done" not in proc.stdout
    assert not (out / "transformer_ema.safetensors").exists()  # nothing exported
    logged = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    failed_at = int(proc.stderr.split("at step ")[1].split()[0])
    assert failed_at == len(logged) + 1  # the step that failed named, nothing after it ran
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept[-1] == f"step_{failed_at - 1:08d}"


# 3 / 11. checkpoints are verified before loading; a damaged newest one falls back to an older


def test_scale_resumes_from_the_newest_intact_checkpoint(tmp_path):
    out = tmp_path / "run"
    sets = ["train.steps=4", "train.checkpoint_every=2"]
    assert scale_train(out, *sets, extra=["--no-export"]).returncode == 0
    ckpts = out / "checkpoints"
    newest = ckpts / "step_00000004"
    meta = json.loads((newest / "meta.json").read_text())
    assert set(meta["digests"]) >= {".metadata"}
    shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:100])  # a half-written shard
    (ckpts / ".tmp_step_00000006").mkdir()  # a save that was killed
    proc = scale_train(out, "train.steps=6", "train.checkpoint_every=2", extra=["--no-export"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipping checkpoint" in proc.stdout and "step_00000004" in proc.stdout
    assert "resuming from" in proc.stdout and "step_00000002" in proc.stdout
    assert not (ckpts / ".tmp_step_00000006").exists()
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_scale_gives_up_on_a_process_group_that_never_forms(tmp_path):
    code = (
        "import sys, time; sys.argv[0] = 'scale/train.py'; import scale.train as t\n"
        "t.init_distributed = lambda *a, **k: time.sleep(600)\n"
        f"t.main(['--config', {TINY!r}, '--data', 'toy', '--out', {str(tmp_path)!r},"
        " '--init-timeout', '2'])\n"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 1
    assert "did not form within 2 s" in proc.stderr and "MASTER_ADDR" in proc.stderr
    assert time.perf_counter() - start < 200


# 4 / 11. bad config values fail early, naming the key


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.keep_checkpoints=0", "train.keep_checkpoints"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints"),
        ("optim.ema_decay=2", "optim.ema_decay"),
        ("optim.min_lr_ratio=-5", "optim.min_lr_ratio"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("data.toy_samples=0", "data.toy_samples"),
    ],
)
def test_bad_scale_config_values_are_refused(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(TINY, [override])


def test_a_cache_of_another_text_length_is_refused(tmp_path):
    from scale.train import load_dataset

    config = load_config(TINY)
    tcfg = config.transformer_config()
    shard = {"latents/a": torch.zeros(16, 2, 4, 4), "text/a": torch.zeros(5, tcfg.text_dim)}
    save_weights(shard, tmp_path / "shard_00000.safetensors")
    row = {"key": "a", "caption": "x", "latent_shape": [16, 2, 4, 4]}
    (tmp_path / "shard_00000.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="data.text_length.*5 tokens"):
        load_dataset(str(tmp_path), config, tcfg)


# 2. --ship replaces the shipped weights only with a finished run, and says what it replaces


def test_steps_zero_fails_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(mini, "ASSETS", tmp_path / "assets")
    with pytest.raises(SystemExit, match="steps: expected a positive integer, got 0"):
        mini.main(["--steps", "0", "--ship", "--clips", "2", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "assets").exists() and not (tmp_path / "run").exists()


def test_a_laptop_world_run_is_not_shipped_and_bad_counts_are_refused(tmp_path, capsys):
    out = ["--clips", "2", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        mini.main(["--world", "laptop", "--ship", *out])
    assert "the shipped model is of the full world" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mini.main(["--judge-prompts", "-1", *out])
    assert "--judge-prompts: expected a count >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_judge_prompts_judge_the_exported_weights_and_log_it(tmp_path):
    import json

    out = tmp_path / "run"
    args = ["--world", "laptop", "--clips", "2", "--steps", "2", "--batch-size", "2"]
    mini.main([*args, "--judge-prompts", "2", "--out", str(out)])
    judged = json.loads((out / "train_log.json").read_text())["judged"]
    assert judged["prompts"] == 2 and 0.0 <= judged["judge"] <= 1.0
    laptop = mini.WORLDS["laptop"]  # the chance level of the world it trained on, not the full
    assert judged["chance"] == chance_level(2, frames=laptop.frames, **laptop.scene_options())
    assert judged["chance"] != chance_level(2, frames=laptop.frames)


def test_a_recipe_gives_its_arguments_and_later_ones_override_them():
    laptop = mini.parse_args(["--recipe", "laptop"])
    assert (laptop.world, laptop.batch_size, laptop.steps, laptop.lr) == ("laptop", 32, 4000, 4e-3)
    shorter = mini.parse_args(["--recipe", "laptop", "--steps", "7", "--out", "x"])
    assert (shorter.steps, shorter.world, str(shorter.out)) == (7, "laptop", "x")
    assert mini.parse_args([]).world == "full"


def test_a_shorter_text_length_trains_on_embeddings_of_that_length(tmp_path):
    out = tmp_path / "run"
    args = ["--world", "laptop", "--clips", "2", "--steps", "1", "--batch-size", "2"]
    mini.main([*args, "--model", "max_text_len=8", "--out", str(out)])  # refused before the fix
    assert load_checkpoint(out / mini.CACHE_NAME)["empty_text"].shape == (8, 64)
    default, short = (mini.cache_key(2, mini.WORLDS["full"], None, s) for s in [(32, 64), (8, 64)])
    assert default != short and "text_shape" not in default  # older caches stay valid


def test_the_laptop_world_has_one_object_and_its_own_cache_key():
    captions = [caption for _, caption in mini.toy_clips(20, (9,), 32, 32, max_objects=1)]
    assert all(" while " not in c for c in captions)
    assert any(" while " in c for _, c in mini.toy_clips(20, (9,), 32, 32))
    full, laptop = (mini.cache_key(4, mini.WORLDS[w], None) for w in ("full", "laptop"))
    assert full != laptop and "max_objects" not in full  # older full-world caches stay valid
    assert {"colours", "sizes", "bucket_frames"}.isdisjoint(full)


def test_the_laptop_world_draws_only_its_colours_and_sizes_at_its_length(tmp_path):
    world = mini.WORLDS["laptop"]
    clips = list(mini.toy_clips(40, world.lengths, 32, 32, **world.scene_options()))
    words = [caption.split() for _, caption in clips]
    assert {w[2] for w in words} == set(world.colours) and {w[1] for w in words} == {"large"}
    assert {video.shape[1] for video, _ in clips} == {13}
    mini.main(
        ["--world", "laptop", "--clips", "3", "--steps", "1", "--batch-size", "2"]
        + ["--out", str(tmp_path)]
    )
    dataset = mini.LatentDataset.from_state_dict(load_checkpoint(tmp_path / mini.CACHE_NAME))
    assert {c.bucket.frames for c in dataset.clips} == {13}  # kept whole, not cut to 9
    assert {c.mean.shape[1] for c in dataset.clips} == {4}  # 1 + 12 / 4 latent frames


def test_ship_only_a_finished_run_and_say_what_is_replaced(tmp_path):
    target = save_weights({"w": torch.zeros(2)}, tmp_path / "shipped.safetensors", {"steps": "9"})
    partial = save_weights({"w": torch.ones(2)}, tmp_path / "new.safetensors", {"steps": "3"})
    lines = []
    assert not mini.ship(partial, target, finished=False, log=lines.append)
    assert torch.equal(load_weights(target)["w"], torch.zeros(2))
    assert "not shipped" in lines[-1]
    assert mini.ship(partial, target, finished=True, log=lines.append)
    assert torch.equal(load_weights(target)["w"], torch.ones(2))
    assert any("steps: 9 -> 3" in line for line in lines)


# 3 / 9. run state without pickle; resume and cache checks; save on SIGINT


def test_mini_run_state_loads_without_torch_load(tmp_path, monkeypatch):
    data = random_dataset()
    mini.train(tiny_model(), data, CFG, tmp_path, progress=False, stop_at=5)

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called on a run folder")

    monkeypatch.setattr(torch, "load", no_pickle)
    resumed = mini.train(tiny_model(), data, CFG, tmp_path, progress=False)
    assert resumed.step == CFG.steps
    assert (tmp_path / mini.CHECKPOINT_NAME).read_bytes()[8:9] == b"{"  # safetensors


def test_resume_with_another_model_says_so(tmp_path):
    from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

    data = random_dataset()
    mini.train(tiny_model(), data, CFG, tmp_path, progress=False, stop_at=5)
    other = CogVideoXTransformer(
        TransformerConfig.mini(num_layers=2, num_heads=2, head_dim=16, time_embed_dim=32)
    )
    with pytest.raises(ValueError, match="holds another model.*new --out folder"):
        mini.train(other, data, CFG, tmp_path, progress=False)


def test_sigint_saves_a_checkpoint_then_stops(tmp_path):
    def interrupt(step, loss):
        if step == 8:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the shell started us in background
    result = mini.train(
        tiny_model(), random_dataset(), CFG, tmp_path, progress=False, on_step=interrupt
    )
    assert result.interrupted and result.step == 8
    assert load_checkpoint(tmp_path / mini.CHECKPOINT_NAME)["step"] == 8
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_stale_temporary_checkpoints_are_removed(tmp_path):
    stale = tmp_path / f".{mini.CHECKPOINT_NAME}.abc123.tmp"
    stale.write_bytes(b"half")
    mini.train(tiny_model(), random_dataset(), CFG, tmp_path, progress=False, stop_at=1)
    assert not stale.exists()


def test_latent_cache_is_keyed_by_what_made_it(tmp_path):
    built = []

    def build():
        built.append(1)
        return random_dataset(4)

    a = {"clips": 4, "lengths": [9], "vae_sha256": "a"}
    mini.cached_dataset(tmp_path, a, build)
    mini.cached_dataset(tmp_path, a, build)
    assert len(built) == 1  # reused
    b = dict(a, clips=8)
    mini.cached_dataset(tmp_path, b, build)
    assert len(built) == 2  # other clips: encoded again
    (tmp_path / mini.CHECKPOINT_NAME).write_bytes(b"")  # a run trained on that cache
    with pytest.raises(SystemExit, match="new --out folder"):
        mini.cached_dataset(tmp_path, a, build)


def test_non_finite_loss_is_caught_before_the_weights_change(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward = model.forward
    model.forward = lambda *a: forward(*a) * torch.inf
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        mini.train(model, random_dataset(), CFG, tmp_path, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# 8. vae_train: a NaN stops it, other settings are refused, identical runs are identical


VAE_ARGS = [
    "--steps",
    "2",
    "--batch",
    "1",
    "--frames",
    "5",
    "--size",
    "32",
    "--crop",
    "16",
    "--pool",
    "2",
    "--save-every",
    "1",
    "--eval-videos",
    "1",
]


def test_vae_train_nan_other_settings_and_seeding(tmp_path):
    from cogvx_mini.training import vae_train

    with pytest.raises(SystemExit, match="non-finite.*nothing exported"):
        vae_train.main([*VAE_ARGS, "--steps", "4", "--lr", "1e6", "--out", str(tmp_path / "nan")])
    assert not (tmp_path / "nan" / "vae_mini.safetensors").exists()
    for run in ("a", "b"):
        vae_train.main([*VAE_ARGS, "--steps", "1", "--out", str(tmp_path / run)])
    a, b = (load_weights(tmp_path / r / "vae_mini.safetensors") for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same from step 1
    with pytest.raises(SystemExit, match="other settings.*lr"):
        vae_train.main([*VAE_ARGS, "--lr", "5e-4", "--out", str(tmp_path / "a")])
    assert load_checkpoint(tmp_path / "a" / STATE_NAME)["step"] == 1
