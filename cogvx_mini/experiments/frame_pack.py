"""Ablation ``frame_pack``: mixed durations packed into buckets against the two fixed-length
alternatives the paper argues against: dropping shorter clips, and padding them with black
frames. Data used and quality."""

from __future__ import annotations

import torch

from cogvx_mini.data.text_encoder import ToyTextEncoder
from cogvx_mini.experiments import common
from cogvx_mini.frame_pack import Bucket, pack_frames
from cogvx_mini.training.train import LatentDataset, cache_latents, toy_clips

CLAIM = (
    "Frame pack uses clips of every duration (no data discarded, no padding) and trains a "
    "model that generalises across lengths."
)


def pad_black(video: torch.Tensor, frames: int) -> torch.Tensor:
    """``[C, T, H, W]`` in [-1, 1] -> ``[C, frames, H, W]``: a shorter clip gets black frames
    after its last (the padding frame pack avoids), a longer one is truncated."""
    clip = pack_frames(video, frames) if video.shape[1] >= frames else video
    black = -torch.ones(video.shape[0], frames - clip.shape[1], *video.shape[2:])
    return torch.cat([clip, black], dim=1)


def padded_dataset(budget: common.Budget, device: str, lengths, frames: int, scale: float):
    """The frame-pack arm's training scenes, each brought to ``frames`` by :func:`pad_black`
    and encoded by the same latent VAE at the same latent scale."""
    vae, origin = common.latent_vae(budget, device)
    clips = (
        (pad_black(video, frames), caption)
        for video, caption in toy_clips(
            budget.clips, lengths, budget.size, budget.size, **budget.scene_options()
        )
    )
    bucket = [Bucket(frames, budget.size, budget.size)]
    data = cache_latents(clips, vae, ToyTextEncoder(), bucket, scale, progress=False)
    data.meta["vae"] = origin
    return data


ARMS = ("frame_pack", "fixed_length", "black_padding")


def run(budget: common.Budget, seeds, device, log, arms=ARMS) -> dict:
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

    def held_out(frames: int):
        bucket = [Bucket(frames, budget.size, budget.size)]
        return common.latent_dataset(
            budget, device, budget.eval_clips, (frames,), bucket, common.EVAL_SEED, scale
        )

    held, held_short = held_out(long_f), held_out(f)
    scenes = toy_clips(budget.clips, lengths, 8, 8, **budget.scene_options())
    frames_available = sum(c[0].shape[1] for c in scenes)
    data = {  # built only for the arms that run
        "frame_pack": lambda: packed,
        # Fixed length: every clip must have long_f frames; shorter ones are discarded.
        "fixed_length": lambda: LatentDataset(
            [c for c in packed.clips if c.bucket.frames == long_f], packed.empty_text, scale
        ),
        "black_padding": lambda: padded_dataset(budget, device, lengths, long_f, scale),
    }
    data = {arm: make() for arm, make in data.items() if arm in arms}

    def evaluate(arm, model, run_, seed):
        return {
            "eval_loss": common.eval_loss(model, held, budget.eval_timesteps, device),
            "eval_loss_short": common.eval_loss(model, held_short, budget.eval_timesteps, device),
            **common.judged_generations(model, packed, budget, seed, device, frames=long_f),
        }

    specs = common.only(arm_specs(f, long_f), arms)
    out = common.diffusion_ablation(budget, seeds, device, specs, data.__getitem__, evaluate, log)
    for arm, d in data.items():
        out[arm]["data_used"] = data_used(d, budget.clips, frames_available)
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


def arm_specs(frames: int, long_frames: int) -> dict[str, dict]:
    """The three arms: the same model, two buckets or one (shorter clips dropped or padded)."""
    return {
        "frame_pack": {"config": common.mini(), "setting": {"buckets": [frames, long_frames]}},
        "fixed_length": {"config": common.mini(), "setting": {"buckets": [long_frames]}},
        "black_padding": {
            "config": common.mini(),
            "setting": {"buckets": [long_frames], "shorter clips": "padded with black frames"},
        },
    }


def data_used(data: LatentDataset, clips: int, frames: int) -> dict:
    """How much of the ``clips`` scenes (``frames`` frames in all) an arm trains on."""
    used = sum(4 * (c.mean.shape[1] - 1) + 1 for c in data.clips)  # black padding included
    return {"clips": len(data.clips), "of_clips": clips, "frames": used, "of_frames": frames}
