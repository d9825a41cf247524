"""Ablation ``full_vs_2d1d_attention``: 3D full attention against alternating 2D spatial / 1D
temporal attention: loss, the judge's position tracks of generated motion, loss stability."""

from __future__ import annotations

import math
from dataclasses import replace

from cogvx_mini.experiments import common
from cogvx_mini.experiments.attention_probe import object_token_masks, previous_frame_attention

CLAIM = (
    "3D full attention trains more stably than 2D+1D attention and keeps large motion consistent."
)


# Deep and long enough for the relay argument to bite: 9 latent frames, and 8 layers, so that
# 2D+1D (4 spatial + 4 temporal) must pass an object's motion along over several hops, where
# full attention links every pair of tokens in each layer.
LAYERS = 8
FRAMES = 33  # 1 + 4 * 8: 9 latent frames


ARMS = ("3d_full", "2d_plus_1d")


def run(budget: common.Budget, seeds, device, log, arms=ARMS) -> dict:
    budget = replace(budget, frames=FRAMES)
    train, held = common.train_and_held(budget, device)
    specs = {
        name: {
            "config": common.mini(attention=kind, num_layers=LAYERS),
            "setting": {"attention": kind, "layers": LAYERS, "frames": FRAMES},
        }
        for name, kind in zip(ARMS, ("full", "2d1d"), strict=True)
        if name in arms
    }

    probes: dict[str, list] = {arm: [] for arm in specs}  # per arm, one entry per seed

    def evaluate(arm, model, run_, seed):
        m = {"eval_loss": common.eval_loss(model, held, budget.eval_timesteps, device)}
        m["loss_noise_std"] = common.detrended_std(run_.losses)
        m["max_loss_late"] = max(run_.losses[len(run_.losses) // 2 :])
        m.update(common.judged_generations(model, train, budget, seed, device))
        probes[arm].append(probe_layers(model, held, budget))
        m["previous_frame_attention"] = max(layer["share"] for layer in probes[arm][-1])
        return m

    result = common.arms_and_judge_ceiling(budget, seeds, device, specs, train, evaluate, log)
    for arm, layers in probes.items():
        result["arms"][arm]["attention_probe"] = layers
    return {
        **result,
        "primary": ["eval_loss", "track_residual_px", "direction_ok", "previous_frame_attention"],
        "higher_is_better": {
            "eval_loss": False,
            "track_residual_px": False,
            "direction_ok": True,
            "previous_frame_attention": True,
        },
        "eval": f"{FRAMES}-frame clips, {LAYERS} layers; position tracks of generated objects "
        "(every toy object moves 45% of the frame)",
        "vae": train.meta["vae"],
    }


def probe_layers(model, held, budget: common.Budget, clips: int = 4) -> list[dict]:
    """:func:`~cogvx_mini.experiments.attention_probe.previous_frame_attention` of the first
    ``clips`` held-out clips, averaged per layer (the map: the first clip's)."""
    from cogvx_mini.data.toyworld import sample_scene

    runs = []
    for i, clip in enumerate(held.clips[:clips]):
        # the clip's scene, as toy_clips drew it
        scene = sample_scene(common.EVAL_SEED + i, split="train", **budget.scene_options())
        grid = (clip.mean.shape[1], *(n // model.config.patch_size for n in clip.mean.shape[2:]))
        masks = object_token_masks(scene, budget.frames, budget.size, grid)
        runs.append(
            previous_frame_attention(model, clip.mean * held.latent_scale, clip.text, masks)
        )
    return [
        {
            "kind": layers[0]["kind"],
            "share": _mean_finite([r["share"] for r in layers]),
            "uniform": _mean_finite([r["uniform"] for r in layers]),
            "map": layers[0]["map"],
        }
        for layers in zip(*runs, strict=True)
    ]


def _mean_finite(values: list[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan
