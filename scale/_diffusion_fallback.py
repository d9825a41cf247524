"""Minimal v-prediction pieces, used only while ``cogvx_mini.diffusion`` is not on this branch.

Same names and numerics as the library: scaled-linear betas, SNR shift
``a <- a / (s + (1 - s) a)``, rescale to zero terminal SNR, ``x_t`` and ``v`` targets, MSE.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    snr_shift_scale: float = 3.0

    @classmethod
    def cogvideox_2b(cls) -> NoiseSchedule:
        return cls(snr_shift_scale=3.0)

    @classmethod
    def cogvideox_5b(cls) -> NoiseSchedule:
        return cls(snr_shift_scale=1.0)

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        n = self.num_train_timesteps
        betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64)
        a = torch.cumprod(1 - betas**2, dim=0)
        a = a / (self.snr_shift_scale + (1 - self.snr_shift_scale) * a)
        s = a.sqrt()
        s0, sT = s[0].clone(), s[-1].clone()
        s = (s - sT) * s0 / (s0 - sT)
        return s**2


def _coefficients(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor):
    a = schedule.alphas_cumprod[t.long().cpu()].reshape(-1, *([1] * (like.ndim - 1)))
    a = a.to(like.device)
    return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)


def add_noise(schedule, x0, noise, t):
    sa, sb = _coefficients(schedule, t, x0)
    return sa * x0 + sb * noise


def v_target(schedule, x0, noise, t):
    sa, sb = _coefficients(schedule, t, x0)
    return sa * noise - sb * x0


def v_loss(prediction, target, reduce=True):
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    return per_sample.mean() if reduce else per_sample
