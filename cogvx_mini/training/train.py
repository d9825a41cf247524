"""The mini training loop: a text-to-video diffusion transformer on VAE latents of the toy world.

    python -m cogvx_mini.training.train --out runs/mini   # `make train`: ships the EMA weights
    python -m cogvx_mini.training.train --out runs/mini --steps 50   # resumes if interrupted
    python -m cogvx_mini.training.train --out runs/lora --init-from W --lora-rank 8   # LoRA only

What happens, in CogVideoX's order [@yang2024cogvideox]:

1. **Data**: toy-world scenes of the training split (no held-out colour-direction pair), rendered
   at several durations, frame-packed into shape buckets (``cogvx_mini.frame_pack``).
2. **Frozen VAE, latents cached**: every clip is encoded once; training samples the posterior
   ``mean + std * noise`` each step, scaled by the latent scale. The text is encoded once too.
3. **v-prediction loss** at timesteps from **explicit uniform sampling** across the batch, with
   captions dropped to the empty prompt 10% of the time (for classifier-free guidance).
4. **AdamW**, warm-up then cosine decay, gradient clipping, and an **EMA** of the weights (what
   ships): the step of ``cogvx_mini.training.step``, shared with every other loop.
5. A **tqdm** bar, the loss per timestep bucket, **atomic checkpoints** (safetensors + JSON, no
   pickle) that resume exactly, a save on Ctrl-C / SIGTERM, and a non-finite loss that stops
   training while the last good checkpoint stays in place.

``train()`` reads as the recipe: ``sample_batch`` -> ``train_step`` -> ``maybe_save``.

With ``--lora-rank R`` (``--lora-alpha``, ``--lora-dropout``, ``--lora-targets``) the weights of
``--init-from`` are frozen and only a LoRA of rank R trains (``cogvx_mini.training.lora``); the
run writes ``OUT/lora/pytorch_lora_weights.safetensors`` (diffusers' format) beside the EMA
weights with the LoRA merged, and resumes only with the same LoRA.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from cogvx_mini.diffusion import NoiseSchedule
from cogvx_mini.frame_pack import Bucket, bucket_batches, pack_to_bucket
from cogvx_mini.timestep_sampling import TimestepLossTracker, batch_timesteps
from cogvx_mini.training.ema import EMA
from cogvx_mini.training.lora import LoraSettings, add_lora, lora_summary
from cogvx_mini.training.objective import DiffusionBatch, Objective
from cogvx_mini.training.overrides import parse_overrides
from cogvx_mini.training.schedule import LRSchedule
from cogvx_mini.training.step import NonFiniteLossError, train_step
from cogvx_mini.weights.assets import ASSETS
from cogvx_mini.weights.checkpoint import (
    load_checkpoint,
    load_weights,
    remove_stale_temporaries,
    save_checkpoint,
    save_weights,
    sha256_of,
    weights_metadata,
)
from cogvx_mini.weights.mini import WEIGHTS_NAME, read_mini_weights

CHECKPOINT_NAME = "checkpoint.safetensors"
CACHE_NAME = "latents.safetensors"


@dataclass
class TrainConfig:
    """Hyper-parameters of a mini run. ``timestep_strata`` is the ``n`` of explicit uniform
    sampling across one batch (1 = plain uniform); ``snr_shift_scale`` picks the schedule."""

    steps: int = 3600
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 200
    final_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    cfg_dropout: float = 0.1
    timestep_strata: int = 16
    snr_shift_scale: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    tracker_buckets: int = 10
    # Progressive resolution: ((first step, clip height), ...), the first from step 0; a stage
    # draws its batches only from the clips of its height. (): every clip throughout.
    resolution_stages: tuple[tuple[int, int], ...] = ()
    # The final high-quality fine-tune: from step best_share_from on (0: never) only the best
    # best_share of the last stage's clips by LatentClip.quality.
    best_share_from: int = 0
    best_share: float = 0.2

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "timestep_strata", "tracker_buckets", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected a value in [0, 1), got {self.ema_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: expected two values in [0, 1), got {self.betas}")
        self.lr_schedule()  # validates lr, warmup and final_lr_ratio
        self.resolution_stages = tuple(tuple(s) for s in self.resolution_stages)  # JSON: lists
        starts = [start for start, _ in self.resolution_stages]
        if starts and (starts[0] != 0 or starts != sorted(set(starts)) or starts[-1] >= self.steps):
            raise ValueError(
                "resolution_stages: expected ((0, height), (step, height), ...) with increasing "
                f"first steps below steps={self.steps}, got {self.resolution_stages}"
            )
        first = self.best_share_from
        if first and not (max(starts, default=0) < first < self.steps):
            raise ValueError(
                f"best_share_from: expected a step after the last resolution stage's first and "
                f"below steps={self.steps}, got {first}"
            )
        if not 0.0 < self.best_share <= 1.0:
            raise ValueError(f"best_share: expected a share in (0, 1], got {self.best_share}")

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(snr_shift_scale=self.snr_shift_scale)

    def lr_schedule(self) -> LRSchedule:
        """Linear warm-up, then a cosine decay to ``final_lr_ratio · lr`` at the last step."""
        return LRSchedule(self.lr, self.warmup, self.steps, "cosine", self.final_lr_ratio)


@dataclass
class LatentClip:
    """One cached training clip: posterior ``mean``/``std`` ``[C, T', h, w]`` and its text."""

    mean: torch.Tensor
    std: torch.Tensor
    text: torch.Tensor  # [L, D] text embedding
    caption: str
    bucket: Bucket
    quality: float = 1.0  # a curation score, higher is better (best_share picks by it)


@dataclass
class LatentDataset:
    """Cached posteriors of the frozen VAE (sampled anew each step), grouped by bucket, with the
    empty prompt's embedding for CFG dropout. ``meta`` says what made it (the cache key).

    Not ``scale/``'s :class:`~cogvx_mini.training.latent_cache.LatentSource`, which serves
    fixed latents from disk shards through a :class:`~cogvx_mini.training.latent_cache.BatchPlan`.
    """

    clips: list[LatentClip]
    empty_text: torch.Tensor  # [L, D]
    latent_scale: float = 1.0
    meta: dict = field(default_factory=dict)

    def shapes(self) -> list[tuple[int, int, int]]:
        return [(c.bucket.frames, c.bucket.height, c.bucket.width) for c in self.clips]

    def state_dict(self) -> dict:
        """Tensors and JSON values only (for :func:`save_checkpoint`; no pickle)."""
        clips = [
            dataclasses.asdict(c) | {"bucket": dataclasses.astuple(c.bucket)} for c in self.clips
        ]
        return {
            "clips": clips,
            "empty_text": self.empty_text,
            "latent_scale": self.latent_scale,
            "meta": self.meta,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> LatentDataset:
        clips = [LatentClip(**(c | {"bucket": Bucket(*c["bucket"])})) for c in state["clips"]]
        return cls(clips, state["empty_text"], state["latent_scale"], state["meta"])


@dataclass(frozen=True)
class World:
    """Which toy-world scenes a run trains on: up to ``max_objects`` objects per scene, clips of
    the ``lengths`` (frames) in ``lengths``, frame-packed into buckets of ``bucket_frames``
    frames; objects of the ``colours`` and ``sizes`` named (``None``: all); with ``new_shape``
    (one of ``NEW_SHAPES``, a concept outside the world), the first object of a
    ``new_shape_share`` of the scenes is drawn as it. ``frames`` is the length it is judged at."""

    max_objects: int
    lengths: tuple[int, ...]
    new_shape: str | None = None
    new_shape_share: float = 1.0
    colours: tuple[str, ...] | None = None
    sizes: tuple[str, ...] | None = None
    bucket_frames: tuple[int, ...] = (9, 17)  # at 64x64: 3 and 5 latent frames

    @property
    def frames(self) -> int:
        return max(self.lengths)

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return tuple(Bucket(n, 64, 64) for n in self.bucket_frames)

    def scene_options(self) -> dict:
        """The keyword arguments of ``toyworld.sample_scene`` (and of the functions that draw
        scenes through it) that make its scenes this world's."""
        return {"max_objects": self.max_objects, "colours": self.colours, "sizes": self.sizes}


WORLDS = {
    # The shipped model's world: 1-3 objects, clips of 9-21 frames (frame-packed into buckets).
    "full": World(max_objects=3, lengths=(9, 13, 17, 21)),
    # What two laptop cores can learn in minutes: one large object in red, green or blue (three
    # of the four attributes keep all their values), 13-frame clips (4 latent frames). At 9
    # frames an object moves twice as far per frame as at 17, and the mini VAE, trained on 17,
    # draws them worse (its reconstructions' judge ~0.85, against 1.00 at 13 and 17 frames);
    # 13 frames cost 1.2x a 9-frame step. A GPU sweep of the recipe at the laptop's step count
    # (tools/laptop_sweep.py, book/data/laptop_sweep.json) chose it.
    "laptop": World(
        max_objects=1,
        lengths=(13,),
        colours=("blue", "green", "red"),
        sizes=("large",),
        bucket_frames=(13,),
    ),
    # A concept the shipped model never saw, for a LoRA fine-tune of it (chapter 9): the full
    # world's scenes, three in four with the first object a diamond. The others keep what the
    # model knows (prior preservation): trained on diamonds alone, it draws the first object of
    # other captions as one too. One length, 17 frames, the mini VAE's own (it reconstructs
    # 9-frame clips far worse: the judge of its reconstructions falls by ~0.2).
    "diamond": World(max_objects=3, lengths=(17,), new_shape="diamond", new_shape_share=0.75),
}


def toy_clips(
    count: int,
    lengths: Sequence[int] = (9, 13, 17, 21),
    height: int = 64,
    width: int = 64,
    split: str = "train",
    first_seed: int = 0,
    max_objects: int = 3,
    new_shape: str | None = None,
    new_shape_share: float = 1.0,
    colours: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
):
    """Toy-world clips ``([3, T, H, W], caption)`` of mixed durations, deterministic by seed
    (``new_shape``: the first object of a ``new_shape_share`` of the scenes, drawn by seed, in
    this new shape; ``colours``, ``sizes``: as in ``toyworld.sample_scene``)."""
    from cogvx_mini.data.toyworld import render, sample_scene

    if not 0.0 <= new_shape_share <= 1.0:
        raise ValueError(f"new_shape_share: expected a share in [0, 1], got {new_shape_share}")
    for seed in range(first_seed, first_seed + count):
        new = new_shape if random.Random(seed * 104_729 + 3).random() < new_shape_share else None
        scene = sample_scene(seed, max_objects, split, new, colours, sizes)
        length = lengths[random.Random(seed * 7919 + 1).randrange(len(lengths))]
        yield render(scene, length, height, width), scene.caption


def with_images(clips, ratio: float, seed: int = 0) -> list[tuple[torch.Tensor, str]]:
    """``clips`` ``([3, T, H, W], caption)`` and, for a ``ratio`` share of them (drawn with
    ``seed``), one of their frames as a 1-frame video ``[3, 1, H, W]`` under the same caption:
    CogVideoX's images mixed into video training (at ratio r, r / (1 + r) of the samples)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: expected a share in [0, 1], got {ratio}")
    clips = list(clips)
    rng = random.Random(seed)
    images = []
    for i in sorted(rng.sample(range(len(clips)), round(ratio * len(clips)))):
        video, caption = clips[i]
        frame = rng.randrange(video.shape[1])
        images.append((video[:, frame : frame + 1], caption))
    return clips + images


@torch.no_grad()
def cache_latents(
    clips,
    vae: nn.Module,
    text_encoder,
    buckets: Sequence[Bucket],
    latent_scale: float | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> LatentDataset:
    """Frame-pack each clip into its bucket, encode it once with the frozen ``vae``.

    ``latent_scale`` multiplies latents (``None``: ``1 / std`` of posterior samples, so the
    diffusion sees unit-variance latents, the role of the VAE's ``scaling_factor``).
    """
    from cogvx_mini.frame_pack import assign_bucket

    vae.eval()
    # Encode where the VAE's weights are (any object with encode() works: then on the CPU);
    # the cache itself stays on the CPU.
    params = getattr(vae, "parameters", None)
    device = next(params(), torch.empty(0)).device if params else torch.device("cpu")
    pending: dict[Bucket, list[tuple[torch.Tensor, str]]] = {}
    for video, caption in clips:
        bucket = assign_bucket(*video.shape[1:], buckets)
        pending.setdefault(bucket, []).append((pack_to_bucket(video, bucket), caption))
    out: list[LatentClip] = []
    total = sum(len(v) for v in pending.values())
    bar = tqdm(total=total, desc="encoding clips", disable=not progress, leave=False)
    for bucket, items in sorted(pending.items()):
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            posterior = vae.encode(torch.stack([v for v, _ in chunk]).to(device))
            mean, std = posterior.mean.cpu(), posterior.std.cpu()
            texts = text_encoder.encode([c for _, c in chunk])
            for i, (_, caption) in enumerate(chunk):
                out.append(
                    LatentClip(
                        mean[i].clone(),
                        std[i].clone(),
                        texts[i].clone(),
                        caption,
                        bucket,
                    )
                )
            bar.update(len(chunk))
    bar.close()
    if latent_scale is None:
        # Standard deviation of posterior samples: spread of the means plus the posterior noise.
        means = torch.cat([c.mean.flatten() for c in out])
        noise_var = torch.cat([c.std.flatten() ** 2 for c in out]).mean()
        latent_scale = 1.0 / (means.var() + noise_var).sqrt().item()
    return LatentDataset(out, text_encoder.encode([""])[0], latent_scale)


class EpochPlan:
    """Which clips form the batch of each global step: every epoch is a seeded reshuffle of
    the bucket batches, so the batch of any step is known without replaying earlier ones."""

    def __init__(self, dataset: LatentDataset, batch_size: int, seed: int):
        self.shapes, self.batch_size, self.seed = dataset.shapes(), batch_size, seed
        self.buckets = sorted({c.bucket for c in dataset.clips})
        self.per_epoch = len(bucket_batches(self.shapes, self.buckets, batch_size, seed))
        self._epoch, self._batches = -1, []

    def batch(self, step: int) -> tuple[Bucket, list[int]]:
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._batches = bucket_batches(
                self.shapes, self.buckets, self.batch_size, seed=self.seed + epoch
            )
        return self._batches[index]


class StagedPlan:
    """Training in stages: an :class:`EpochPlan` for each ``(first step, clip indices)`` of
    ``stages`` (:func:`stage_clips`) over those clips; batches hold indices into the dataset."""

    def __init__(self, dataset: LatentDataset, batch_size: int, seed: int, stages) -> None:
        self.stages = []
        for start, chosen in stages:
            subset = dataclasses.replace(dataset, clips=[dataset.clips[i] for i in chosen])
            self.stages.append((start, chosen, EpochPlan(subset, batch_size, seed)))

    def batch(self, step: int) -> tuple[Bucket, list[int]]:
        start, chosen, plan = next(s for s in reversed(self.stages) if s[0] <= step)
        bucket, indices = plan.batch(step - start)
        return bucket, [chosen[i] for i in indices]


def stage_clips(dataset: LatentDataset, cfg: TrainConfig) -> list[tuple[int, list[int]]]:
    """``(first step, clip indices)`` of each stage: one per ``cfg.resolution_stages`` (the
    clips of its height; else one stage of every clip), then from ``cfg.best_share_from`` the
    best ``cfg.best_share`` of the last stage's clips by quality."""
    clips = dataset.clips
    stages = [(0, list(range(len(clips))))]
    if cfg.resolution_stages:
        heights = sorted({c.bucket.height for c in clips})
        stages = [(start, [i for i, c in enumerate(clips) if c.bucket.height == height])
                  for start, height in cfg.resolution_stages]  # fmt: skip
        for (_, chosen), (_, height) in zip(stages, cfg.resolution_stages, strict=True):
            if not chosen:
                raise ValueError(
                    f"resolution_stages: no clip of height {height} in the dataset ({heights})"
                )
    if cfg.best_share_from:
        pool = stages[-1][1]
        count = max(1, round(cfg.best_share * len(pool)))
        best = sorted(pool, key=lambda i: -clips[i].quality)[:count]
        stages.append((cfg.best_share_from, sorted(best)))
    return stages


def batch_plan(dataset: LatentDataset, cfg: TrainConfig) -> EpochPlan | StagedPlan:
    """The run's plan of batches: staged (:func:`stage_clips`) if ``cfg`` has stages."""
    if cfg.resolution_stages or cfg.best_share_from:
        return StagedPlan(dataset, cfg.batch_size, cfg.seed, stage_clips(dataset, cfg))
    return EpochPlan(dataset, cfg.batch_size, cfg.seed)


class NaNLossError(NonFiniteLossError):
    """Training stopped on a non-finite loss; the last good checkpoint was kept."""


@dataclass
class TrainResult:
    losses: list[float]
    tracker: TimestepLossTracker
    model: nn.Module
    ema: nn.Module
    step: int
    seconds: float
    latent_scale: float = 1.0
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM (after a checkpoint)


@dataclass
class RunState:
    """Everything a resumed run needs: the model, optimiser, EMA, tracker and RNG, the losses
    so far and the step count. ``state_dict()`` holds tensors and JSON values only."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA
    tracker: TimestepLossTracker
    generator: torch.Generator
    losses: list[float] = field(default_factory=list)
    step: int = 0

    @classmethod
    def start(cls, model: nn.Module, cfg: TrainConfig) -> RunState:
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        tracker = TimestepLossTracker(cfg.schedule().num_train_timesteps, cfg.tracker_buckets)
        gen = torch.Generator().manual_seed(cfg.seed)
        return cls(model, opt, EMA(model, cfg.ema_decay), tracker, gen)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tracker": self.tracker.state_dict(),
            "generator": self.generator.get_state(),
            "losses": self.losses,
            "step": self.step,
        }

    def load_state_dict(self, state: dict, where: Path) -> None:
        check_same_model(self.model, state["model"], where)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tracker.load_state_dict(state["tracker"])
        self.generator.set_state(state["generator"])
        self.losses, self.step = list(state["losses"]), state["step"]


def check_same_model(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Raise ``ValueError`` naming the differences if ``state`` is of another architecture."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    if ours != theirs:
        diff = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        shown = ", ".join(
            f"{k}: checkpoint {theirs.get(k)} vs model {ours.get(k)}" for k in diff[:4]
        )
        raise ValueError(
            f"checkpoint {where} holds another model ({len(diff)} tensors differ: {shown}); "
            "use a new --out folder or the model settings it was started with"
        )


def resume_from(run: RunState, cfg: TrainConfig, path: Path) -> None:
    """Continue from ``path`` if it exists (the same config and model, else ``ValueError``)."""
    remove_stale_temporaries(path)  # left by a save that was killed
    if not path.is_file():
        return
    state = load_checkpoint(path)
    saved, current = state.get("lora") or {}, lora_summary(run.model) or {}  # {}: no LoRA
    if saved != current:
        name = next(
            k for k in sorted(saved.keys() | current.keys()) if saved.get(k) != current.get(k)
        )
        raise ValueError(
            f"checkpoint {path} was written with another LoRA ({name} [rank, alpha, dropout]: "
            f"checkpoint {saved.get(name)} vs model {current.get(name)}); use a new --out "
            "folder or the same --lora settings"
        )
    # A field added since the checkpoint was written counts as its default.
    saved = dataclasses.asdict(TrainConfig()) | state["config"]
    if saved != dataclasses.asdict(cfg):
        changed = sorted(k for k, v in dataclasses.asdict(cfg).items() if saved.get(k) != v)
        raise ValueError(
            f"checkpoint {path} was written with another TrainConfig (changed: {changed}); "
            "use a new --out folder or the same settings"
        )
    run.load_state_dict(state, path)


def sample_batch(
    dataset: LatentDataset, plan: EpochPlan, step: int, cfg: TrainConfig, gen: torch.Generator
) -> DiffusionBatch:
    """The batch of ``step`` (on the CPU): posterior samples scaled to unit variance, captions
    dropped to the empty prompt with probability ``cfg.cfg_dropout``, stratified timesteps."""
    _, idx = plan.batch(step)
    clips = [dataset.clips[i] for i in idx]
    b = len(clips)
    mean = torch.stack([c.mean for c in clips])
    std = torch.stack([c.std for c in clips])
    x0 = (mean + std * torch.randn(mean.shape, generator=gen)) * dataset.latent_scale
    text = torch.stack([c.text for c in clips])
    drop = torch.rand(b, generator=gen) < cfg.cfg_dropout
    text = torch.where(drop[:, None, None], dataset.empty_text.expand_as(text), text)
    t = batch_timesteps(b, min(cfg.timestep_strata, b), cfg.schedule().num_train_timesteps, gen)
    return DiffusionBatch(x0, torch.randn(x0.shape, generator=gen), text, t)


class StopRequest:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a flag the loop checks after each step, so the
    run saves a checkpoint and then stops, instead of dying mid-step (a second Ctrl-C stops
    at once)."""

    def __init__(self) -> None:
        self.requested = False

    def _request(self, signum, frame) -> None:
        if self.requested:  # asked twice: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in old:
            signal.signal(s, self._request)
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def train(
    model: nn.Module,
    dataset: LatentDataset,
    cfg: TrainConfig,
    out_dir: str | Path | None,
    *,
    resume: bool = True,
    stop_at: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` (``forward(latents, text, timesteps) -> v``) on ``dataset``.

    Checkpoints go to ``out_dir/checkpoint.safetensors`` every ``cfg.checkpoint_every`` steps,
    at the end and on Ctrl-C / SIGTERM (``out_dir=None``: none); an existing checkpoint is
    continued exactly (same losses as an uninterrupted run) unless ``resume`` is off.
    ``stop_at`` ends early at that step, ``max_seconds`` after that much time (both saved);
    ``on_step(step, loss)`` runs after each step; ``objective`` is the loss (default: plain
    v-prediction on ``cfg``'s schedule). A non-finite loss raises
    :class:`NaNLossError` before the weights change, without touching the last checkpoint.
    """
    ckpt = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    run, lr = RunState.start(model, cfg), cfg.lr_schedule()
    objective = objective if objective is not None else Objective(cfg.schedule())
    if ckpt is not None and resume:
        resume_from(run, cfg, ckpt)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    device = next(model.parameters()).device  # batches are drawn on the CPU, then moved
    plan, start, stop = batch_plan(dataset, cfg), time.perf_counter(), False
    model.train()
    bar = tqdm(total=cfg.steps, initial=run.step, desc="training", disable=not progress)
    with StopRequest().installed() as signals:
        while run.step < end and not stop:
            batch = sample_batch(dataset, plan, run.step, cfg, run.generator).to(device)
            per_sample = guarded_step(run, objective, batch, lr(run.step), cfg, ckpt, bar)
            record_step(run, batch.timesteps, per_sample, bar, on_step)
            out_of_time = max_seconds is not None and time.perf_counter() - start > max_seconds
            stop = out_of_time or signals.requested
            maybe_save(run, cfg, dataset, ckpt, force=stop or run.step == end)
    bar.close()
    ema, seconds = run.ema.averaged_model(model), time.perf_counter() - start
    result = TrainResult(run.losses, run.tracker, model, ema, run.step, seconds)
    return dataclasses.replace(
        result, latent_scale=dataset.latent_scale, interrupted=signals.requested
    )


def guarded_step(
    run: RunState,
    objective: Objective,
    batch: DiffusionBatch,
    lr: float,
    cfg: TrainConfig,
    ckpt: Path | None,
    bar,
) -> torch.Tensor:
    """:func:`train_step`; a non-finite loss names the last good checkpoint (left in place)."""
    try:
        return train_step(
            run.model, objective, batch, run.optimizer, lr, cfg.grad_clip, run.step, run.ema
        )
    except NonFiniteLossError as err:
        bar.close()
        kept = f"; the last good checkpoint is {ckpt}" if ckpt and ckpt.is_file() else ""
        raise NaNLossError(f"{err}{kept}") from None


def record_step(run: RunState, timesteps, per_sample, bar, on_step) -> None:
    """Count the step: losses, the per-timestep tracker, the progress bar, the callback."""
    run.tracker.update(timesteps.cpu(), per_sample.cpu())
    run.losses.append(per_sample.mean().item())
    run.step += 1
    bar.update(1)
    if run.step % 25 == 0:
        bar.set_postfix(loss=f"{sum(run.losses[-25:]) / 25:.4f}")
    if on_step is not None:
        on_step(run.step, run.losses[-1])


def maybe_save(
    run: RunState, cfg: TrainConfig, dataset: LatentDataset, path: Path | None, force: bool
) -> None:
    """Write the checkpoint every ``cfg.checkpoint_every`` steps (or when ``force``)."""
    if path is not None and (force or run.step % cfg.checkpoint_every == 0):
        state = run.state_dict() | {"config": dataclasses.asdict(cfg)}
        state["lora"] = lora_summary(run.model)  # resumed only with the same LoRA
        save_checkpoint(state | {"latent_scale": dataset.latent_scale}, path)


def cache_key(
    clips: int, world: World, vae_weights: Path | None, text_shape: tuple[int, int] = (32, 64)
) -> dict:
    """What a latent cache depends on: the clips, their world, the VAE file's digest and the
    text embedding's ``(max_text_len, text_dim)``."""
    vae_file = Path(vae_weights) if vae_weights is not None else ASSETS / "vae_mini.safetensors"
    key = {"clips": clips, "lengths": list(world.lengths), "vae_sha256": sha256_of(vae_file)}
    # Caches made before the key had an object count or a text shape stay valid for the defaults.
    if world.max_objects != WORLDS["full"].max_objects:
        key["max_objects"] = world.max_objects
    if tuple(text_shape) != (32, 64):
        key["text_shape"] = list(text_shape)
    if world.new_shape is not None:
        key["new_shape"] = [world.new_shape, world.new_shape_share]
    for name in ("colours", "sizes", "bucket_frames"):
        if getattr(world, name) != getattr(WORLDS["full"], name):
            key[name] = list(getattr(world, name))
    return key


def build_mini_dataset(
    count: int,
    progress: bool = True,
    world: World = WORLDS["full"],
    vae_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    text_shape: tuple[int, int] = (32, 64),
) -> LatentDataset:
    """The toy world's training split, encoded by the mini VAE (the shipped weights unless
    ``vae_weights``, run on ``device``) and the toy text encoder, whose embeddings are
    ``text_shape`` = ``(max_text_len, text_dim)`` of the transformer that will train on them."""
    from cogvx_mini.data.text_encoder import ToyTextEncoder
    from cogvx_mini.vae import load_mini_vae

    vae = load_mini_vae(vae_weights).to(device)
    clips = toy_clips(
        count,
        world.lengths,
        new_shape=world.new_shape,
        new_shape_share=world.new_shape_share,
        **world.scene_options(),
    )
    text = ToyTextEncoder(dim=text_shape[1], max_length=text_shape[0])
    return cache_latents(clips, vae, text, world.buckets, progress=progress)


def cached_dataset(out: Path, key: dict, build: Callable[[], LatentDataset]) -> LatentDataset:
    """``out/latents.safetensors`` if it was made from ``key``, else ``build()`` (and cache it).

    A cache of other clips or another VAE is rebuilt, unless a checkpoint in ``out`` was trained
    on it: then the run is refused (its resumed half would train on other data)."""
    path = out / CACHE_NAME
    remove_stale_temporaries(path)
    if path.is_file():
        dataset = LatentDataset.from_state_dict(load_checkpoint(path))
        if dataset.meta.get("key") == key:
            return dataset
        if (out / CHECKPOINT_NAME).is_file():
            raise SystemExit(
                f"error: {path} was made from {dataset.meta.get('key')}, not {key}, and "
                f"{out / CHECKPOINT_NAME} trained on it: use a new --out folder"
            )
        print(f"{path} was made from other clips or another VAE: encoding again")
    dataset = build()
    dataset.meta["key"] = key
    save_checkpoint(dataset.state_dict(), path)
    return dataset


# Named argument sets; `--recipe NAME` puts them first, so arguments given after them override.
RECIPES = {
    # `make train` and chapter 7: what two laptop cores learn in about 14 minutes. One-object
    # captions are 6 words: 8 text tokens instead of 32 make each step ~35% cheaper.
    "laptop": (
        "--world laptop --clips 3000 --batch-size 32 --steps 4000 --lr 4e-3 --threads 2 "
        "--judge-prompts 64 --model max_text_len=8"
    ).split(),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the mini text-to-video transformer.")
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="start from these arguments")
    parser.add_argument("--out", type=Path, default=Path("runs/mini"))
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--clips", type=int, default=1200, help="training scenes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    _add_schedule_args(parser)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after")
    parser.add_argument("--ship", action="store_true", help=f"write assets/{WEIGHTS_NAME}")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model in place (same weights)"
    )
    parser.add_argument("--vae-weights", type=Path, default=None, help="default: shipped")
    parser.add_argument(
        "--world", choices=sorted(WORLDS), default="full", help="the scenes (laptop: one object)"
    )
    parser.add_argument(
        "--judge-prompts",
        type=int,
        default=0,
        help="after training, judge the EMA model on this many unseen prompts of its world",
    )
    parser.add_argument(
        "--model",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="TransformerConfig.mini() overrides, e.g. num_layers=8 num_heads=8",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from these transformer weights (and their config)",
    )
    _add_lora_args(parser)
    args = parser.parse_args(argv)
    if args.recipe is not None:
        argv = sys.argv[1:] if argv is None else argv
        args = parser.parse_args([*RECIPES[args.recipe], *argv])
    if args.clips < 1:
        parser.error(f"--clips: expected a positive integer, got {args.clips}")
    if args.judge_prompts < 0:
        parser.error(f"--judge-prompts: expected a count >= 0, got {args.judge_prompts}")
    if args.ship and args.world != "full":
        parser.error(f"--ship: the shipped model is of the full world, not --world {args.world}")
    if args.init_from is not None and args.model:
        parser.error("--init-from takes the config stored with the weights; drop --model")
    if args.lora_rank and args.init_from is None:
        parser.error("--lora-rank fine-tunes a trained model: give its weights with --init-from")
    if args.lora_rank and args.ship:
        parser.error("--ship replaces the shipped full model; a LoRA run writes OUT/lora/")
    try:
        args.lora = lora_settings(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def _add_schedule_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument(
        "--warmup", type=int, default=TrainConfig.warmup, help="steps of linear LR warm-up"
    )


def _add_lora_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora-rank", type=int, default=0, help="train only a LoRA of this rank (0: all weights)"
    )
    parser.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument(
        "--lora-targets",
        nargs="+",
        default=list(LoraSettings.targets),
        help="block projections to adapt (qkv out fc1 fc2)",
    )


def lora_settings(args: argparse.Namespace) -> LoraSettings | None:
    """The ``LoraSettings`` of ``--lora-*`` (checked), ``None`` without ``--lora-rank``."""
    if not args.lora_rank:
        return None
    return LoraSettings(
        args.lora_rank, args.lora_alpha, args.lora_dropout, tuple(args.lora_targets)
    )


def build_model(args: argparse.Namespace, seed: int):
    """The transformer to train: ``--model`` overrides on ``mini()``, or ``--init-from``."""
    from cogvx_mini.training.scale_config import build_transformer_config
    from cogvx_mini.transformer import CogVideoXTransformer

    model_cfg = build_transformer_config("mini", parse_overrides(args.model, "--model"))
    init_state = None
    if args.init_from is not None:
        model_cfg, init_state, _ = read_mini_weights(args.init_from)
    torch.manual_seed(seed)
    model = CogVideoXTransformer(model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)  # float16 files are cast to the model's float32
    if getattr(args, "lora", None) is not None:
        add_lora(model, args.lora)  # the loaded weights frozen, only the LoRA factors train
    return model.to(args.device), model_cfg


def ship(weights: Path, target: Path, finished: bool, log: Callable[[str], None] = print) -> bool:
    """Copy a finished run's ``weights`` over ``target`` atomically, saying what is replaced.

    A run that stopped early (time limit, Ctrl-C) is not shipped: returns ``False``."""
    new = weights_metadata(weights)
    if not finished:
        log(f"not shipped: the run stopped after step {new.get('steps')}; run it to the end")
        return False
    if target.is_file():
        old = weights_metadata(target)
        for k in ("steps", "transformer_config", "init_from"):
            if old.get(k) != new.get(k):
                log(f"  {k}: {old.get(k)} -> {new.get(k)}")
        log(f"replacing {target} (trained {old.get('steps')} steps) by {weights}")
    save_weights(load_weights(weights), target, metadata=new)
    log(f"shipped: {target}")
    return True


def export_ema(result: TrainResult, out: Path, model_cfg, cfg: TrainConfig, args) -> Path:
    """The EMA weights in float16 (half the file; loading casts back to float32) with metadata.

    A LoRA run also writes the EMA's LoRA to ``out/lora/`` in diffusers' format; the weights
    file then holds the model with it merged, so that every loader of mini weights reads it."""
    ema = result.ema
    if lora_summary(ema) is not None:
        from cogvx_mini.training.lora import save_lora_diffusers, unload_lora

        save_lora_diffusers(ema, out / "lora")
        ema = unload_lora(copy.deepcopy(ema), merge=True)
    meta = {
        "transformer_config": json.dumps(dataclasses.asdict(model_cfg)),
        "snr_shift_scale": str(cfg.snr_shift_scale),
        "latent_scale": str(result.latent_scale),
        "steps": str(result.step),
        "init_from": str(args.init_from or ""),
    }
    if getattr(args, "lora", None) is not None:
        meta["lora"] = json.dumps(dataclasses.asdict(args.lora))
    sd = ema.state_dict()
    state = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    return save_weights(state, out / WEIGHTS_NAME, metadata=meta)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cfg = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup
        )
        model, model_cfg = build_model(args, cfg.seed)  # --model overrides checked by name
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    torch.set_num_threads(args.threads)
    # TF32 matmuls on GPUs that have them: the mini model trains in float32.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    for old in ("checkpoint.pt", "latents.pt"):  # pickles of earlier versions: never loaded
        if (args.out / old).is_file():
            print(f"ignoring {args.out / old} (an older pickle format, not loaded)")
    start = time.perf_counter()
    world = WORLDS[args.world]
    text_shape = (model_cfg.max_text_len, model_cfg.text_dim)
    key = cache_key(args.clips, world, args.vae_weights, text_shape)
    dataset = cached_dataset(
        args.out,
        key,
        lambda: build_mini_dataset(
            args.clips,
            world=world,
            vae_weights=args.vae_weights,
            device=args.device,
            text_shape=text_shape,
        ),
    )
    if args.init_from is not None:  # a fine-tune sees latents at the scale its model learned
        dataset.latent_scale = float(read_mini_weights(args.init_from)[2]["latent_scale"])
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = f" (LoRA rank {args.lora_rank}: {trained:,} trained)" if args.lora_rank else ""
    print(
        f"{len(dataset.clips)} clips cached (latent scale {dataset.latent_scale:.3f}); "
        f"model: {millions:.2f} M parameters{lora}"
    )
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    if args.compile:
        model.compile()  # in place: parameter names, the EMA and checkpoints are unchanged
    try:
        result = train(model, dataset, cfg, args.out, max_seconds=max_seconds)
    except (ValueError, NonFiniteLossError) as err:  # other settings, another model, a NaN
        raise SystemExit(f"error: {err}") from None
    weights = export_ema(result, args.out, model_cfg, cfg, args)
    print(f"EMA weights after {result.step} steps: {weights} ({time.perf_counter() - start:.0f} s)")
    judged = judge_trained(weights, world, args) if args.judge_prompts else {}
    write_log(args, result, dataset, model_cfg, cfg, time.perf_counter() - start, judged)
    if result.step < cfg.steps:
        why = "interrupted" if result.interrupted else "stopped at the time limit"
        print(f"{why} after step {result.step} (saved); run again to continue")
    if args.ship:
        ship(weights, ASSETS / WEIGHTS_NAME, finished=result.step == cfg.steps)
    if result.interrupted:
        raise SystemExit(130)


def judge_trained(weights: Path, world: World, args) -> dict:
    """The judge of the exported EMA ``weights``' videos (50 DDIM steps) for
    ``args.judge_prompts`` unseen prompts of ``world``'s training split, beside the judge's
    chance level on that world. In a world with a new shape, a run from ``--init-from`` also
    scores that model on the same prompts: ``before`` and ``after`` of :func:`concept_scores`."""
    from cogvx_mini.data.toyworld import chance_level
    from cogvx_mini.pipeline import MINI_GUIDANCE, concept_scores, evaluation_prompts, load_mini

    n = args.judge_prompts
    prompts = evaluation_prompts("train", n, new_shape=world.new_shape, **world.scene_options())
    models = {"after": weights}
    if world.new_shape is not None and args.init_from is not None:
        models = {"before": args.init_from, **models}
    scores = {
        name: concept_scores(load_mini(w, args.vae_weights), prompts, frames=world.frames)
        for name, w in models.items()
    }
    judged = {
        "judge": scores["after"]["judge"],
        "chance": chance_level(n, frames=world.frames, **world.scene_options()),
        "prompts": n,
        "guidance": MINI_GUIDANCE,
    }
    print(
        f"judge {judged['judge']:.3f} on {n} unseen prompts of the {args.world} world "
        f"(chance level {judged['chance']:.3f}: real clips under another scene's caption)"
    )
    if "before" in scores:
        judged |= scores
        for name, got in scores.items():
            print(
                f"{name:>6}: judge {got['judge']:.3f}, strict {got['strict']:.3f}, "
                f"{world.new_shape}s drawn as {world.new_shape}s {got['new_shape_right']:.0%}"
            )
    return judged


def write_log(
    args, result: TrainResult, dataset, model_cfg, cfg, seconds: float, judged: dict
) -> None:
    """``train_log.json``: the run's settings, loss curve, loss per timestep bucket, judge."""
    log = {
        "world": args.world,
        "judged": judged,
        "train_config": dataclasses.asdict(cfg),
        "model": dataclasses.asdict(model_cfg),
        "init_from": str(args.init_from or ""),
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "steps": result.step,
        "batch_size": cfg.batch_size,
        "clips": len(dataset.clips),
        "buckets": sorted({str(c.bucket) for c in dataset.clips}),
        "minutes": round(seconds / 60, 1),
        "threads": args.threads,
        "device": args.device,
        "losses": [round(x, 5) for x in result.losses],
        "tracker_edges": result.tracker.edges(),
        "tracker_means": [round(float(x), 5) for x in result.tracker.means()],
    }
    (args.out / "train_log.json").write_text(json.dumps(log) + "\n")
    tail = result.losses[-100:]
    print(f"mean loss of the last 100 steps: {sum(tail) / max(1, len(tail)):.4f}")


if __name__ == "__main__":
    main()
