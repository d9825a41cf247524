"""Weights to fine-tune from (``train.init_from``): a cogvx_mini transformer state dict
(safetensors, e.g. written by ``cogvx_mini.weights.checkpoint.save_weights``), or a released model's
diffusers folder (``transformer/`` inside, converted by ``cogvx_mini.weights``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def read_init_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The cogvx_mini state dict at ``path``: a safetensors file or a diffusers folder."""
    path = Path(path)
    if path.is_dir():
        from cogvx_mini.weights import transformer_from_diffusers

        return transformer_from_diffusers(path).state_dict()
    from cogvx_mini.weights.checkpoint import load_weights

    return load_weights(path)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` naming the first mismatches if ``state`` is not ``model``'s."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in ours.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} holds weights of another transformer config: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(shapes)} of another shape (e.g. {shapes[:3]})"
        )


def load_transformer_weights(model: nn.Module, path: str | Path) -> None:
    """Load the weights at ``path`` (see :func:`read_init_weights`) into ``model``."""
    state = read_init_weights(path)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
