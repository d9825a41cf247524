"""Ablation ``explicit_uniform_sampling``: timesteps stratified over the batch (each sample plays
one of ``batch`` simulated ranks) against independent uniform draws: step-to-step loss noise,
loss per timestep bucket, convergence."""

from __future__ import annotations

from cogvx_mini.experiments import common
from cogvx_mini.timestep_sampling import TimestepLossTracker

CLAIM = (
    "Explicit uniform sampling makes the loss curve less noisy and "
    "training converge faster than independent timestep sampling."
)


ARMS = ("explicit_uniform", "independent")


def run(budget: common.Budget, seeds, device, log, arms=ARMS) -> dict:
    train, held = common.train_and_held(budget, device)
    specs = {
        "explicit_uniform": {
            "config": common.mini(),
            "strata": budget.batch,
            "setting": {"timestep_strata": budget.batch},
        },
        "independent": {"config": common.mini(), "strata": 1, "setting": {"timestep_strata": 1}},
    }
    specs = common.only(specs, arms)
    buckets = {}

    def evaluate(arm, model, run_, seed):
        buckets.setdefault(arm, []).append([float(x) for x in run_.tracker.means()])
        return {
            "eval_loss": common.eval_loss(model, held, budget.eval_timesteps, device),
            "loss_noise_std": common.detrended_std(run_.losses),
        }

    out = common.diffusion_ablation(budget, seeds, device, specs, lambda a: train, evaluate, log)
    for arm in out:
        out[arm]["loss_per_timestep_bucket"] = buckets[arm]
    return {
        "arms": out,
        "primary": ["loss_noise_std", "eval_loss"],
        "higher_is_better": {"loss_noise_std": False, "eval_loss": False},
        "eval": f"each of the {budget.batch} samples of a batch plays one simulated rank",
        "bucket_edges": TimestepLossTracker(1000, 10).edges(),
        "judge_ceiling": common.judge_ceiling(train, budget, device),
        "vae": train.meta["vae"],
    }
