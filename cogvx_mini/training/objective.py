"""The training objective: v-prediction on latents with CogVideoX's noise schedule.

Uses ``cogvx_mini.diffusion`` (zero-terminal-SNR schedule with the SNR shift, ``add_noise``,
``v_target``, ``v_loss``); nothing here re-derives the algebra.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cogvx_mini.diffusion import NoiseSchedule, add_noise, v_loss, v_target


@dataclass
class Objective:
    """``noisy_and_target(x0, noise, t) -> (x_t, v)``; ``loss(prediction, v) -> [B]`` (fp32)."""

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

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return v_loss(prediction, target, reduce=False)
