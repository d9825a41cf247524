"""Ablation ``full_vs_2d1d_attention``: 3D full attention against alternating 2D spatial / 1D
temporal attention: loss, the judge's position tracks of generated motion, loss stability."""

from __future__ import annotations

from cogvx_mini.experiments import common

CLAIM = (
    "3D full attention trains more stably than 2D+1D attention and keeps large motion consistent."
)


def run(budget: common.Budget, seeds, device, log) -> dict:
    train, held = common.train_and_held(budget, device)
    arms = {
        "3d_full": {"config": common.mini(attention="full"), "setting": {"attention": "full"}},
        "2d_plus_1d": {"config": common.mini(attention="2d1d"), "setting": {"attention": "2d1d"}},
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
        "eval": "position tracks of generated objects (every toy object moves 45% of the frame)",
        "vae": train.meta["vae"],
    }
