"""Sweep of the laptop recipe (`make train`) at the CPU's budget, run on a GPU.

    python tools/laptop_sweep.py run --arm a17 --seed 1 --out /tmp/sweep --device cuda
    python tools/laptop_sweep.py summary /tmp/sweep

Each arm is `train.py --recipe laptop` with a few arguments and fields of its world (clip length,
colours, sizes) changed; its step count is what two laptop cores run in the recipe's time at that
clip length.
``--seed`` redraws both the training scenes and the run's own seed (initialisation, batches,
noise): the spread between draws of one arm is what an arm's difference must beat.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
from pathlib import Path

from cogvx_mini.training import train as T

# arm -> (the laptop world's fields it changes, arguments after --recipe laptop)
EVERY = {"colours": None, "sizes": None}
LARGE = {"colours": None, "sizes": ("large",)}
RGB = {"colours": ("blue", "green", "red"), "sizes": None}
RGB_LARGE = {"colours": ("blue", "green", "red"), "sizes": ("large",)}
CUTS = {  # 17-frame steps cost 1.6x a 9-frame step on 2 cores, 13-frame ones 1.2x
    9: ["--steps", "5000", "--clips", "4000"],
    13: ["--steps", "4000", "--clips", "3000"],
    17: ["--steps", "3000", "--clips", "2000"],
}


def length(frames: int) -> dict:
    return {"lengths": (frames,), "bucket_frames": (frames,)}


ARMS = {
    "a9": (EVERY | length(9), CUTS[9]),
    "a13": (EVERY | length(13), ["--steps", "4000"]),
    "a17": (EVERY | length(17), ["--steps", "3000"]),
    "a17_lr2": (EVERY | length(17), ["--steps", "3000", "--lr", "2e-3"]),
    "a17_2k": (EVERY | length(17), CUTS[17]),
    "a17_b16": (EVERY | length(17), ["--steps", "5000", "--batch-size", "16", "--lr", "2e-3"]),
    "large": (LARGE | length(9), CUTS[9]),
    "rgb": (RGB | length(9), CUTS[9]),
    "rgb_large": (RGB_LARGE | length(9), CUTS[9]),
    "large17": (LARGE | length(17), CUTS[17]),
    "rgb_large13": (RGB_LARGE | length(13), CUTS[13]),
    "rgb_large13_3k": (RGB_LARGE | length(13), ["--steps", "3000", "--clips", "3000"]),
    "rgb_large17": (RGB_LARGE | length(17), CUTS[17]),
}
# Training scenes of draw s start here: far from the evaluation prompts' seeds (10,000 on).
FIRST_SEED = 200_000
SEED_STRIDE = 50_000


def run(arm: str, seed: int, out: Path, device: str, judge_prompts: int, threads: int) -> None:
    world, extra = ARMS[arm]
    T.WORLDS["laptop"] = dataclasses.replace(T.WORLDS["laptop"], **world)
    if seed:
        T.toy_clips = functools.partial(T.toy_clips, first_seed=FIRST_SEED + seed * SEED_STRIDE)
        seeded = dataclasses.field(default=seed)  # a subclass: parse_args reads its defaults
        T.TrainConfig = dataclasses.make_dataclass(
            "TrainConfig", [("seed", int, seeded)], bases=(T.TrainConfig,)
        )
    T.main(
        ["--recipe", "laptop", *extra, "--out", str(out / f"{arm}_s{seed}"), "--device", device]
        + ["--judge-prompts", str(judge_prompts), "--threads", str(threads)]
    )


def summary(root: Path) -> dict:
    runs: dict[str, list[float]] = {}
    for log in sorted(root.glob("*_s*/train_log.json")):
        arm = log.parent.name.rsplit("_s", 1)[0]
        runs.setdefault(arm, []).append(json.loads(log.read_text())["judged"]["judge"])
    table = {
        arm: {
            "judges": scores,
            "mean": statistics.mean(scores),
            "sd": statistics.stdev(scores) if len(scores) > 1 else None,
        }
        for arm, scores in runs.items()
    }
    for arm, row in table.items():
        sd = "" if row["sd"] is None else f" ± {row['sd']:.3f}"
        print(f"{arm:>8}: {row['mean']:.3f}{sd}  ({', '.join(f'{s:.3f}' for s in row['judges'])})")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--arm", choices=sorted(ARMS), required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--device", default="cpu")
    r.add_argument("--judge-prompts", type=int, default=128)
    r.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("summary")
    s.add_argument("root", type=Path)
    args = p.parse_args()
    if args.command == "run":
        run(args.arm, args.seed, args.out, args.device, args.judge_prompts, args.threads)
    else:
        print(json.dumps(summary(args.root)))


if __name__ == "__main__":
    main()
