"""Argument checks for public entry points: each fails with ``"NAME: expected ..., got ..."``.

They check Python scalars only (never a whole tensor), so they cost nothing on a hot path. Each
``*_arg`` wraps a check as an ``argparse`` ``type=``: ``--steps 0`` then ends with argparse's usage
line and ``argument --steps: expected an integer >= 1, got 0``.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from pathlib import Path

SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes seeds in [0, 2**64)


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either bound optional); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = " <= ".join(str(b) for b in (low, "value", high) if b is not None)
        raise ValueError(f"{name}: expected an integer with {bounds}, got {value}")
    return value


def positive_int(name: str, value) -> int:
    """``value`` as an ``int >= 1``."""
    return integer(name, value, low=1)


def seed(name: str, value) -> int:
    """A generator seed: an integer in ``[0, 2**64)``."""
    return integer(name, value, low=0, high=SEED_LIMIT - 1)


def finite_float(name: str, value, low: float | None = None) -> float:
    """``value`` as a finite ``float`` (``>= low`` if given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low):
        what = "a finite number" + (f" >= {low}" if low is not None else "")
        raise ValueError(f"{name}: expected {what}, got {value}")
    return value


def prompt_list(name: str, prompts) -> list[str]:
    """A non-empty list (or tuple) of strings; one bare string is refused (a common slip)."""
    if isinstance(prompts, str) or not isinstance(prompts, list | tuple):
        raise TypeError(
            f"{name}: expected a list of strings, got {type(prompts).__name__}"
            + ("; wrap the prompt in a list" if isinstance(prompts, str) else "")
        )
    if not prompts:
        raise ValueError(f"{name}: expected at least one prompt, got an empty list")
    wrong = [p for p in prompts if not isinstance(p, str)]
    if wrong:
        raise TypeError(f"{name}: expected strings, got {wrong[0]!r} ({type(wrong[0]).__name__})")
    return list(prompts)


def output_file(name: str, path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """A file path with one of ``suffixes`` whose nearest existing folder is writable."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{name}: expected a path ending in {' or '.join(suffixes)}, got {path}")
    writable_folder(name, path.parent)
    return path


def writable_folder(name: str, folder: str | Path) -> Path:
    """``folder``, created if missing, once a probe file could be written there (``os.access``
    says yes to root everywhere, even in ``/proc``)."""
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(
            f"{name}: expected a writable folder, got {folder} ({err.strerror or err})"
        ) from None
    return folder


def path_inside(where: str, folder: Path, name: str) -> Path:
    """``folder / name`` for a relative ``name`` without ``..``: a data list may not name files
    outside its folder. ``where`` (``file:line``) leads the message."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(
            f"{where}: expected a path inside {folder}, got {name!r}: a data list may not name "
            "files outside its folder"
        )
    return folder / name


def read_jsonl(path: Path) -> list[tuple[str, object]]:
    """``(where, value)`` for each non-blank line of a JSON-lines file (``where`` is
    ``path:line``); a malformed line raises ``ValueError`` naming the file and the line."""
    import json

    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{number}: expected one JSON value per line, got {line[:80]!r} "
                    f"({err.msg})"
                ) from None
    return rows


def cli_type(check: Callable, convert: type = int, **kwargs) -> Callable[[str], object]:
    """An ``argparse`` ``type=`` that converts the text with ``convert`` then applies ``check``."""

    def parse(text: str):
        try:
            return check("value", convert(text), **kwargs)
        except (TypeError, ValueError) as err:
            message = str(err).removeprefix("value: ")
            if message.startswith(("invalid literal", "could not convert")):
                message = f"expected {'an integer' if convert is int else 'a number'}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    parse.__name__ = check.__name__  # argparse names the type in some messages
    return parse
