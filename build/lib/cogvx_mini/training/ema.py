"""The exponential moving average of a model's weights: what a diffusion run ships.

One design for a plain module and for FSDP-sharded parameters: the EMA keeps an fp32 *shadow*
tensor per parameter, with the parameter's own layout (a sharded DTensor stays sharded, and each
rank averages only its local shard). ``state_dict()`` is what checkpoints hold; ``copy_to(model)``
writes the averages into a model for sampling or export.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """``shadow ← d · shadow + (1 - d) · param`` after each step, ``d = min(decay, (1+s)/(10+s))``.

    The warm-up of the decay keeps early averages from being dominated by the random init.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay: expected a value in [0, 1), got {decay}")
        self.decay = decay
        self.params = dict(model.named_parameters())
        self.shadow = {k: p.detach().clone().float() for k, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the current parameters after optimiser step ``step`` (0-based)."""
        d = min(self.decay, (1 + step) / (10 + step))
        for k, p in self.params.items():
            _local(self.shadow[k]).lerp_(_local(p).float(), 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            missing, extra = set(self.shadow) - set(state), set(state) - set(self.shadow)
            raise ValueError(f"EMA state of another model: missing {missing}, unexpected {extra}")
        for k, v in state.items():
            _local(self.shadow[k]).copy_(_local(v))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averages into ``model``'s parameters (same architecture); returns it."""
        for k, p in model.named_parameters():
            _local(p).copy_(_local(self.shadow[k]))
        return model

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A frozen copy of ``model`` (buffers included) holding the averaged weights."""
        return self.copy_to(copy.deepcopy(model)).eval().requires_grad_(False)
