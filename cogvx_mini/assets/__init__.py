"""Small trained weights shipped with the library (safetensors), so chapters need no training."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent


def asset_path(name: str) -> Path:
    """Path of a shipped asset; raises ``FileNotFoundError`` naming the assets folder."""
    path = ASSETS / name
    if not path.is_file():
        raise FileNotFoundError(f"no asset {name!r} in {ASSETS}")
    return path
