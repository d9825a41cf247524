import math

import pytest
import torch

from cogvx_mini.diffusion import (
    NoiseSchedule,
    add_noise,
    ddim_sample,
    ddim_timesteps,
    eps_from_v,
    guidance_scale,
    scaled_linear_betas,
    shift_snr,
    snr,
    v_loss,
    v_target,
    x0_from_v,
)


def test_terminal_snr_is_zero_and_first_step_kept():
    sched = NoiseSchedule.cogvideox_2b()
    a = sched.alphas_cumprod
    assert a.shape == (1000,) and a.dtype == torch.float64
    assert a[-1] == 0 and snr(a)[-1] == 0
    assert torch.all(a[1:] < a[:-1]), "alphas_cumprod must fall strictly"
    # Rescaling keeps the first step: equal to the shifted (not rescaled) schedule there.
    plain = NoiseSchedule(zero_terminal_snr=False).alphas_cumprod
    assert torch.isclose(a[0], plain[0], rtol=1e-12)
    assert plain[-1] > 0, "without the rescale the last step still has signal"


@pytest.mark.parametrize("scale", [3.0, 0.5, 7.0])
def test_snr_shift_divides_snr_by_scale(scale):
    a = torch.cumprod(1 - scaled_linear_betas(0.00085, 0.012, 1000), 0)
    shifted = shift_snr(a, scale)
    torch.testing.assert_close(snr(shifted), snr(a) / scale, rtol=1e-10, atol=0)
    unshifted = NoiseSchedule(snr_shift_scale=1.0, zero_terminal_snr=False).alphas_cumprod
    torch.testing.assert_close(unshifted, a)


def test_2b_shift_puts_more_noise_than_5b_everywhere_but_the_ends():
    a2, a5 = (
        NoiseSchedule.cogvideox_2b().alphas_cumprod,
        NoiseSchedule.cogvideox_5b().alphas_cumprod,
    )
    assert torch.all(a2[1:-1] < a5[1:-1])


def test_v_round_trip_and_noising():
    sched = NoiseSchedule.cogvideox_2b()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, 3, 5, 5, generator=g)
    eps = torch.randn(6, 4, 3, 5, 5, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = add_noise(sched, x0, eps, t)
    v = v_target(sched, x0, eps, t)
    torch.testing.assert_close(x0_from_v(sched, x_t, v, t), x0, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(eps_from_v(sched, x_t, v, t), eps, atol=2e-5, rtol=1e-5)
    # At the last step the input is pure noise and v is -x0.
    torch.testing.assert_close(x_t[-1], eps[-1])
    torch.testing.assert_close(v[-1], -x0[-1])


def test_v_loss_zero_for_target_and_per_sample():
    a, b = torch.zeros(3, 2, 4), torch.ones(3, 2, 4)
    b[1] *= 2
    assert v_loss(b, b) == 0
    torch.testing.assert_close(v_loss(a, b, reduce=False), torch.tensor([1.0, 4.0, 1.0]))
    with pytest.raises(ValueError, match="one shape"):
        v_loss(a, b[:2])


def test_trailing_timesteps_start_at_pure_noise():
    ts = ddim_timesteps(50)
    assert ts[0] == 999 and ts[-1] == 19 and len(ts) == 50
    assert torch.all(ts[:-1] - ts[1:] == 20)
    assert ddim_timesteps(3).tolist() == [999, 666, 332]
    with pytest.raises(ValueError):
        ddim_timesteps(0)


@pytest.mark.parametrize("steps", [1, 5, 50])
def test_ddim_with_oracle_recovers_x0(steps):
    """A model that returns the true velocity for the known x0 lands exactly on x0."""
    sched = NoiseSchedule.cogvideox_2b()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)

    def oracle(x_t, t):
        # v consistent with x_t and the true x0: eps = (x_t - sqrt(a) x0) / sqrt(1 - a).
        a = sched.alpha(t, x_t.ndim)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    out, traj = ddim_sample(oracle, noise, steps, progress=False, return_trajectory=True)
    assert len(traj) == steps + 1
    torch.testing.assert_close(out, x0, atol=1e-9, rtol=1e-9)


def test_cfg_scale_one_is_conditional_and_scale_mixes():
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 2, 1, 4, 4, generator=g)
    d = torch.randn(1, 2, 1, 4, 4, generator=g)

    def cond(x, t):
        return 0.5 * x + d

    def uncond(x, t):
        return 0.5 * x - d

    plain = ddim_sample(cond, noise, 5, progress=False)
    one = ddim_sample(cond, noise, 5, 1.0, uncond_fn=uncond, progress=False)
    torch.testing.assert_close(one, plain, atol=1e-6, rtol=1e-6)
    # Guidance 3 is the same as a conditional model predicting v_u + 3 (v_c - v_u) = 0.5x + 5d.
    three = ddim_sample(cond, noise, 5, 3.0, uncond_fn=uncond, progress=False)
    by_hand = ddim_sample(lambda x, t: 0.5 * x + 5 * d, noise, 5, progress=False)
    torch.testing.assert_close(three, by_hand, atol=1e-5, rtol=1e-5)


