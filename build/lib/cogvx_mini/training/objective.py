"""The training objective: v-prediction on latents with CogVideoX's noise schedule.

Uses ``cogvx_mini.diffusion`` (zero-terminal-SNR schedule with the SNR shift, ``add_noise``,
``v_target``, ``v_loss``); nothing here re-derives the algebra.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cogvx_mini.diffusion import NoiseSchedule, add_noise, v_loss, v_target


@dataclass
class DiffusionBatch:
    """What one (micro-)batch trains on: clean latents ``x0`` and ``noise`` ``[B, C, T', h, w]``,
    text embeddings ``[B, L, D]`` and timesteps ``[B]`` (long)."""

    x0: torch.Tensor
    noise: torch.Tensor
    text: torch.Tensor
    timesteps: torch.Tensor

    def to(self, device: torch.device | str) -> DiffusionBatch:
        return DiffusionBatch(
            *(t.to(device) for t in (self.x0, self.noise, self.text)), self.timesteps.to(device)
        )


@dataclass
class Objective:
    """``noisy_and_target(x0, noise, t) -> (x_t, v)``; ``per_sample_loss(model, batch) -> [B]``."""

    schedule: NoiseSchedule

    @classmethod
    def for_preset(cls, preset: str) -> Objective:
        """The released 5B model's schedule for ``cogvideox_5b``, else the 2B one."""
        if preset == "cogvideox_5b":
            return cls(NoiseSchedule.cogvideox_5b())
        return cls(NoiseSchedule.cogvideox_2b())

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    def noisy_and_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return add_noise(self.schedule, x0, noise, t), v_target(self.schedule, x0, noise, t)

    def per_sample_loss(self, model: nn.Module, batch: DiffusionBatch) -> torch.Tensor:
        """v-prediction MSE of ``model(x_t, text, t)`` per sample ``[B]`` (in float32)."""
        x_t, target = self.noisy_and_target(batch.x0, batch.noise, batch.timesteps)
        prediction = model(x_t, batch.text, batch.timesteps)
        return v_loss(prediction.float(), target.float(), reduce=False)
