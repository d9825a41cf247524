import os
import stat

import pytest
import torch

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


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    path = save_checkpoint({"step": 1}, tmp_path / "c.pt")

    class Unpicklable:
        def __reduce__(self):
            raise KeyboardInterrupt  # as if the run were stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
