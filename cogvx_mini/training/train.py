"""The mini training loop: a text-to-video diffusion transformer on VAE latents of the toy world.

    python -m cogvx_mini.training.train --out runs/mini   # `make train`: ships the EMA weights
    python -m cogvx_mini.training.train --out runs/mini --steps 50   # resumes if interrupted

What happens, in CogVideoX's order [@yang2024cogvideox]:

1. **Data**: toy-world scenes of the training split (no held-out colour-direction pair), rendered
   at several durations, frame-packed into shape buckets (``cogvx_mini.frame_pack``).
2. **Frozen VAE, latents cached**: every clip is encoded once; training samples the posterior
   ``mean + std * noise`` each step, scaled by the latent scale. The text is encoded once too.
3. **v-prediction loss** at timesteps from **explicit uniform sampling** across the batch, with
   captions dropped to the empty prompt 10% of the time (for classifier-free guidance).
4. **AdamW**, linear warm-up, gradient clipping, and an **EMA** of the weights (what ships).
5. A **tqdm** bar, the loss per timestep bucket, **atomic checkpoints** that resume exactly, and
   a NaN loss that stops training while the last good checkpoint stays in place.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from cogvx_mini.diffusion import NoiseSchedule, add_noise, v_loss, v_target
from cogvx_mini.frame_pack import Bucket, bucket_batches, pack_to_bucket
from cogvx_mini.timestep_sampling import TimestepLossTracker, batch_timesteps
from cogvx_mini.weights.assets import ASSETS
from cogvx_mini.weights.checkpoint import load_checkpoint, save_checkpoint, save_weights
from cogvx_mini.weights.mini import WEIGHTS_NAME, read_mini_weights


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

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(snr_shift_scale=self.snr_shift_scale)


@dataclass
class LatentClip:
    """One cached training clip: posterior ``mean``/``std`` ``[C, T', h, w]`` and its text."""

    mean: torch.Tensor
    std: torch.Tensor
    text: torch.Tensor  # [L, D] text embedding
    caption: str
    bucket: Bucket


@dataclass
class LatentDataset:
    """Cached latents, grouped by bucket, with the empty prompt's embedding for CFG dropout."""

    clips: list[LatentClip]
    empty_text: torch.Tensor  # [L, D]
    latent_scale: float = 1.0
    meta: dict = field(default_factory=dict)

    def shapes(self) -> list[tuple[int, int, int]]:
        return [(c.bucket.frames, c.bucket.height, c.bucket.width) for c in self.clips]


def toy_clips(
    count: int,
    lengths: Sequence[int] = (9, 13, 17, 21),
    height: int = 64,
    width: int = 64,
    split: str = "train",
    first_seed: int = 0,
):
    """Toy-world clips ``([3, T, H, W], caption)`` of mixed durations, deterministic by seed."""
    from cogvx_mini.data.toyworld import render, sample_scene

    for seed in range(first_seed, first_seed + count):
        scene = sample_scene(seed, split=split)
        length = lengths[random.Random(seed * 7919 + 1).randrange(len(lengths))]
        yield render(scene, length, height, width), scene.caption


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


class EMA:
    """Exponential moving average of a model's parameters (and a copy of its buffers)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm-up of the decay so early averages are not dominated by the random init.
        d = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - d)


class NaNLossError(RuntimeError):
    """Training stopped on a non-finite loss; the last good checkpoint was kept."""


@dataclass
class TrainResult:
    losses: list[float]
    tracker: TimestepLossTracker
    model: nn.Module
    ema: nn.Module
    step: int
    seconds: float


def _lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then a cosine decay to ``final_lr_ratio · lr`` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1))
    floor = cfg.final_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


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


def train(
    model: nn.Module,
    dataset: LatentDataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    stop_at: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` (``forward(latents, text, timesteps) -> v``) on ``dataset``.

        Checkpoints go to ``out_dir/checkpoint.pt`` every ``cfg.checkpoint_every`` steps and at the
        end; with ``resume`` an existing checkpoint is continued exactly (same losses as an
        uninterrupted run). ``stop_at`` ends early at that step (to test resuming), ``max_seconds``
    after that much time (with a checkpoint); ``on_step(step, loss)`` is called after each step. A
    non-finite loss
        raises :class:`NaNLossError` without touching the last checkpoint.
    """
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    schedule = cfg.schedule()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    ema = EMA(model, cfg.ema_decay)
    tracker = TimestepLossTracker(schedule.num_train_timesteps, cfg.tracker_buckets)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    step = 0
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state["config"] != dataclasses.asdict(cfg):
            raise ValueError(
                f"checkpoint {ckpt_path} was written with another TrainConfig; "
                "use a new --out folder or the same settings"
            )
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        tracker.load_state_dict(state["tracker"])
        gen.set_state(state["generator"])
        losses, step = state["losses"], state["step"]

    def save() -> None:
        save_checkpoint(
            {
                "model": model.state_dict(),
                "ema": ema.model.state_dict(),
                "optimizer": opt.state_dict(),
                "tracker": tracker.state_dict(),
                "generator": gen.get_state(),
                "losses": losses,
                "step": step,
                "config": dataclasses.asdict(cfg),
                "latent_scale": dataset.latent_scale,
            },
            ckpt_path,
        )

    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    # Random numbers come from one CPU generator (so a resumed run repeats them exactly); the
    # batch then moves to wherever the model is.
    device = next(model.parameters()).device
    start_time = time.perf_counter()
    plan = EpochPlan(dataset, cfg.batch_size, cfg.seed)
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="training", disable=not progress)
    while step < end:
        bucket, idx = plan.batch(step)
        clips = [dataset.clips[i] for i in idx]
        b = len(clips)
        mean = torch.stack([c.mean for c in clips])
        std = torch.stack([c.std for c in clips])
        x0 = (mean + std * torch.randn(mean.shape, generator=gen)) * dataset.latent_scale
        text = torch.stack([c.text for c in clips])
        drop = torch.rand(b, generator=gen) < cfg.cfg_dropout
        text = torch.where(drop[:, None, None], dataset.empty_text.expand_as(text), text)
        t = batch_timesteps(b, min(cfg.timestep_strata, b), schedule.num_train_timesteps, gen)
        noise = torch.randn(x0.shape, generator=gen)
        x0, noise, text, t_dev = (x.to(device) for x in (x0, noise, text, t))
        x_t = add_noise(schedule, x0, noise, t_dev)
        target = v_target(schedule, x0, noise, t_dev)
        per_sample = v_loss(model(x_t, text, t_dev), target, reduce=False)
        loss = per_sample.mean()
        if not torch.isfinite(loss):
            bar.close()
            kept = f"; the last good checkpoint is {ckpt_path}" if ckpt_path.is_file() else ""
            raise NaNLossError(f"non-finite loss {loss.item()} at step {step}{kept}")
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model, step)
        tracker.update(t, per_sample.detach().cpu())
        losses.append(loss.item())
        step += 1
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.4f}")
        if on_step is not None:
            on_step(step, losses[-1])
        out_of_time = max_seconds is not None and time.perf_counter() - start_time > max_seconds
        if step % cfg.checkpoint_every == 0 or step == end or out_of_time:
            save()
        if out_of_time:
            break
    bar.close()
    return TrainResult(losses, tracker, model, ema.model, step, time.perf_counter() - start_time)


