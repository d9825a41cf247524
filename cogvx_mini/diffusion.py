"""CogVideoX's diffusion: a zero-terminal-SNR schedule, v-prediction, and DDIM with guidance.

Forward process. A clean latent ``x0`` and Gaussian noise ``eps`` mix as
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` where ``a_t`` (``alphas_cumprod[t]``) falls from ~1
at ``t = 0`` to exactly 0 at ``t = 999``; the signal-to-noise ratio is ``SNR_t = a_t / (1 - a_t)``.

The released schedule is built in three steps, in the order diffusers' ``CogVideoXDDIMScheduler``
applies them:

1. scaled-linear betas, ``sqrt(beta)`` linear from ``sqrt(0.00085)`` to ``sqrt(0.012)`` over 1000
   steps, and ``a_t = prod(1 - beta)``;
2. the SNR shift ``a <- a / (s + (1 - s) a)``, which divides every SNR by ``s`` (``s = 3`` for
   CogVideoX-2B, 1 = no shift for 5B): high-resolution video is redundant, so it needs more noise
   to be destroyed at a given step;
3. rescaling ``sqrt(a)`` linearly so the last step has ``a = 0`` (zero terminal SNR, Lin et al.):
   sampling then starts from pure noise, exactly what the model saw in training.

The model predicts ``v = sqrt(a) eps - sqrt(1 - a) x0``; at ``a = 0`` that is ``-x0``, which stays
learnable where an eps-prediction would carry no information about ``x0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from tqdm.auto import tqdm

from cogvx_mini.checks import finite_float, integer, positive_int

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepFn = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def scaled_linear_betas(beta_start: float, beta_end: float, steps: int) -> torch.Tensor:
    """Betas ``[steps]`` (float64) whose square roots are evenly spaced (latent diffusion's)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2


def shift_snr(alphas_cumprod: torch.Tensor, scale: float) -> torch.Tensor:
    """``a / (s + (1 - s) a)``: the same schedule with every SNR divided by ``scale``.

    With ``a' = a / (s + (1 - s) a)`` one gets ``1 - a' = s (1 - a) / (s + (1 - s) a)``, so
    ``a' / (1 - a') = a / (s (1 - a))``: the SNR shrinks by exactly ``s`` at every timestep.
    """
    if scale <= 0:
        raise ValueError(f"expected a positive SNR shift scale, got {scale}")
    return alphas_cumprod / (scale + (1 - scale) * alphas_cumprod)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and stretch ``sqrt(a)`` so that its last value is 0 and its first is unchanged."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root**2


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``a / (1 - a)`` per timestep (``inf`` where ``a = 1``)."""
    return alphas_cumprod / (1 - alphas_cumprod)


@dataclass(frozen=True)
class NoiseSchedule:
    """The discrete diffusion schedule; ``alphas_cumprod`` ``[num_train_timesteps]`` is float64.

    ``NoiseSchedule.cogvideox_2b()`` is the released 2B scheduler's configuration. The 5B
    model's scheduler config is reported with ``snr_shift_scale = 1.0`` (no shift) by copies of it
    in public repositories; it was not verified against the model folder itself here.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    snr_shift_scale: float = 3.0
    zero_terminal_snr: bool = True

    @classmethod
    def cogvideox_2b(cls) -> NoiseSchedule:
        return cls(snr_shift_scale=3.0)

    @classmethod
    def cogvideox_5b(cls) -> NoiseSchedule:
        return cls(snr_shift_scale=1.0)

    def to_diffusers_config(self) -> dict:
        """See :func:`cogvx_mini.weights.diffusers.schedule_to_diffusers_config`."""
        from cogvx_mini.weights.diffusers import schedule_to_diffusers_config

        return schedule_to_diffusers_config(self)

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        betas = scaled_linear_betas(self.beta_start, self.beta_end, self.num_train_timesteps)
        a = torch.cumprod(1 - betas, dim=0)
        a = shift_snr(a, self.snr_shift_scale)
        return rescale_zero_terminal_snr(a) if self.zero_terminal_snr else a

    def alpha(self, t: torch.Tensor | int, ndim: int = 1) -> torch.Tensor:
        """``a_t`` for timesteps ``t`` ``[B]``, shaped ``[B, 1, ..., 1]`` with ``ndim`` dims.

        Raises ``ValueError`` for a timestep outside ``[0, num_train_timesteps)``, fractional or
        NaN: indexing would wrap ``-1`` round to the last step or truncate ``2.5`` to 2.
        """
        a = self.alphas_cumprod[timestep_indices(t, self.num_train_timesteps)]
        return a.reshape(-1, *([1] * (ndim - 1))) if a.ndim else a


def timestep_indices(t: torch.Tensor | int, num_train_timesteps: int) -> torch.Tensor:
    """Timesteps ``t`` (``[B]`` or a scalar) as long indices on the CPU, each checked to be a
    whole number in ``[0, num_train_timesteps)``; only ``t`` is scanned, never a latent."""
    t = torch.as_tensor(t).detach()
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t: expected integer timesteps, got a {t.dtype} tensor")
    if t.is_floating_point() and not bool((t == t.round()).all()):  # NaN != NaN: caught too
        raise ValueError(f"t: expected whole-number timesteps, got {_summary(t)}")
    t = t.cpu().long() if t.is_floating_point() else t.cpu()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_train_timesteps):
        raise ValueError(
            f"t: expected timesteps in [0, {num_train_timesteps - 1}], got {_summary(t)}"
        )
    return t.long()


