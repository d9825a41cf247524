"""Quality of the shipped mini model: the toy-world judge on seen and held-out combinations.

python -m cogvx_mini.bench mini [--prompts 64] [--device cuda] [--json book/data/mini_quality.json]

Generates videos for toy-world prompts of the training split (colour-direction pairs seen in
training) and of the held-out split (each prompt has a pair never seen), scores each with the
judge and with the strict judge (:mod:`cogvx_mini.data.strict_judge`: shape, size and wholeness
in every frame, smooth motion, object count), reports how often each attribute is right, measures
the ceiling the VAE sets (both judges on its reconstructions of the held-out scenes), sweeps the
guidance scale on separate prompts, and prints the numbers (and writes them as JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cogvx_mini.data.strict_judge import CHECKS, strict_judge, strict_judge_details
from cogvx_mini.data.toyworld import judge, judge_details, render
from cogvx_mini.pipeline import (
    MINI_GUIDANCE,
    evaluation_prompts,
    evaluation_scenes,
    judge_scores,
    judge_videos,
    load_mini,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="per split")
    parser.add_argument("--sweep-prompts", type=int, default=24, help="per split and scale")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 4.5, 6.0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=MINI_GUIDANCE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", type=Path, default=None, help="transformer (default: shipped)")
    parser.add_argument("--vae-weights", type=Path, default=None, help="VAE (default: shipped)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_mini(args.weights, args.vae_weights)
    pipe.transformer.to(args.device)
    pipe.vae.to(args.device)
    results: dict = {"device": str(args.device), "steps": args.steps, "guidance": args.guidance}
    results["scores"] = {split: split_scores(pipe, split, args) for split in ("train", "held_out")}
    results["vae_ceiling"] = vae_ceiling(pipe, args)
    results["guidance_sweep"] = {
        split: guidance_sweep(pipe, split, args) for split in ("train", "held_out")
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


def split_scores(pipe, split: str, args: argparse.Namespace) -> dict:
    """Judge and strict judge of ``args.prompts`` generated videos of one split: means, the rate
    of each attribute and each strict check over captioned objects, and the time taken."""
    prompts = evaluation_prompts(split, args.prompts)
    start = time.perf_counter()
    verdicts = judge_videos(
        pipe,
        prompts,
        (judge_details, strict_judge_details),
        steps=args.steps,
        guidance=args.guidance,
    )
    seconds = time.perf_counter() - start
    objects = [o for old, _ in verdicts for o in old.objects]
    strict_objects = [o for _, strict in verdicts for o in strict.objects]
    scores = {
        "mean": sum(old.score for old, _ in verdicts) / len(verdicts),
        "strict_mean": sum(strict.score for _, strict in verdicts) / len(verdicts),
        "count": len(verdicts),
        "seconds": seconds,
        "attributes": attribute_rates(objects),
        "strict_checks": {
            check: sum(o.checks[check] for o in strict_objects) / len(strict_objects)
            for check in CHECKS
        },
    }
    attributes = ", ".join(f"{k} {v:.0%}" for k, v in scores["attributes"].items())
    print(
        f"{split:>8}: judge {scores['mean']:.3f}, strict {scores['strict_mean']:.3f} over "
        f"{len(verdicts)} prompts ({attributes}; {seconds:.1f} s on {args.device})"
    )
    return scores


# The old judge's four checks per captioned object, by the name the results use.
ATTRIBUTES = {
    "colour": "present",
    "size": "size_ok",
    "shape": "shape_ok",
    "direction": "direction_ok",
}


def attribute_rates(objects: list) -> dict[str, float]:
    """The share of the old judge's object verdicts that pass each of its four checks."""
    return {
        name: sum(getattr(o, f) for o in objects) / len(objects) for name, f in ATTRIBUTES.items()
    }


def vae_ceiling(pipe, args: argparse.Namespace) -> dict:
    """The ceiling the VAE sets: the judge on ground-truth renders and on their reconstructions."""
    scenes = evaluation_scenes("held_out", args.prompts)
    truth = torch.stack([render(s, 17, 64, 64) for s in scenes])
    with torch.no_grad():
        recon = pipe.vae.decode(pipe.vae.encode(truth.to(args.device)).mean).clamp(-1, 1).cpu()

    def mean_judge(videos, judge_fn=judge) -> float:
        pairs = zip(videos, scenes, strict=True)
        return sum(judge_fn(v, s.caption) for v, s in pairs) / len(scenes)

    ceiling = {
        "ground_truth": mean_judge(truth),
        "vae_reconstruction": mean_judge(recon),
        "strict_ground_truth": mean_judge(truth, strict_judge),
        "strict_vae_reconstruction": mean_judge(recon, strict_judge),
        "scenes": len(scenes),
        # Per check: occlusion costs the ground truth some shapes; the VAE's rounding, more.
        "attributes": {
            name: attribute_rates(
                [
                    o
                    for v, s in zip(videos, scenes, strict=True)
                    for o in judge_details(v, s.caption).objects
                ]
            )
            for name, videos in (("ground_truth", truth), ("vae_reconstruction", recon))
        },
    }
    print(
        f"judge on ground truth {ceiling['ground_truth']:.3f}, on its VAE reconstruction "
        f"{ceiling['vae_reconstruction']:.3f} (the ceiling); strict judge "
        f"{ceiling['strict_ground_truth']:.3f} and {ceiling['strict_vae_reconstruction']:.3f}"
    )
    for name, rates in ceiling["attributes"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items()))
    return ceiling


def guidance_sweep(pipe, split: str, args: argparse.Namespace) -> dict[str, float]:
    """The mean judge score of ``args.sweep_prompts`` videos at each guidance scale."""
    prompts = evaluation_prompts(split, args.sweep_prompts, first_seed=30_000)
    sweep = {}
    for scale in args.scales:
        scores = judge_scores(pipe, prompts, steps=args.steps, guidance=scale)
        sweep[str(scale)] = sum(scores) / len(scores)
    print(f"{split:>8} guidance sweep: " + ", ".join(f"{k}: {v:.3f}" for k, v in sweep.items()))
    return sweep


if __name__ == "__main__":
    main()
