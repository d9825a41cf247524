"""A concept the shipped mini model has never seen, taught with LoRA in about a minute on a CPU.

    python -m cogvx_mini.training.concept --json book/data/lora_concept.json   # `make lora-concept`

The toy world has circles, squares and triangles; ``NEW_SHAPES`` adds a diamond that no training
clip showed, and the toy text encoder gives the word "diamond" a vector the model never read. The
shipped model (``weights/assets/transformer_mini.safetensors``) therefore draws something else
for it. :func:`fine_tune` freezes that model, adds a LoRA (:mod:`cogvx_mini.training.lora`) and
trains only the LoRA on the ``diamond`` world of :data:`~cogvx_mini.training.train.WORLDS`
(the full world's scenes, the first object of each a diamond), with the mini loop's
:func:`~cogvx_mini.training.train.train`. :func:`measure` scores the model before and after on
unseen prompts that name a diamond — the judge, the strict judge, and ``new_shape_right``, the
share of captioned diamonds drawn as diamonds — and on the world's own prompts, which must not
collapse; :func:`ceiling` scores the real clips and the frozen VAE's reconstructions of them, the
most a model can score. ``main`` runs :data:`RECIPE` and writes all of it as JSON (chapter 9
reads it).
The same fine-tune through the training CLI: :meth:`ConceptRecipe.argv`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from cogvx_mini.training.lora import LoraSettings, add_lora, unload_lora
from cogvx_mini.training.train import (
    WORLDS,
    TrainConfig,
    TrainResult,
    World,
    build_mini_dataset,
    train,
)

if TYPE_CHECKING:
    from cogvx_mini.pipeline import Pipeline


@dataclass(frozen=True)
class ConceptRecipe:
    """A LoRA fine-tune of the shipped mini model on the ``world`` of a new shape: ``clips``
    training scenes (a ``new_shape_share`` of them with the new shape, ``None``: the world's
    share), ``steps`` AdamW steps of ``batch_size`` at ``lr`` (``warmup`` steps of linear
    warm-up, then cosine decay), LoRA of ``rank`` (``alpha``: ``None`` is α = r) on every block's
    ``qkv``, ``out``, ``fc1`` and ``fc2``, on ``threads`` CPU threads."""

    world: str = "diamond"
    rank: int = 8
    alpha: float | None = None
    lr: float = 4e-3
    warmup: int = 10
    steps: int = 150
    batch_size: int = 8
    clips: int = 256
    threads: int = 2
    new_shape_share: float | None = None

    def __post_init__(self) -> None:
        if WORLDS.get(self.world) is None or WORLDS[self.world].new_shape is None:
            worlds = [k for k, w in WORLDS.items() if w.new_shape is not None]
            raise ValueError(
                f"world: expected a world with a new shape {worlds}, got {self.world!r}"
            )
        share = self.new_shape_share
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(f"new_shape_share: expected a share in [0, 1], got {share}")
        self.train_config()  # checks steps, batch size, lr and warm-up
        self.lora()  # checks rank and alpha

    def world_spec(self) -> World:
        """The :class:`~cogvx_mini.training.train.World` it trains on (with its share)."""
        world = WORLDS[self.world]
        if self.new_shape_share is None:
            return world
        return dataclasses.replace(world, new_shape_share=self.new_shape_share)

    @property
    def shape(self) -> str:
        """The new shape the world adds (``"diamond"``)."""
        return self.world_spec().new_shape

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup
        )

    def lora(self) -> LoraSettings:
        return LoraSettings(rank=self.rank, alpha=self.alpha)

    def argv(self, out: str, init_from: str) -> list[str]:
        """The same run through ``python -m cogvx_mini.training.train`` (which also writes the
        LoRA in diffusers' format to ``OUT/lora/``); only at the world's own share."""
        own = WORLDS[self.world].new_shape_share
        if self.world_spec().new_shape_share != own:  # the CLI has no option for it
            raise ValueError(
                f"new_shape_share: expected the world's own {own} for the training CLI, "
                f"got {self.new_shape_share}"
            )
        alpha = [] if self.alpha is None else ["--lora-alpha", str(self.alpha)]
        return [
            *("--out", out, "--init-from", init_from, "--world", self.world),
            *("--lora-rank", str(self.rank), *alpha, "--lr", str(self.lr)),
            *("--warmup", str(self.warmup), "--steps", str(self.steps)),
            *("--batch-size", str(self.batch_size), "--clips", str(self.clips)),
            *("--threads", str(self.threads)),
        ]


# What two laptop cores teach in about a minute of training (chapter 9 measures it).
RECIPE = ConceptRecipe()


@dataclass
class FineTuned:
    """The outcome of :func:`fine_tune`: the base and the fine-tuned ``Pipeline`` (the EMA's
    LoRA merged into a plain copy of the base transformer), the run, the LoRA's trainable
    parameter count, and the seconds spent encoding the clips and training."""

    before: Pipeline
    after: Pipeline
    result: TrainResult
    trainable: int
    encode_seconds: float
    train_seconds: float


def fine_tune(recipe: ConceptRecipe = RECIPE, progress: bool = True) -> FineTuned:
    """Fine-tune the shipped mini model with a LoRA on ``recipe.world`` (its clips encoded by the
    shipped VAE, at the latent scale the base model learned with). Sets the torch threads."""
    from cogvx_mini.pipeline import load_mini

    torch.set_num_threads(recipe.threads)
    before = load_mini()
    torch.manual_seed(recipe.train_config().seed)  # the LoRA's A is drawn at random
    model = add_lora(copy.deepcopy(before.transformer), recipe.lora()).train()
    start = time.perf_counter()
    config = model.config
    dataset = build_mini_dataset(
        recipe.clips,
        progress=progress,
        world=recipe.world_spec(),
        text_shape=(config.max_text_len, config.text_dim),
    )
    dataset.latent_scale = before.latent_scale  # the scale the frozen base was trained at
    encoded = time.perf_counter()
    result = train(model, dataset, recipe.train_config(), None, progress=progress)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    after = dataclasses.replace(before, transformer=merged(result.ema))
    return FineTuned(before, after, result, trainable, encoded - start, result.seconds)


def merged(model: nn.Module) -> nn.Module:
    """A frozen eval copy of ``model`` with its LoRA merged into the weights (plain linears)."""
    return unload_lora(copy.deepcopy(model), merge=True).eval().requires_grad_(False)


def concept_scenes(recipe: ConceptRecipe, count: int, new: bool = True) -> list:
    """``count`` unseen scenes of ``recipe.world`` (:func:`~cogvx_mini.pipeline.evaluation_scenes`,
    whose seeds no training clip used), the first object of each in the new shape (``new``) or
    as the world draws it."""
    from cogvx_mini.pipeline import evaluation_scenes

    objects, shape = WORLDS[recipe.world].max_objects, recipe.shape if new else None
    return evaluation_scenes("train", count, max_objects=objects, new_shape=shape)


def concept_prompts(recipe: ConceptRecipe, count: int) -> dict[str, list[str]]:
    """The captions of the same :func:`concept_scenes` twice: ``"new"`` with the first object of
    each in the new shape, ``"own"`` as the world draws them."""
    return {
        kind: [s.caption for s in concept_scenes(recipe, count, new=kind == "new")]
        for kind in ("new", "own")
    }


@torch.no_grad()
def ceiling(recipe: ConceptRecipe, count: int) -> dict:
    """:func:`~cogvx_mini.pipeline.concept_summary` of the real clips ``[3, T, 64, 64]`` of the
    ``count`` new-shape scenes and of the shipped VAE's reconstructions of them (posterior
    mean): what the judges grant a perfect model, and a model that draws through this VAE."""
    from cogvx_mini.data.strict_judge import strict_judge
    from cogvx_mini.data.toyworld import judge_details, render
    from cogvx_mini.pipeline import concept_summary
    from cogvx_mini.vae import load_mini_vae

    vae, frames = load_mini_vae(), WORLDS[recipe.world].frames
    scenes = concept_scenes(recipe, count)
    real = torch.stack([render(s, frames, 64, 64) for s in scenes])  # [count, 3, T, 64, 64]
    decoded = [vae.decode(vae.encode(chunk).mean).clamp(-1, 1) for chunk in real.split(8)]
    out = {}
    for name, videos in (("ground_truth", real), ("vae_reconstruction", torch.cat(decoded))):
        verdicts = [
            (judge_details(v, s.caption), strict_judge(v, s.caption))
            for v, s in zip(videos, scenes, strict=True)
        ]
        out[name] = concept_summary(verdicts)
    return out


def measure(
    tuned: FineTuned,
    recipe: ConceptRecipe,
    count: int,
    steps: int = 50,
    models: tuple[str, ...] = ("before", "after"),
) -> dict:
    """Both judges' :func:`~cogvx_mini.pipeline.concept_summary` of each of ``models`` (the
    model before and after), for ``count`` of each kind of :func:`concept_prompts` (``steps``
    DDIM steps, the world's clip length): ``{"new": {"before": ..., "after": ...}, "own":
    {...}}``. Each ``"own"`` summary also holds ``new_shape_unasked``: the share of first objects
    the judge reads as the new shape although the caption names another — what a fine-tune that
    forgets the words would raise."""
    from cogvx_mini.data.strict_judge import strict_judge
    from cogvx_mini.data.toyworld import judge_details
    from cogvx_mini.pipeline import concept_summary, judge_videos

    prompts = concept_prompts(recipe, count)
    as_new = dict(zip(prompts["own"], prompts["new"], strict=True))  # same scene, same caption

    def read_as_new(video: torch.Tensor, prompt: str) -> bool:
        return judge_details(video, as_new[prompt]).objects[0].shape_ok

    kwargs = {"frames": WORLDS[recipe.world].frames, "steps": steps}
    out: dict = {"new": {}, "own": {}}
    for name in models:
        pipe, judges = getattr(tuned, name), (judge_details, strict_judge)
        out["new"][name] = concept_summary(judge_videos(pipe, prompts["new"], judges, **kwargs))
        own = judge_videos(pipe, prompts["own"], (*judges, read_as_new), **kwargs)
        unasked = sum(v[2] for v in own) / len(own)
        out["own"][name] = concept_summary([v[:2] for v in own]) | {"new_shape_unasked": unasked}
    return out


def cpu_name() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def report(tuned: FineTuned, recipe: ConceptRecipe, scores: dict, count: int) -> dict:
    """What ``main`` writes: the recipe, the run's size and time, the machine, the scores."""
    losses = tuned.result.losses
    return {
        "recipe": dataclasses.asdict(recipe),
        "shape": recipe.shape,
        "new_shape_share": recipe.world_spec().new_shape_share,
        "frames": WORLDS[recipe.world].frames,
        "trainable_parameters": tuned.trainable,
        "parameters": sum(p.numel() for p in tuned.before.transformer.parameters()),
        "steps": tuned.result.step,
        "encode_seconds": round(tuned.encode_seconds, 1),
        "train_seconds": round(tuned.train_seconds, 1),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "loss_first_25": sum(losses[:25]) / len(losses[:25]),
        "loss_last_25": sum(losses[-25:]) / len(losses[-25:]),
        "prompt_count": count,
        "prompts": concept_prompts(recipe, count),
        "scores": scores,
        "ceiling": ceiling(recipe, count),
    }


