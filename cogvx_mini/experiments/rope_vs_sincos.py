"""Ablation ``rope_vs_sincos``: 3D-RoPE against 3D sincos absolute positions, each with unseen
grids extrapolated and interpolated: loss curves and the loss at a length and a resolution never
seen in training."""

from __future__ import annotations

from cogvx_mini.experiments import common
from cogvx_mini.frame_pack import Bucket

CLAIM = (
    "3D-RoPE converges faster than sinusoidal absolute positions and copes "
    "better with lengths and resolutions not trained on."
)


def run(budget: common.Budget, seeds, device, log) -> dict:
    train = common.latent_dataset(
        budget, device, budget.clips, (budget.frames,), common.train_buckets(budget)
    )
    scale = train.latent_scale
    long_frames = 2 * budget.frames - 1
    big = budget.size + budget.size // 2
    evals = {
        "eval_loss_seen": common.latent_dataset(
            budget,
            device,
            budget.eval_clips,
            (budget.frames,),
            common.train_buckets(budget),
            common.EVAL_SEED,
            scale,
        ),
        "eval_loss_longer": common.latent_dataset(
            budget,
            device,
            budget.eval_clips,
            (long_frames,),
            [Bucket(long_frames, budget.size, budget.size)],
            common.EVAL_SEED,
            scale,
        ),
        "eval_loss_larger": common.latent_dataset(
            budget,
            device,
            budget.eval_clips,
            (budget.frames,),
            [Bucket(budget.frames, big, big)],
            common.EVAL_SEED,
            scale,
            size=big,
        ),
    }
    arms, contrasts = position_arms()

    def evaluate(arm, model, run_, seed):
        m = {k: common.eval_loss(model, d, budget.eval_timesteps, device) for k, d in evals.items()}
        m["longer_over_seen"] = m["eval_loss_longer"] / m["eval_loss_seen"]
        m["larger_over_seen"] = m["eval_loss_larger"] / m["eval_loss_seen"]
        return m

    return {
        "arms": common.diffusion_ablation(
            budget, seeds, device, arms, lambda a: train, evaluate, log
        ),
        "contrasts": contrasts,
        "primary": ["eval_loss_seen", "eval_loss_longer", "eval_loss_larger"],
        "higher_is_better": {k: False for k in evals},
        "eval": f"train {budget.frames}x{budget.size}x{budget.size}; unseen length "
        f"{long_frames} frames; unseen resolution {big}x{big}",
        "vae": train.meta["vae"],
    }


def position_arms() -> tuple[dict, list[list[str]]]:
    """Two factors: the position scheme, and how a grid other than the training grid is
    numbered (extended, as CogVideoX trains both; or squeezed into the training grid). Each
    scheme is compared with the other under the same numbering, and each numbering within a
    scheme: ``(arms, contrasts)``."""
    arms = {
        f"{name}_{grid}": {
            "config": common.mini(positions=positions, rope_grid=grid, sincos_grid=grid),
            "setting": {"positions": positions, "unseen grids": grid + "d"},
        }
        for grid in ("extrapolate", "interpolate")
        for name, positions in (("3d_rope", "rope"), ("sincos", "sincos"))
    }
    contrasts = [
        ["3d_rope_extrapolate", "sincos_extrapolate"],
        ["3d_rope_interpolate", "sincos_interpolate"],
        ["3d_rope_extrapolate", "3d_rope_interpolate"],
        ["sincos_extrapolate", "sincos_interpolate"],
    ]
    return arms, contrasts
