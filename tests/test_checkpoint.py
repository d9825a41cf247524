import os
import stat
from pathlib import Path

import pytest
import torch

from cogvx_mini.weights import checkpoint
from cogvx_mini.weights.checkpoint import (
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)


def test_saved_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        weights = save_weights({"w": torch.ones(2)}, tmp_path / "w.safetensors")
        ckpt = save_checkpoint({"step": 3}, tmp_path / "c.pt")
    finally:
        os.umask(umask)
    for path in (weights, ckpt):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert torch.equal(load_weights(weights)["w"], torch.ones(2))
    assert load_checkpoint(ckpt)["step"] == 3


def test_an_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint({"step": 1}, tmp_path / "c.pt")

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt  # as if the run were stopped mid-write

    monkeypatch.setattr(checkpoint, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.ones(3)}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_training_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    state = {
        "optimizer": opt.state_dict(),
        "rng": gen.get_state(),
        "losses": [1.0, 0.5],
        "pair": (1, 2),
        "name": "x",
        "none": None,
    }
    path = save_checkpoint(state, tmp_path / "state.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    back = load_checkpoint(path)
    assert back["losses"] == [1.0, 0.5] and back["pair"] == (1, 2) and back["none"] is None
    assert torch.equal(back["rng"], gen.get_state())
    assert list(back["optimizer"]["state"]) == [0, 1]  # integer keys survive
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][k], v)
    with pytest.raises(TypeError, match="bad.*expected tensors and JSON values"):
        save_checkpoint({"bad": object()}, tmp_path / "x.safetensors")


def test_truncated_files_are_named(tmp_path):
    weights = save_weights({"w": torch.ones(100)}, tmp_path / "w.safetensors")
    weights.write_bytes(weights.read_bytes()[:60])
    with pytest.raises(ValueError, match=f"{weights}.*damaged or truncated"):
        load_weights(weights)
    ckpt = save_checkpoint({"w": torch.ones(100)}, tmp_path / "c.safetensors")
    ckpt.write_bytes(ckpt.read_bytes()[:-50])
    with pytest.raises(ValueError, match=f"{ckpt}.*damaged or truncated"):
        load_checkpoint(ckpt)
