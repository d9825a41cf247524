"""Explicit uniform sampling of diffusion timesteps, and a per-timestep loss tracker.

The diffusion loss depends strongly on the timestep: near ``t = 0`` the model only removes a
little noise, near ``t = T`` it must invent the whole video. If every data-parallel rank draws
its timesteps independently, one step's global batch may, by chance, hold mostly easy or mostly
hard timesteps, and the loss (and gradient) jumps around. CogVideoX cuts the range into ``n``
intervals for ``n`` ranks and lets rank ``i`` sample only inside interval ``i``: every step then
covers the whole range once per rank, and the union stays uniform.

Here the cut is made in continuous time, ``t = floor(T (rank + u) / n)`` with ``u ~ U[0, 1)``, so
any world size works (not only divisors of ``T``) and the union is exactly uniform over
``0..T-1``; with ``n = 1`` it is plain uniform sampling. On one process, ``batch_timesteps``
gives sample ``i`` of a batch the interval of a virtual rank ``i mod n``.
"""

from __future__ import annotations

import math

import torch


def rank_interval(rank: int, world_size: int, num_train_timesteps: int = 1000) -> tuple[int, int]:
    """Timesteps ``[lo, hi)`` that ``rank`` can draw: ``floor(T r / n) .. ceil(T (r + 1) / n)``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"expected 0 <= rank < world_size, got rank {rank} of {world_size}")
    lo = num_train_timesteps * rank // world_size
    hi = -(-num_train_timesteps * (rank + 1) // world_size)  # ceiling division
    return lo, hi


def explicit_uniform_timesteps(
    batch: int,
    rank: int,
    world_size: int,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Timesteps ``[batch]`` (long) for ``rank`` of ``world_size``, inside its own interval."""
    rank_interval(rank, world_size, num_train_timesteps)  # validates
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    t = torch.floor(num_train_timesteps * (rank + u) / world_size).long()
    return t.clamp_(max=num_train_timesteps - 1)


def batch_timesteps(
    batch: int,
    world_size: int,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Timesteps ``[batch]`` where sample ``i`` plays rank ``i mod world_size`` (one process).

    ``world_size = 1`` is plain uniform sampling; ``world_size = batch`` stratifies the batch.
    """
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    ranks = torch.arange(batch) % world_size
    t = torch.floor(num_train_timesteps * (ranks + u) / world_size).long()
    return t.clamp_(max=num_train_timesteps - 1)


class TimestepLossTracker:
    """Running mean loss per timestep bucket: ``update(t [B], loss [B])``, then ``means()``.

    ``buckets`` equal-width buckets cover ``0..T-1``. The state is a plain dict, so it goes into a
    training checkpoint and resumes exactly.
    """

    def __init__(self, num_train_timesteps: int = 1000, buckets: int = 10):
        if not 1 <= buckets <= num_train_timesteps:
            raise ValueError(f"expected 1 <= buckets <= {num_train_timesteps}, got {buckets}")
        self.num_train_timesteps = num_train_timesteps
        self.buckets = buckets
        self.sums = torch.zeros(buckets, dtype=torch.float64)
        self.counts = torch.zeros(buckets, dtype=torch.long)

    def bucket_of(self, timesteps: torch.Tensor) -> torch.Tensor:
        return (timesteps.long().cpu() * self.buckets // self.num_train_timesteps).clamp(
            0, self.buckets - 1
        )

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Add per-sample ``losses`` ``[B]`` drawn at ``timesteps`` ``[B]``."""
        if timesteps.shape != losses.shape or timesteps.ndim != 1:
            raise ValueError(
                f"expected timesteps and losses of shape [B], got {tuple(timesteps.shape)} and "
                f"{tuple(losses.shape)}"
            )
        idx = self.bucket_of(timesteps)
        self.sums.index_add_(0, idx, losses.detach().double().cpu())
        self.counts.index_add_(0, idx, torch.ones_like(idx))

    def reset(self) -> None:
        """Forget what was seen (a new logging window)."""
        self.sums.zero_()
        self.counts.zero_()

    def means(self) -> torch.Tensor:
        """Mean loss per bucket ``[buckets]`` (NaN where a bucket saw nothing)."""
        return self.sums / self.counts.clamp(min=1).double() + torch.where(
            self.counts > 0, 0.0, math.nan
        )

    def edges(self) -> list[tuple[int, int]]:
        """Timestep range ``[lo, hi)`` of each bucket."""
        t, b = self.num_train_timesteps, self.buckets
        return [(t * i // b, t * (i + 1) // b) for i in range(b)]

    def state_dict(self) -> dict:
        return {"sums": self.sums.clone(), "counts": self.counts.clone(), "buckets": self.buckets}

    def load_state_dict(self, state: dict) -> None:
        if state["buckets"] != self.buckets:
            raise ValueError(f"expected {self.buckets} buckets, got {state['buckets']}")
        self.sums, self.counts = state["sums"].clone(), state["counts"].clone()