def build_mini_dataset(
    count: int,
    progress: bool = True,
    lengths: Sequence[int] = (9, 13, 17, 21),
    vae_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> LatentDataset:
    """The toy world's training split, encoded by the mini VAE (the shipped weights unless
    ``vae_weights``, run on ``device``) and the toy text encoder."""
    from cogvx_mini.data.text_encoder import ToyTextEncoder
    from cogvx_mini.vae import load_mini_vae

    buckets = [Bucket(9, 64, 64), Bucket(17, 64, 64)]
    vae = load_mini_vae(vae_weights).to(device)
    return cache_latents(
        toy_clips(count, lengths), vae, ToyTextEncoder(), buckets, progress=progress
    )


def main(argv: list[str] | None = None) -> None:
    from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

    parser = argparse.ArgumentParser(description="Train the mini text-to-video transformer.")
    parser.add_argument("--out", type=Path, default=Path("runs/mini"))
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--clips", type=int, default=1200, help="training scenes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after")
    parser.add_argument("--ship", action="store_true", help=f"write assets/{WEIGHTS_NAME}")
    parser.add_argument("--vae-weights", type=Path, default=None, help="default: shipped")
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
        help="start from these transformer weights (and their config) instead of a random init",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # TF32 matmuls on GPUs that have them: the mini model trains in float32.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model_cfg = TransformerConfig.mini(**_parse_overrides(args.model))
    init_state = None
    if args.init_from is not None:
        if args.model:
            raise SystemExit("--init-from takes the config stored with the weights; drop --model")
        model_cfg, init_state, _ = read_mini_weights(args.init_from)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    cache = args.out / "latents.pt"
    if cache.is_file():
        dataset = torch.load(cache, weights_only=False)
    else:
        dataset = build_mini_dataset(args.clips, vae_weights=args.vae_weights, device=args.device)
        save_checkpoint(dataset, cache)
    print(
        f"{len(dataset.clips)} clips cached (latent scale {dataset.latent_scale:.3f}) "
        f"in {time.perf_counter() - start:.0f} s"
    )

    torch.manual_seed(cfg.seed)
    model = CogVideoXTransformer(model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)  # float16 files are cast to the model's float32
    model.to(args.device)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters / 1e6:.2f} M parameters")
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    result = train(model, dataset, cfg, args.out, max_seconds=max_seconds)
    ema, steps = result.ema, result.step
    if steps < cfg.steps:
        print(f"stopped at the time limit after step {steps}; run again to continue")
    meta = {
        "transformer_config": json.dumps(dataclasses.asdict(model_cfg)),
        "snr_shift_scale": str(cfg.snr_shift_scale),
        "latent_scale": str(dataset.latent_scale),
        "steps": str(steps),
        "init_from": str(args.init_from or ""),
    }
    # float16 on disk halves the shipped file; loading casts back to the model's float32.
    state = {k: v.half() if v.is_floating_point() else v for k, v in ema.state_dict().items()}
    weights = save_weights(state, args.out / WEIGHTS_NAME, metadata=meta)
    print(f"EMA weights after {steps} steps: {weights} ({time.perf_counter() - start:.0f} s)")
    if args.ship:
        shipped = save_weights(state, ASSETS / WEIGHTS_NAME, metadata=meta)
        print(f"shipped: {shipped}")
    log = {
        "model": dataclasses.asdict(model_cfg),
        "init_from": str(args.init_from or ""),
        "parameters": parameters,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "clips": len(dataset.clips),
        "buckets": sorted({str(c.bucket) for c in dataset.clips}),
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "threads": args.threads,
        "device": args.device,
        "losses": [round(x, 5) for x in result.losses],
        "tracker_edges": result.tracker.edges(),
        "tracker_means": [round(float(x), 5) for x in result.tracker.means()],
    }
    (args.out / "train_log.json").write_text(json.dumps(log) + "\n")
    print(f"mean loss of the last 100 steps: {_tail_mean(args.out):.4f}; log: train_log.json")


def _parse_overrides(pairs: list[str]) -> dict:
    """``["num_layers=8", "rope_base_grid=[8,8]"]`` -> ``{"num_layers": 8, ...}`` (JSON values;
    a value that is not JSON stays a string)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE for --model, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _tail_mean(out: Path) -> float:
    losses = load_checkpoint(out / "checkpoint.pt")["losses"]
    return sum(losses[-100:]) / max(1, len(losses[-100:])) if losses else math.nan


if __name__ == "__main__":
    main()
