"""The learning-rate schedule of every training loop: linear warm-up, then a decay to a floor.

``lr(step)`` rises linearly over ``warmup`` steps to ``peak``, then follows ``decay`` (``cosine``,
``linear`` or ``constant``) down to ``min_ratio · peak`` at step ``total``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DECAYS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """``schedule(step) -> lr``: warm-up over ``warmup`` steps, then ``decay`` to the floor."""

    peak: float
    warmup: int
    total: int
    decay: str = "cosine"
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ValueError(f"decay: expected one of {DECAYS}, got {self.decay!r}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: expected a value in [0, 1], got {self.min_ratio}")
        if self.warmup < 0 or self.peak < 0:
            raise ValueError(f"expected warmup >= 0 and lr >= 0, got {self.warmup}, {self.peak}")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.decay == "constant":
            return self.peak
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1 - progress
        return self.peak * (self.min_ratio + (1 - self.min_ratio) * shape)
