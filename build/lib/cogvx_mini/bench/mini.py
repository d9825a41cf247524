"""Quality of the shipped mini model: the toy-world judge on seen and held-out combinations.

python -m cogvx_mini.bench mini [--prompts 64] [--device cuda] [--json book/data/mini_quality.json]

Generates videos for toy-world prompts of the training split (colour-direction pairs seen in
training) and of the held-out split (each prompt has a pair never seen), scores each with the
judge, sweeps the guidance scale on a subset, and prints the numbers (and writes them as JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cogvx_mini.data.toyworld import judge, render, sample_scene
from cogvx_mini.pipeline import MINI_GUIDANCE, evaluation_prompts, judge_scores, load_mini


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="per split")
    parser.add_argument("--sweep-prompts", type=int, default=24, help="per split and scale")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 4.5, 6.0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=MINI_GUIDANCE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_mini(args.weights)
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
    """The mean judge score of ``args.prompts`` generated videos of one split, and its time."""
    prompts = evaluation_prompts(split, args.prompts)
    start = time.perf_counter()
    scores = judge_scores(pipe, prompts, steps=args.steps, guidance=args.guidance)
    seconds = time.perf_counter() - start
    mean = sum(scores) / len(scores)
    print(
        f"{split:>8}: judge {mean:.3f} over {len(scores)} prompts "
        f"({seconds:.1f} s, {seconds / len(scores):.2f} s per video on {args.device})"
    )
    return {"mean": mean, "count": len(scores), "seconds": seconds}


def vae_ceiling(pipe, args: argparse.Namespace) -> dict:
    """The ceiling the VAE sets: the judge on ground-truth renders and on their reconstructions."""
    scenes = [sample_scene(10_000 + i, split="held_out") for i in range(args.sweep_prompts)]
    truth = torch.stack([render(s, 17, 64, 64) for s in scenes])
    with torch.no_grad():
        recon = pipe.vae.decode(pipe.vae.encode(truth.to(args.device)).mean).clamp(-1, 1).cpu()

    def mean_judge(videos) -> float:
        return sum(judge(v, s.caption) for v, s in zip(videos, scenes, strict=True)) / len(scenes)

    ceiling = {"ground_truth": mean_judge(truth), "vae_reconstruction": mean_judge(recon)}
    print(
        f"judge on ground truth {ceiling['ground_truth']:.3f}, on its VAE "
        f"reconstruction {ceiling['vae_reconstruction']:.3f} (the ceiling)"
    )
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