def test_dynamic_guidance_formula():
    assert guidance_scale(6.0, 999, 50) == 6.0
    t, n = 30, 50
    expected = 1 + 6 * (1 - math.cos(math.pi * ((n - t) / n) ** 5)) / 2
    assert guidance_scale(6.0, t, n, dynamic=True) == pytest.approx(expected)


def _model_outputs(x, t):
    """A fixed, nonlinear stand-in for a network, shared by both samplers."""
    phase = t.double().view(-1, *([1] * (x.ndim - 1))) / 1000
    return torch.tanh(0.7 * x) * torch.cos(3 * phase) + 0.2 * torch.sin(5 * phase)


@pytest.mark.parametrize("steps,shift", [(50, 3.0), (7, 1.0)])
def test_trajectory_equals_diffusers_cogvideox_ddim(steps, shift):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.CogVideoXDDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        snr_shift_scale=shift,
    )
    ref.set_timesteps(steps)
    sched = NoiseSchedule(snr_shift_scale=shift)
    torch.testing.assert_close(ref.alphas_cumprod, sched.alphas_cumprod, rtol=1e-12, atol=1e-15)
    assert ref.timesteps.tolist() == ddim_timesteps(steps).tolist()

    noise = torch.randn(2, 4, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    x = noise
    expected = [x]
    for t in ref.timesteps:
        v = _model_outputs(x, t.expand(x.shape[0])).float()
        x = ref.step(v, t, x).prev_sample
        expected.append(x)

    def model_fn(x, t):
        return _model_outputs(x, t).float()

    _, ours = ddim_sample(
        model_fn, noise, steps, schedule=sched, progress=False, return_trajectory=True
    )
    assert len(ours) == len(expected)
    for i, (a, b) in enumerate(zip(ours, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {i}")


def test_leading_timesteps_skip_pure_noise_and_bad_spacing_fails():
    assert ddim_timesteps(50, spacing="leading").tolist() == list(range(980, -1, -20))
    assert ddim_timesteps(3, spacing="leading").tolist() == [666, 333, 0]
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(10, spacing="linspace")


@pytest.mark.parametrize("spacing,zero_snr", [("leading", True), ("trailing", False)])
def test_other_spacings_and_schedules_equal_diffusers(spacing, zero_snr):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        timestep_spacing=spacing,
        rescale_betas_zero_snr=zero_snr,
        snr_shift_scale=3.0,
    )
    ref.set_timesteps(10)
    sched = NoiseSchedule(snr_shift_scale=3.0, zero_terminal_snr=zero_snr)
    assert ref.timesteps.tolist() == ddim_timesteps(10, spacing=spacing).tolist()
    noise = torch.randn(2, 4, 3, 6, 8, generator=torch.Generator().manual_seed(4))
    x = noise
    for t in ref.timesteps:
        x = ref.step(_model_outputs(x, t.expand(x.shape[0])).float(), t, x).prev_sample

    def model_fn(x, t):
        return _model_outputs(x, t).float()

    ours = ddim_sample(model_fn, noise, 10, schedule=sched, progress=False, spacing=spacing)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_callback_sees_every_step_and_its_x0_prediction():
    sched = NoiseSchedule.cogvideox_2b()
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))

    def oracle(x, t):  # the v that makes the prediction of x0 exact
        a = sched.alpha(t, x.ndim).float()
        return (a.sqrt() * x - x0) / (1 - a).sqrt().clamp_min(1e-12)

    seen = []
    _, traj = ddim_sample(
        oracle,
        noise,
        5,
        schedule=sched,
        progress=False,
        return_trajectory=True,
        callback=lambda i, t, x, x0_hat: seen.append((i, t, x, x0_hat)),
    )
    assert [(i, t) for i, t, _, _ in seen] == list(enumerate(ddim_timesteps(5).tolist()))
    for i, _, x, x0_hat in seen:
        assert x is traj[i + 1]
        torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
