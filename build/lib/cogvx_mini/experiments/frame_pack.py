"""Ablation ``frame_pack``: mixed durations packed into buckets against a fixed length that drops
shorter clips: data used and quality."""

from __future__ import annotations

from cogvx_mini.experiments import common
from cogvx_mini.frame_pack import Bucket
from cogvx_mini.training.train import LatentDataset, toy_clips

CLAIM = (
    "Frame pack uses clips of every duration (no data discarded) and trains a "
    "model that generalises across lengths."
)


def run(budget: common.Budget, seeds, device, log) -> dict:
    f = budget.frames
    long_f = 2 * f - 1
    lengths = (f, f + 4, long_f, long_f + 4)  # mixed durations, as real data
    packed = common.latent_dataset(
        budget,
        device,
        budget.clips,
        lengths,
        [Bucket(f, budget.size, budget.size), Bucket(long_f, budget.size, budget.size)],
    )
    scale = packed.latent_scale
    # Fixed length: every clip must have long_f frames; shorter ones are discarded.
    fixed = LatentDataset(
        [c for c in packed.clips if c.bucket.frames == long_f], packed.empty_text, scale
    )

    def held_out(frames: int):
        bucket = [Bucket(frames, budget.size, budget.size)]
        return common.latent_dataset(
            budget, device, budget.eval_clips, (frames,), bucket, common.EVAL_SEED, scale
        )

    held, held_short = held_out(long_f), held_out(f)
    frames_available = sum(c[0].shape[1] for c in toy_clips(budget.clips, lengths, 8, 8))
    data = {"frame_pack": packed, "fixed_length": fixed}
    arms = {
        "frame_pack": {"config": common.mini(), "setting": {"buckets": [f, long_f]}},
        "fixed_length": {"config": common.mini(), "setting": {"buckets": [long_f]}},
    }

    def evaluate(arm, model, run_, seed):
        return {
            "eval_loss": common.eval_loss(model, held, budget.eval_timesteps, device),
            "eval_loss_short": common.eval_loss(model, held_short, budget.eval_timesteps, device),
            **common.judged_generations(model, packed, budget, seed, device, frames=long_f),
        }

    out = common.diffusion_ablation(budget, seeds, device, arms, data.__getitem__, evaluate, log)
    for arm, d in data.items():
        used = sum(4 * (c.mean.shape[1] - 1) + 1 for c in d.clips)
        out[arm]["data_used"] = {
            "clips": len(d.clips),
            "of_clips": budget.clips,
            "frames": used,
            "of_frames": frames_available,
        }
    return {
        "arms": out,
        "judge_ceiling": common.judge_ceiling(held, budget, device),
        "primary": ["eval_loss", "eval_loss_short", "judge_score"],
        "higher_is_better": {
            "eval_loss": False,
            "eval_loss_short": False,
            "judge_score": True,
        },
        "eval": f"clips of {lengths} frames; buckets {f} and {long_f}; generations of {long_f}",
        "vae": packed.meta["vae"],
    }
