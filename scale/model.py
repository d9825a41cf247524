"""Loading a cogvx_mini transformer state dict to fine-tune from (e.g. converted released
weights: ``cogvx_mini.transformer.transformer_state_dict_from_diffusers`` then
``cogvx_mini.checkpoint.save_weights``)."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def load_transformer_weights(model: nn.Module, path: str | Path, assign: bool = False) -> None:
    """Load a safetensors state dict into ``model``; a dict of another config fails with the
    first mismatching names and shapes. ``assign``: take the loaded tensors as the parameters
    (for a model built on the ``meta`` device)."""
    from cogvx_mini.checkpoint import load_weights

    state = load_weights(path)
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
            f"{path} holds weights of another transformer config: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(shapes)} of another shape (e.g. {shapes[:3]})"
        )
    model.load_state_dict(state, assign=assign)
