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


def asset_metadata(name: str) -> dict[str, str]:
    """The metadata stored in a shipped safetensors file (training settings, measured metrics)."""
    from safetensors import safe_open

    with safe_open(str(asset_path(name)), "pt") as f:
        return dict(f.metadata() or {})
