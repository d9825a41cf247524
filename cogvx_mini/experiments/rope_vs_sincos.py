"""Ablation ``rope_vs_sincos``: 3D-RoPE against 3D sincos absolute positions, each with unseen
grids extrapolated and interpolated: loss curves and the loss at a length and a resolution never
seen in training."""

from __future__ import annotations

from dataclasses import replace

from cogvx_mini.experiments import common
from cogvx_mini.frame_pack import Bucket
from cogvx_mini.transformer import CogVideoXTransformer

CLAIM = (
    "3D-RoPE converges faster than sinusoidal absolute positions and copes "
    "better with lengths and resolutions not trained on."
)


ARMS = ("3d_rope", "sincos")  # what trains; each is reported under both numberings
NUMBERINGS = ("extrapolate", "interpolate")
# Each contrast switches one factor: the scheme under one numbering, or the numbering of one
# (trained) model.
CONTRASTS = [
    ["3d_rope_extrapolate", "sincos_extrapolate"],
    ["3d_rope_interpolate", "sincos_interpolate"],
    ["3d_rope_extrapolate", "3d_rope_interpolate"],
    ["sincos_extrapolate", "sincos_interpolate"],
]


def run(budget: common.Budget, seeds, device, log, arms=ARMS) -> dict:
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
    # On the training grid both numberings give the same positions, so each scheme trains once
    # and its model is then read under either numbering: the numbering contrast is paired.
    patch = common.mini().patch_size
    grid = tuple(n // patch for n in train.clips[0].mean.shape[2:])
    specs = common.only(position_schemes(grid), arms)

    def evaluate(arm, model, run_, seed):
        m = {}
        for grid in NUMBERINGS:
            numbered = with_numbering(model, grid)
            for k, d in evals.items():
                m[f"{k}_{grid}"] = common.eval_loss(numbered, d, budget.eval_timesteps, device)
        return m

    trained = common.diffusion_ablation(
        budget, seeds, device, specs, lambda a: train, evaluate, log
    )
    return {
        "arms": split_numberings(trained, list(evals)),
        "contrasts": CONTRASTS,
        "judge_ceiling": common.judge_ceiling(train, budget, device),
        "primary": list(evals),
        "higher_is_better": {k: False for k in evals},
        "eval": f"train {budget.frames}x{budget.size}x{budget.size}; unseen length "
        f"{long_frames} frames; unseen resolution {big}x{big}; each trained model read under "
        "both numberings of unseen grids",
        "vae": train.meta["vae"],
    }


def position_schemes(grid: tuple[int, int]) -> dict[str, dict]:
    """The two trained arms, 3D-RoPE and 3D sincos, all else equal; their base grid is the
    training grid ``(h, w)`` of tokens, so that training sees the same positions under either
    numbering."""
    return {
        name: {
            "config": common.mini(
                positions=positions,
                rope_base_grid=grid,
                rope_grid="extrapolate",
                sincos_grid="extrapolate",
            ),
            "setting": {"positions": positions},
        }
        for name, positions in zip(ARMS, ("rope", "sincos"), strict=True)
    }


def with_numbering(model: CogVideoXTransformer, grid: str) -> CogVideoXTransformer:
    """``model``'s weights in a model that numbers unseen grids by ``grid`` (``extrapolate``:
    extended; ``interpolate``: squeezed into the training grid)."""
    config = replace(model.config, rope_grid=grid, sincos_grid=grid)
    numbered = CogVideoXTransformer(config).to(next(model.parameters()).device)
    numbered.load_state_dict(model.state_dict())
    return numbered.eval()


def split_numberings(trained: dict[str, dict], metrics: list[str]) -> dict[str, dict]:
    """Each trained arm as two arms ``<arm>_<numbering>``, with that numbering's metrics."""
    out = {}
    for grid in NUMBERINGS:
        for arm, a in trained.items():
            kept = {k: v for k, v in a["metrics"].items() if not k.endswith(NUMBERINGS)}
            for k in metrics:
                kept[k] = a["metrics"][f"{k}_{grid}"]
            kept["longer_over_seen"] = ratio(kept["eval_loss_longer"], kept["eval_loss_seen"])
            kept["larger_over_seen"] = ratio(kept["eval_loss_larger"], kept["eval_loss_seen"])
            setting = dict(a["setting"], **{"unseen grids": grid + "d"})
            config = dict(a["config"], rope_grid=grid, sincos_grid=grid)
            out[f"{arm}_{grid}"] = dict(
                a, setting=setting, config=config, metrics=kept, trained_as=arm
            )
    return out


def ratio(a: dict, b: dict) -> dict:
    """Per seed, the summary of ``a``'s values over ``b``'s."""
    return common.summary([x / y for x, y in zip(a["values"], b["values"], strict=True)])
