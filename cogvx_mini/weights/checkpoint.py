"""Checkpoints that survive interruption: write to a temporary file, then rename over the target.

A rename within one directory is atomic on POSIX, so a reader (or a resumed run) sees either the
old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600 (and a writer may recreate the file): give it the usual mode.
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save picklable training state (model, optimiser, step, RNG) atomically via torch.save."""
    return _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def save_weights(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Save a flat state dict as safetensors, atomically (the format of shipped weights)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file written by :func:`save_weights`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    return load_file(path)
