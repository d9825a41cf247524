"""One optimiser step, shared by every training loop (mini, VAE, ablations, ``scale/train.py``).

``train_step`` is the diffusion step of one batch: per-sample v-loss, a finite-loss guard, the
backward pass and :func:`optimizer_step`. Loops that accumulate gradients over micro-batches
(``scale/``) or add terms of their own (the VAE) call ``optimizer_step`` directly. A non-finite
loss or gradient norm raises :class:`NonFiniteLossError` *before* the weights change, so the
model, its EMA and the last checkpoint stay finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from cogvx_mini.training.ema import EMA
from cogvx_mini.training.objective import DiffusionBatch, Objective


class NonFiniteLossError(RuntimeError):
    """Training stopped on a non-finite loss (or gradient); the weights were not updated."""


def check_finite(step: int, **values: float) -> None:
    """Raise :class:`NonFiniteLossError` if a value of optimiser step ``step`` (0-based) is
    NaN or infinite; the message names the step (1-based, as logged) and the values."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"non-finite {what} at step {step + 1} (the last finite one was step {step})"
        )


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[nn.Parameter],
    lr: float,
    grad_clip: float,
    step: int,
    ema: EMA | None = None,
    loss: float = 0.0,
) -> float:
    """Set the learning rate, clip the gradients, step, zero them, update ``ema``.

    ``loss`` (already reduced over ranks) and the gradient norm are checked first: nothing is
    updated when either is non-finite. Returns the gradient norm before clipping.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    grad_norm = nn.utils.clip_grad_norm_(list(parameters), grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
        grad_norm = grad_norm.full_tensor()
    grad_norm = float(grad_norm)
    try:
        check_finite(step, loss=loss, grad_norm=grad_norm)
    except NonFiniteLossError:
        optimizer.zero_grad(set_to_none=True)
        raise
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(step)
    return grad_norm


def train_step(
    model: nn.Module,
    objective: Objective,
    batch: DiffusionBatch,
    optimizer: torch.optim.Optimizer,
    lr: float,
    grad_clip: float,
    step: int,
    ema: EMA | None = None,
) -> torch.Tensor:
    """One diffusion step on ``batch``; returns the per-sample losses ``[B]`` (detached)."""
    per_sample = objective.per_sample_loss(model, batch)
    loss = per_sample.mean()
    check_finite(step, loss=loss.item())  # before backward: a NaN graph is never differentiated
    loss.backward()
    optimizer_step(optimizer, model.parameters(), lr, grad_clip, step, ema, loss.item())
    return per_sample.detach()