def _summary(t: torch.Tensor) -> str:
    values = t.flatten()[:8].tolist()
    return f"{values}{' ...' if t.numel() > 8 else ''}"


def _coefficients(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor):
    a = schedule.alpha(t, like.ndim).to(like.device)
    return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)


def add_noise(
    schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``; ``x0``, ``noise`` ``[B, ...]``, ``t`` ``[B]``."""
    sa, sb = _coefficients(schedule, t, x0)
    return sa * x0 + sb * noise


def v_target(
    schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The velocity ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0`` ``[B, ...]`` the model learns."""
    sa, sb = _coefficients(schedule, t, x0)
    return sa * noise - sb * x0


def x0_from_v(
    schedule: NoiseSchedule, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Clean sample from a noisy one and its velocity: ``x0 = sqrt(a) x_t - sqrt(1 - a) v``."""
    sa, sb = _coefficients(schedule, t, x_t)
    return sa * x_t - sb * v


def eps_from_v(
    schedule: NoiseSchedule, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Noise from a noisy sample and its velocity: ``eps = sqrt(1 - a) x_t + sqrt(a) v``."""
    sa, sb = _coefficients(schedule, t, x_t)
    return sb * x_t + sa * v


def v_loss(prediction: torch.Tensor, target: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """Mean squared error of a v-prediction: a scalar, or ``[B]`` per sample if not ``reduce``.

    An error ``dv`` in ``v`` is an error ``sqrt(1 - a) dv`` in ``x0``, so this equals the SAT
    reference's x0-space loss weighted by ``1 / (1 - a)`` ("v-weighting").
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"expected prediction and target of one shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    return per_sample.mean() if reduce else per_sample


def ddim_timesteps(
    steps: int, num_train_timesteps: int = 1000, spacing: str = "trailing"
) -> torch.Tensor:
    """The ``steps`` timesteps ``[steps]`` a sampler visits, from high noise down.

    ``"trailing"`` (CogVideoX's): ``round(arange(T, 0, -T / steps)) - 1``, so the first step is
    always ``T - 1`` (pure noise under zero terminal SNR). ``"leading"`` (older DDIM setups):
    ``arange(steps) * (T // steps)`` reversed, e.g. 980, 960, ..., 0 for 50 steps, which never
    visits ``T - 1``. Both as in diffusers (``steps_offset = 0``).
    """
    integer("steps", steps, 1, num_train_timesteps)
    if spacing == "leading":
        return (torch.arange(steps) * (num_train_timesteps // steps)).flip(0)
    if spacing != "trailing":
        raise ValueError(f'spacing: expected "trailing" or "leading", got {spacing!r}')
    ratio = num_train_timesteps / steps
    points = torch.arange(steps, dtype=torch.float64) * ratio
    return (torch.round(num_train_timesteps - points) - 1).long()


def guidance_scale(guidance: float, t: int, steps: int, dynamic: bool = False) -> float:
    """Classifier-free guidance scale at timestep ``t``; constant unless ``dynamic``.

    The dynamic schedule is the one diffusers' CogVideoX pipeline uses,
    ``1 + g (1 - cos(pi ((steps - t) / steps) ** 5)) / 2``, with ``t`` the training timestep
    (0..999) as there, not the step index; kept as written for equality with the reference.
    """
    if not dynamic:
        return guidance
    return 1 + guidance * (1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2


def ddim_step(
    schedule: NoiseSchedule, v: torch.Tensor, t: int, x_t: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM step from ``x_t`` ``[B, ...]``: ``(x_prev, predicted x0)``.

    The previous timestep is ``t - T // steps`` as in diffusers (``a = 1`` below 0).
    ``x_prev = sqrt(1 - a_prev) eps + sqrt(a_prev) x0`` written through ``x_t`` and ``x0``:
    ``x_prev = c x_t + (sqrt(a_prev) - sqrt(a_t) c) x0`` with ``c = sqrt((1 - a_prev)/(1 - a_t))``.
    """
    integer("steps", steps, 1, schedule.num_train_timesteps)
    integer("t", t, 0, schedule.num_train_timesteps - 1)
    prev = t - schedule.num_train_timesteps // steps
    a_t = schedule.alphas_cumprod[t]
    a_prev = schedule.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0, dtype=a_t.dtype)
    x0 = a_t.sqrt().to(x_t.dtype) * x_t - (1 - a_t).sqrt().to(x_t.dtype) * v
    c = ((1 - a_prev) / (1 - a_t)).sqrt()
    d = a_prev.sqrt() - a_t.sqrt() * c
    return c.to(x_t.dtype) * x_t + d.to(x_t.dtype) * x0, x0


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    steps: int = 50,
    guidance: float = 6.0,
    *,
    uncond_fn: ModelFn | None = None,
    schedule: NoiseSchedule | None = None,
    dynamic_cfg: bool = False,
    progress: bool = True,
    return_trajectory: bool = False,
    spacing: str = "trailing",
    callback: StepFn | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Sample ``x0`` ``[B, ...]`` from pure ``noise`` ``[B, ...]`` with DDIM and guidance.

    ``model_fn(x_t, t)`` returns the conditional v-prediction (``t`` is ``[B]`` long);
    ``uncond_fn(x_t, t)`` the unconditional one. With ``uncond_fn`` each step uses
    ``v_u + g (v_c - v_u)``; without it, the conditional prediction alone, unless ``model_fn``
    returns the pair ``(v_c, v_u)`` itself (:func:`cfg_predictor`: one batched call). With
    ``return_trajectory`` also returns ``[x_T, x_{t_1}, ..., x_0]``. ``spacing`` picks the
    timesteps (:func:`ddim_timesteps`); ``callback(i, t, x_prev, x0)`` is called after step ``i``
    with the new sample and that step's predicted clean sample (to watch the sampler).
    """
    schedule = schedule or NoiseSchedule.cogvideox_2b()
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim < 2:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise: expected a floating tensor [B, ...], got {got}")
    positive_int("steps", steps)
    finite_float("guidance", guidance, low=0.0)
    x = noise
    trajectory = [x]
    timesteps = ddim_timesteps(steps, schedule.num_train_timesteps, spacing)
    for i, t in enumerate(tqdm(timesteps.tolist(), desc="DDIM", disable=not progress, leave=False)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        v = model_fn(x, t_batch)
        v, v_uncond = v if isinstance(v, tuple) else (v, None)
        if uncond_fn is not None:
            v_uncond = uncond_fn(x, t_batch)
        if v_uncond is not None:
            v = v_uncond + guidance_scale(guidance, t, steps, dynamic_cfg) * (v - v_uncond)
        x, x0 = ddim_step(schedule, v, t, x, steps)
        trajectory.append(x)
        if callback is not None:
            callback(i, t, x, x0)
    return (x, trajectory) if return_trajectory else x


def cfg_predictor(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    text: torch.Tensor,
    negative: torch.Tensor,
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A ``model_fn`` for :func:`ddim_sample` that returns ``(v_c, v_u)`` from *one* call of
    ``model(x [2B, ...], text [2B, L, D], t [2B])``: the conditional and unconditional halves
    stacked on the batch. Equal to two calls up to float rounding, and faster on a GPU (one
    launch of every kernel, twice the rows per matmul). ``text`` and ``negative``: ``[B, L, D]``.
    """
    if text.shape != negative.shape:
        raise ValueError(
            f"negative: expected the shape of text {tuple(text.shape)}, got {tuple(negative.shape)}"
        )
    both = torch.cat([text, negative])

    def predict(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_cond, v_uncond = model(torch.cat([x, x]), both, torch.cat([t, t])).float().chunk(2)
        return v_cond, v_uncond

    return predict