# The recipe's fields the command line sets (``--batch-size`` for ``batch_size``).
FIELDS = ("rank", "lr", "warmup", "steps", "batch_size", "clips", "threads", "new_shape_share")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in FIELDS:
        default = getattr(RECIPE, name)
        kind = float if default is None else type(default)  # new_shape_share: None or a share
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    parser.add_argument("--prompts", type=int, default=32, help="judged prompts of each kind")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--after-only", action="store_true", help="judge the fine-tune only")
    return parser.parse_args(argv)


def summary_line(scores: dict, shape: str) -> str:
    """One line of :func:`~cogvx_mini.pipeline.concept_summary`'s numbers."""
    line = f"judge {scores['judge']:.3f}, strict {scores['strict']:.3f}"
    if scores["new_shape_right"] is not None:
        line += f", {shape}s drawn as {shape}s {scores['new_shape_right']:.0%}"
    if "new_shape_unasked" in scores:
        line += f", {shape}s drawn unasked {scores['new_shape_unasked']:.0%}"
    return line


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        recipe = ConceptRecipe(**{name: getattr(args, name) for name in FIELDS})
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    tuned = fine_tune(recipe)
    print(
        f"{tuned.result.step} steps in {tuned.train_seconds:.0f} s (clips encoded in "
        f"{tuned.encode_seconds:.0f} s), {tuned.trainable:,} trainable parameters"
    )
    start = time.perf_counter()
    models = ("after",) if args.after_only else ("before", "after")
    scores = measure(tuned, recipe, args.prompts, models=models)
    for kind, by_model in scores.items():
        for name, got in by_model.items():
            print(f"{kind} prompts, {name:>6}: {summary_line(got, recipe.shape)}")
    results = report(tuned, recipe, scores, args.prompts)
    results["judge_seconds"] = round(time.perf_counter() - start, 1)  # samples, VAE, judges
    for name, got in results["ceiling"].items():
        print(f"{name}: {summary_line(got, recipe.shape)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
