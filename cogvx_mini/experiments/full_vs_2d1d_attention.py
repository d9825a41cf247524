"""Ablation ``full_vs_2d1d_attention``: 3D full attention against alternating 2D spatial / 1D
temporal attention: loss, the judge's position tracks of generated motion, loss stability."""

from __future__ import annotations

from dataclasses import replace

from cogvx_mini.experiments import common

CLAIM = (
    "3D full attention trains more stably than 2D+1D attention and keeps large motion consistent."
)


# Deep and long enough for the relay argument to bite: 9 latent frames, and 8 layers, so that
# 2D+1D (4 spatial + 4 temporal) must pass an object's motion along over several hops, where
# full attention links every pair of tokens in each layer.
LAYERS = 8
FRAMES = 33  # 1 + 4 * 8: 9 latent frames


def run(budget: common.Budget, seeds, device, log) -> dict:
    budget = replace(budget, frames=FRAMES)
    train, held = common.train_and_held(budget, device)
    arms = {
        name: {
            "config": common.mini(attention=kind, num_layers=LAYERS),
            "setting": {"attention": kind, "layers": LAYERS, "frames": FRAMES},
        }
        for name, kind in (("3d_full", "full"), ("2d_plus_1d", "2d1d"))
    }

    def evaluate(arm, model, run_, seed):
        m = {"eval_loss": common.eval_loss(model, held, budget.eval_timesteps, device)}
        m["loss_noise_std"] = common.detrended_std(run_.losses)
        m["max_loss_late"] = max(run_.losses[len(run_.losses) // 2 :])
        m.update(common.judged_generations(model, train, budget, seed, device))
        return m

    return {
        **common.arms_and_judge_ceiling(budget, seeds, device, arms, train, evaluate, log),
        "primary": ["eval_loss", "track_residual_px", "direction_ok"],
        "higher_is_better": {
            "eval_loss": False,
            "track_residual_px": False,
            "direction_ok": True,
        },
        "eval": f"{FRAMES}-frame clips, {LAYERS} layers; position tracks of generated objects "
        "(every toy object moves 45% of the frame)",
        "vae": train.meta["vae"],
    }
