"""Checkpoints that survive interruption and load no code: safetensors + JSON, written atomically.

A rename within one directory is atomic on POSIX, so a reader (or a resumed run) sees either the
old checkpoint or the new one, never half of one. Training state (model, optimiser, EMA, RNG
states, losses) is a nested mapping of tensors and JSON values: :func:`save_checkpoint` stores
its tensors flat in one safetensors file and the structure around them as JSON in the file's
metadata. Nothing is unpickled on load, so a run folder from elsewhere cannot run code.

Folders written by others (``torch.distributed.checkpoint``, whose ``.metadata`` is a pickle) are
guarded by :func:`file_digests`: SHA-256 of every file, recorded at save time and checked with
:func:`check_digests` before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

STATE_KEY = "cogvx_mini.state"  # metadata entry holding the JSON structure of a checkpoint


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


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files a killed :func:`_atomic_write` of ``path`` left behind."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _child(key: str, name: object) -> str:
    return f"{key}/{name}" if key else str(name)


def _flatten(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON structure of ``value`` with each tensor replaced by ``{"tensor": key}``."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"tensor": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"dict": {k: _flatten(v, _child(key, k), tensors) for k, v in value.items()}}
        # Optimiser state is keyed by parameter index: keep the keys' types.
        items = [[k, _flatten(v, _child(key, k), tensors)] for k, v in value.items()]
        return {"items": items}
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_flatten(v, _child(key, i), tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"checkpoint entry {key!r}: expected tensors and JSON values, got {value!r}")


def _unflatten(node: dict, tensors) -> Any:
    ((kind, body),) = node.items()
    if kind == "tensor":
        return tensors.get_tensor(body)
    if kind == "dict":
        return {k: _unflatten(v, tensors) for k, v in body.items()}
    if kind == "items":
        return {k: _unflatten(v, tensors) for k, v in body}
    if kind in ("list", "tuple"):
        items = [_unflatten(v, tensors) for v in body]
        return items if kind == "list" else tuple(items)
    return body


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save ``state`` (nested dicts/lists of tensors and JSON values) atomically as safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_flatten(state, "", tensors))
    metadata = {STATE_KEY: structure}
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _open_safetensors(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as err:
        raise ValueError(f"{what} {path} is damaged or truncated ({err})") from err


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors on the CPU)."""
    path = Path(path)
    with _open_safetensors(path, "checkpoint") as f:
        structure = (f.metadata() or {}).get(STATE_KEY)
        if structure is None:
            raise ValueError(f"checkpoint {path} was not written by save_checkpoint")
        try:
            return _unflatten(json.loads(structure), f)
        except SafetensorError as err:
            raise ValueError(f"checkpoint {path} is damaged or truncated ({err})") from err


def save_weights(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Save a flat state dict as safetensors, atomically (the format of shipped weights)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file written by :func:`save_weights`; a damaged file is named."""
    path = Path(path)
    with _open_safetensors(path, "weights") as f:
        try:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        except SafetensorError as err:
            raise ValueError(f"weights {path} are damaged or truncated ({err})") from err


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored with a safetensors file (``{}`` if none)."""
    with _open_safetensors(Path(path), "weights") as f:
        return dict(f.metadata() or {})


def file_digests(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``: ``{relative path: hex digest}``."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = sha256_of(p)
    return out


def check_digests(folder: str | Path, expected: dict[str, str]) -> list[str]:
    """What differs between ``folder`` and the ``expected`` digests (empty: intact)."""
    folder = Path(folder)
    problems = []
    for name, digest in expected.items():
        p = folder / name
        if not p.is_file():
            problems.append(f"{name} is missing")
        elif sha256_of(p) != digest:
            problems.append(f"{name} differs from what was saved")
    return problems


def sha256_of(path: Path) -> str:
    """SHA-256 (hex) of one file."""
    return hash_file_into(hashlib.sha256(), path).hexdigest()


def hash_file_into(digest, path: str | Path):
    """Feed the bytes of the file at ``path`` to ``digest`` (a hashlib object) in 16 MiB blocks."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (the temporary-file-then-rename of the checkpoints)."""
    return _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write plain ``tensors`` to a ``.safetensors`` file at ``path`` atomically."""
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp))
