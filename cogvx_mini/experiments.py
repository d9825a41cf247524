"""The paper's ablations in miniature: each design choice of CogVideoX against its alternative.

    python -m cogvx_mini.experiments all --budget small --device cpu --out book/ablations/
    python -m cogvx_mini.experiments all --budget full --device cuda --out book/ablations/

Six ablations [@yang2024cogvideox], each with arms that differ in one switch and share
everything else (steps, batch, data, seeds; parameter counts are reported):

- ``vae_3d_vs_2d``: the 3D causal VAE against a per-frame 2D VAE of about the same latent size,
  both trained from scratch for the same steps: held-out PSNR and flicker.
- ``rope_vs_sincos``: 3D-RoPE against 3D sincos absolute positions: loss curves and the loss at
  a length and a resolution never seen in training.
- ``expert_adaln``: expert AdaLN, one shared AdaLN, and MMDiT-style separate weights: loss and
  the toy world's judge (text alignment) of generated videos.
- ``full_vs_2d1d_attention``: 3D full attention against alternating 2D spatial / 1D temporal
  attention: loss, the judge's position tracks of generated motion, and loss stability.
- ``explicit_uniform_sampling``: timesteps stratified over the batch (each sample plays one of
  ``batch`` simulated ranks) against independent uniform draws: step-to-step loss variance,
  loss per timestep bucket, convergence.
- ``frame_pack``: mixed durations packed into buckets against a fixed length that drops shorter
  clips: data used and quality.

``run(name, budget, seeds, device) -> dict`` returns (and the CLI writes) one JSON per ablation;
``plot(result, path)`` draws its figure. The diffusion ablations encode the toy world with the
shipped mini VAE when it loads, else with a mini VAE trained here first (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from cogvx_mini.diffusion import NoiseSchedule, add_noise, v_loss, v_target
from cogvx_mini.frame_pack import Bucket
from cogvx_mini.text_encoder import ToyTextEncoder
from cogvx_mini.timestep_sampling import TimestepLossTracker, batch_timesteps
from cogvx_mini.train import EpochPlan, LatentDataset, cache_latents, toy_clips
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig, count_parameters
from cogvx_mini.vae import VAE3D, VAEConfig
from cogvx_mini.vae_2d import flicker_score, per_frame_config, psnr
from cogvx_mini.vae_train import VAETrainConfig, held_out_videos, training_batch

ABLATIONS = (
    "vae_3d_vs_2d",
    "rope_vs_sincos",
    "expert_adaln",
    "full_vs_2d1d_attention",
    "explicit_uniform_sampling",
    "frame_pack",
)
EVAL_SEED = 500_000  # held-out clips for evaluation losses (training clips use seeds below)


@dataclass(frozen=True)
class Budget:
    """Equal for every arm of an ablation. Videos are ``frames x size x size``."""

    name: str
    seeds: tuple[int, ...]
    steps: int  # diffusion training steps per arm and seed
    batch: int
    clips: int  # training scenes
    frames: int = 9
    size: int = 64
    lr: float = 5e-4
    warmup: int = 20
    eval_clips: int = 8
    eval_timesteps: int = 8
    prompts: int = 8  # generated videos judged per arm and seed
    sample_steps: int = 10
    guidance: float = 4.0
    vae_steps: int = 200  # each VAE arm (and the latent VAE when none is shipped)
    vae_batch: int = 4
    vae_frames: int = 9
    vae_crop: int = 32
    vae_eval: int = 8
    curve_points: int = 100  # loss curves are stored at this many points (window means)


BUDGETS = {
    # For the test: seconds.
    "tiny": Budget("tiny", (0, 1), steps=3, batch=2, clips=6, eval_clips=2, eval_timesteps=2,
                   prompts=1, sample_steps=2, vae_steps=2, vae_batch=1, vae_frames=5,
                   vae_crop=16, vae_eval=1, frames=5, size=32, curve_points=3),
    # About two minutes per ablation on one (shared) CPU thread.
    "small": Budget("small", (0, 1), steps=120, batch=8, clips=96, eval_clips=6, prompts=6,
                    sample_steps=8, vae_steps=60, vae_batch=2, vae_frames=9, vae_crop=32,
                    vae_eval=6),
    # All six in about eight minutes on one H100 (a mini step takes a few ms there).
    "full": Budget("full", (0, 1, 2), steps=800, batch=32, clips=1024, frames=9, eval_clips=32,
                   prompts=32, sample_steps=25, vae_steps=400, vae_batch=8, vae_frames=17,
                   vae_crop=64, vae_eval=32, warmup=60),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Small shared pieces


def summary(values: Sequence[float]) -> dict:
    """``{"mean", "std", "min", "max", "n", "values"}`` over seeds (std 0 for one seed); NaN
    values (a metric a seed could not measure) are kept in ``values`` but left out of the rest."""
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    ok = v[torch.isfinite(v)]
    if len(ok) == 0:
        ok = torch.tensor([math.nan], dtype=torch.float64)
    return {
        "mean": ok.mean().item(),
        "std": ok.std().item() if len(ok) > 1 else 0.0,
        "min": ok.min().item(),
        "max": ok.max().item(),
        "n": int(torch.isfinite(v).sum()),
        "values": [float(x) for x in v],
    }


def curve(losses: Sequence[float], points: int) -> list[float]:
    """A loss curve as ``points`` window means (shorter curves are kept whole)."""
    n = len(losses)
    if n <= points:
        return [float(x) for x in losses]
    edges = [round(i * n / points) for i in range(points + 1)]
    return [sum(losses[a:b]) / (b - a) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def detrended_std(losses: Sequence[float], window: int = 9) -> float:
    """Std of the step-to-step noise of a loss curve: each loss minus its centred moving mean."""
    x = torch.tensor(losses, dtype=torch.float64)
    if len(x) < window + 2:
        window = max(1, len(x) // 2 * 2 - 1)
    k = torch.ones(1, 1, window, dtype=torch.float64) / window
    smooth = torch.nn.functional.conv1d(x[None, None], k)[0, 0]
    half = window // 2
    resid = x[half : len(x) - half] - smooth
    return resid.std().item() if len(resid) > 1 else 0.0


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# VAE training on any device (the loss of cogvx_mini.vae_train: L1 + weighted KL)


def train_vae_on(
    vae: VAE3D, cfg: VAETrainConfig, device: str, progress: Callable[[str], None] | None = None
) -> list[float]:
    """Train ``vae`` in place on ``device`` with :func:`cogvx_mini.vae_train.training_batch`
    batches (``vae_train.train_vae`` runs on the CPU only); returns the L1 loss per step."""
    _seed_all(cfg.seed)
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    losses = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        x = training_batch(step, cfg).to(device)
        posterior = vae.encode(x)
        recon = vae.decode(posterior.sample())
        rec = (recon - x).abs().mean()
        loss = rec + cfg.kl_weight * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(rec.item())
    return losses


@torch.no_grad()
def vae_metrics(vae: VAE3D, videos: torch.Tensor, device: str) -> dict[str, float]:
    """Mean PSNR (dB) and flicker (8-bit levels) of ``vae``'s reconstructions of ``videos``."""
    vae.eval()
    ps, fl = [], []
    for video in videos.split(4):
        video = video.to(device)
        recon = vae.decode(vae.encode(video).mean).clamp(-1, 1)
        ps.append(psnr(recon, video).cpu())
        fl.append(flicker_score(recon, video).cpu())
    return {"psnr": torch.cat(ps).mean().item(), "flicker": torch.cat(fl).mean().item()}


def _vae_cfg(budget: Budget, seed: int, steps: int | None = None) -> VAETrainConfig:
    return VAETrainConfig(
        steps=budget.vae_steps if steps is None else steps,
        batch=budget.vae_batch,
        frames=budget.vae_frames,
        size=max(budget.size, budget.vae_crop),
        crop=budget.vae_crop,
        warmup=max(1, min(50, budget.vae_steps // 4)),
        seed=seed,
        pool=min(512, max(8, budget.vae_steps * budget.vae_batch // 2)),
    )


_LATENT_VAE: dict[tuple, tuple[VAE3D, str]] = {}


def latent_vae(budget: Budget, device: str, log: Callable[[str], None] = print):
    """The frozen VAE of the diffusion ablations: the shipped mini VAE when it loads, else a
    mini VAE trained here for ``budget.vae_steps`` (cached for the process)."""
    key = (budget.name, device)
    if key not in _LATENT_VAE:
        try:
            from cogvx_mini.vae import load_mini_vae

            vae, origin = load_mini_vae(), "shipped mini VAE (assets/vae_mini.safetensors)"
        except (FileNotFoundError, RuntimeError, KeyError) as err:
            log(f"no usable shipped mini VAE ({type(err).__name__}); training one first")
            _seed_all(1234)  # the same VAE whatever ran before in this process
            vae = VAE3D(VAEConfig.mini())
            train_vae_on(vae, _vae_cfg(budget, seed=1234), device)
            m = vae_metrics(vae, held_out_videos(4, budget.frames, budget.size), device)
            origin = f"mini VAE trained here: {budget.vae_steps} steps, PSNR {m['psnr']:.1f} dB"
        _LATENT_VAE[key] = (vae.to(device).eval().requires_grad_(False), origin)
    return _LATENT_VAE[key]


def latent_dataset(
    budget: Budget,
    device: str,
    count: int,
    lengths: Sequence[int],
    buckets: Sequence[Bucket],
    first_seed: int = 0,
    latent_scale: float | None = None,
    size: int | None = None,
) -> LatentDataset:
    """Toy clips (training split) encoded by the latent VAE, frame-packed into ``buckets``
    (cached for the process: the ablations share their training and evaluation sets)."""
    key = (budget.name, device, count, tuple(lengths), tuple(buckets), first_seed, latent_scale,
           size)  # fmt: skip
    if key not in _DATASETS:
        _DATASETS[key] = _latent_dataset(
            budget, device, count, lengths, buckets, first_seed, latent_scale, size
        )
    return _DATASETS[key]


_DATASETS: dict[tuple, LatentDataset] = {}


def _latent_dataset(budget, device, count, lengths, buckets, first_seed, latent_scale, size):
    vae, origin = latent_vae(budget, device)
    size = size or budget.size
    clips = toy_clips(count, lengths, size, size, first_seed=first_seed)
    # The VAE lives on ``device``; cache_latents encodes there and keeps the cache on the CPU.
    data = cache_latents(clips, vae, ToyTextEncoder(), buckets, latent_scale, progress=False)
    data.meta["vae"] = origin
    return data


# ---------------------------------------------------------------------------------------------
# Diffusion training on any device (the recipe of cogvx_mini.train without EMA or checkpoints)


@dataclass
class DiffusionRun:
    losses: list[float]
    tracker: TimestepLossTracker
    model: CogVideoXTransformer
    seconds: float


def train_diffusion(
    model: CogVideoXTransformer,
    data: LatentDataset,
    budget: Budget,
    seed: int,
    device: str,
    strata: int | None = None,
) -> DiffusionRun:
    """Train ``model`` for ``budget.steps`` on ``data``: v-loss, AdamW with warm-up, gradient
    clipping, 10% caption dropout; timesteps stratified over ``strata`` simulated ranks
    (default: the batch, CogVideoX's explicit uniform sampling; 1 = independent draws)."""
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, betas=(0.9, 0.99), weight_decay=0.01)
    tracker = TimestepLossTracker(schedule.num_train_timesteps, 10)
    plan = EpochPlan(data, budget.batch, seed)
    strata = budget.batch if strata is None else strata
    model.to(device).train()
    losses = []
    start = time.perf_counter()
    for step in range(budget.steps):
        _, idx = plan.batch(step)
        clips = [data.clips[i] for i in idx]
        b = len(clips)
        mean = torch.stack([c.mean for c in clips])
        std = torch.stack([c.std for c in clips])
        x0 = (mean + std * torch.randn(mean.shape, generator=gen)) * data.latent_scale
        text = torch.stack([c.text for c in clips])
        drop = torch.rand(b, generator=gen) < 0.1
        text = torch.where(drop[:, None, None], data.empty_text.expand_as(text), text)
        t = batch_timesteps(b, min(strata, b), schedule.num_train_timesteps, gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = add_noise(schedule, x0, noise, t)
        target = v_target(schedule, x0, noise, t)
        pred = model(x_t.to(device), text.to(device), t.to(device))
        per_sample = v_loss(pred.float(), target.to(device), reduce=False)
        loss = per_sample.mean()
        for group in opt.param_groups:
            group["lr"] = budget.lr * min(1.0, (step + 1) / budget.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tracker.update(t, per_sample.detach().cpu())
        losses.append(loss.item())
    model.eval()
    return DiffusionRun(losses, tracker, model, time.perf_counter() - start)


@torch.no_grad()
def eval_loss(model: CogVideoXTransformer, data: LatentDataset, timesteps: int, device: str):
    """Mean v-loss over ``data``'s clips (posterior means) at ``timesteps`` evenly spaced
    timesteps with fixed noise: the same noise and timesteps for every arm."""
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(0)
    ts = torch.linspace(20, schedule.num_train_timesteps - 20, timesteps).long()
    total, n = 0.0, 0
    for clip in data.clips:
        x0 = (clip.mean * data.latent_scale)[None].expand(timesteps, *clip.mean.shape)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = add_noise(schedule, x0, noise, ts)
        text = clip.text[None].expand(timesteps, *clip.text.shape)
        pred = model(x_t.to(device), text.to(device), ts.to(device)).float()
        total += v_loss(pred, v_target(schedule, x0, noise, ts).to(device)).item()
        n += 1
    return total / max(n, 1)


def _pipeline(model: CogVideoXTransformer, data: LatentDataset, budget: Budget, device: str):
    from cogvx_mini.pipeline import Pipeline

    vae, _ = latent_vae(budget, device)
    return Pipeline(model.eval(), vae, ToyTextEncoder(), NoiseSchedule(), data.latent_scale)


@torch.no_grad()
def judged_generations(
    model: CogVideoXTransformer,
    data: LatentDataset,
    budget: Budget,
    seed: int,
    device: str,
    frames: int | None = None,
) -> dict[str, float]:
    """Generate ``budget.prompts`` videos for unseen training-split captions and read them with
    the judge: mean text-alignment score, share of objects moving the captioned way, and the
    position tracks' RMS distance (pixels) from a constant-velocity line (large-motion
    consistency: an object that jumps or stalls scores high)."""
    from cogvx_mini.pipeline import evaluation_prompts, generate
    from cogvx_mini.toyworld import judge_details

    pipe = _pipeline(model, data, budget, device)
    prompts = evaluation_prompts("train", budget.prompts, first_seed=10_000 + 97 * seed)
    videos = generate(
        prompts,
        pipe,
        frames=frames or budget.frames,
        height=budget.size,
        width=budget.size,
        steps=budget.sample_steps,
        guidance=budget.guidance,
        seed=seed,
        progress=False,
    )
    scores, moving, residuals = [], [], []
    for video, prompt in zip(videos, prompts, strict=True):
        verdict = judge_details(video, prompt)
        scores.append(verdict.score)
        for obj in verdict.objects:
            moving.append(float(obj.direction_ok))
            if len(obj.track) >= 3:
                residuals.append(track_residual(obj.track))
    return {
        "judge_score": sum(scores) / len(scores),
        "direction_ok": sum(moving) / max(len(moving), 1),
        "track_residual_px": sum(residuals) / len(residuals) if residuals else math.nan,
    }


@torch.no_grad()
def judge_ceiling(data: LatentDataset, budget: Budget, device: str) -> float:
    """The judge's mean score of the latent VAE's reconstructions of ``budget.prompts`` real
    clips of ``data``: the best a generator can score through this VAE (1 for a perfect VAE)."""
    from cogvx_mini.toyworld import judge

    vae, _ = latent_vae(budget, device)
    clips = data.clips[: budget.prompts]
    scores = []
    for clip in clips:
        video = vae.decode(clip.mean[None].to(device)).clamp(-1, 1).float().cpu()
        scores.append(judge(video[0], clip.caption))
    return sum(scores) / max(len(scores), 1)


def track_residual(track: Sequence[tuple[float, float]]) -> float:
    """RMS distance (pixels) of a position track ``[(y, x), ...]`` from its least-squares
    straight line in time (constant velocity, what the toy world renders)."""
    p = torch.tensor(track, dtype=torch.float64)
    t = torch.arange(len(p), dtype=torch.float64)
    tc = t - t.mean()
    slope = (tc[:, None] * (p - p.mean(0))).sum(0) / tc.pow(2).sum()
    fit = p.mean(0) + tc[:, None] * slope
    return (p - fit).pow(2).sum(1).mean().sqrt().item()


# ---------------------------------------------------------------------------------------------
# The ablations


def _mini(**overrides) -> TransformerConfig:
    return TransformerConfig.mini(**overrides)


def _diffusion_ablation(
    budget: Budget,
    seeds: Sequence[int],
    device: str,
    arms: dict[str, dict],
    data_for: Callable[[str], LatentDataset],
    evaluate: Callable[[str, CogVideoXTransformer, DiffusionRun, int], dict[str, float]],
    log: Callable[[str], None],
) -> dict:
    """Train every arm (``{"config": TransformerConfig, "strata": int | None}``) for every seed
    on ``data_for(arm)``; ``evaluate`` returns the arm's metrics for one seed."""
    out = {}
    for arm, spec in arms.items():
        data = data_for(arm)
        curves, metrics, seconds = [], {}, []
        for seed in seeds:
            _seed_all(seed)
            model = CogVideoXTransformer(spec["config"])
            run_ = train_diffusion(model, data, budget, seed, device, spec.get("strata"))
            curves.append(curve(run_.losses, budget.curve_points))
            m = {"final_train_loss": sum(run_.losses[-20:]) / len(run_.losses[-20:])}
            m.update(evaluate(arm, model, run_, seed))
            for k, v in m.items():
                metrics.setdefault(k, []).append(v)
            seconds.append(run_.seconds)
            log(f"  {arm} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
        cfg = spec["config"]
        out[arm] = {
            "setting": spec["setting"],
            "config": asdict(cfg),
            "parameters": count_parameters(cfg),
            "train_clips": len(data.clips),
            "loss_curves": curves,
            "metrics": {k: summary(v) for k, v in metrics.items()},
            "train_seconds": summary(seconds),
        }
    return out


def _train_buckets(budget: Budget) -> list[Bucket]:
    return [Bucket(budget.frames, budget.size, budget.size)]


def ablation_vae_3d_vs_2d(budget: Budget, seeds, device, log) -> dict:
    # The per-frame arm gets the channels that make its latent as large as the 3D one's.
    base = VAEConfig.mini()
    t = budget.vae_frames
    channels = round(base.latent_channels * ((t - 1) // base.temporal_compression + 1) / t)
    arms = {"3d_causal": base, "2d_per_frame": per_frame_config(base, latent_channels=channels)}
    videos = held_out_videos(budget.vae_eval, budget.vae_frames, max(budget.size, budget.vae_crop))
    out = {}
    for arm, cfg in arms.items():
        curves, metrics = [], {}
        for seed in seeds:
            _seed_all(seed)
            vae = VAE3D(cfg)
            start = time.perf_counter()
            losses = train_vae_on(vae, _vae_cfg(budget, seed), device)
            m = vae_metrics(vae, videos, device)
            m["seconds"] = time.perf_counter() - start
            m["final_l1"] = sum(losses[-10:]) / len(losses[-10:])
            curves.append(curve(losses, budget.curve_points))
            for k, v in m.items():
                metrics.setdefault(k, []).append(v)
            log(f"  {arm} seed {seed}: PSNR {m['psnr']:.2f} dB, flicker {m['flicker']:.2f}")
        latent = cfg.latent_shape(tuple(videos[:1].shape))
        out[arm] = {
            "setting": {
                "time_kernel": cfg.time_kernel,
                "temporal_compression": cfg.temporal_compression,
                "latent_channels": cfg.latent_channels,
            },  # fmt: skip
            "config": asdict(cfg),
            "parameters": sum(p.numel() for p in VAE3D(cfg).parameters()),
            "latent_shape": list(latent[1:]),
            "latent_values": math.prod(latent[1:]),
            "loss_curves": curves,
            "metrics": {k: summary(v) for k, v in metrics.items()},
        }
    return {
        "arms": out,
        "primary": ["psnr", "flicker"],
        "higher_is_better": {"psnr": True, "flicker": False},
        "eval": f"{budget.vae_eval} held-out toy videos of {budget.vae_frames} frames",
    }


def ablation_rope_vs_sincos(budget: Budget, seeds, device, log) -> dict:
    train = latent_dataset(budget, device, budget.clips, (budget.frames,), _train_buckets(budget))
    scale = train.latent_scale
    long_frames = 2 * budget.frames - 1
    big = budget.size + budget.size // 2
    evals = {
        "eval_loss_seen": latent_dataset(budget, device, budget.eval_clips, (budget.frames,),
                                         _train_buckets(budget), EVAL_SEED, scale),
        "eval_loss_longer": latent_dataset(budget, device, budget.eval_clips, (long_frames,),
                                           [Bucket(long_frames, budget.size, budget.size)],
                                           EVAL_SEED, scale),
        "eval_loss_larger": latent_dataset(budget, device, budget.eval_clips, (budget.frames,),
                                           [Bucket(budget.frames, big, big)], EVAL_SEED, scale,
                                           size=big),
    }  # fmt: skip
    arms = {
        "3d_rope": {"config": _mini(positions="rope"), "setting": {"positions": "rope"}},
        "sincos": {"config": _mini(positions="sincos"), "setting": {"positions": "sincos"}},
    }

    def evaluate(arm, model, run_, seed):
        m = {k: eval_loss(model, d, budget.eval_timesteps, device) for k, d in evals.items()}
        m["longer_over_seen"] = m["eval_loss_longer"] / m["eval_loss_seen"]
        m["larger_over_seen"] = m["eval_loss_larger"] / m["eval_loss_seen"]
        return m

    return {
        "arms": _diffusion_ablation(budget, seeds, device, arms, lambda a: train, evaluate, log),
        "primary": ["eval_loss_seen", "eval_loss_longer", "eval_loss_larger"],
        "higher_is_better": {k: False for k in evals},
        "eval": f"train {budget.frames}x{budget.size}x{budget.size}; unseen length "
        f"{long_frames} frames; unseen resolution {big}x{big}",
        "vae": train.meta["vae"],
    }


def _matched(adaln: str, target: int) -> TransformerConfig:
    """The ``adaln`` arm at about ``target`` parameters: separate text weights (MMDiT) double
    attention and feed-forward, a shared AdaLN drops the text modulation, so the feed-forward
    width (``ff_mult``) is chosen to bring the count nearest the target."""
    return min(
        (_mini(adaln=adaln, ff_mult=m) for m in range(1, 9)),
        key=lambda c: abs(count_parameters(c) - target),
    )


def ablation_expert_adaln(budget: Budget, seeds, device, log) -> dict:
    train = latent_dataset(budget, device, budget.clips, (budget.frames,), _train_buckets(budget))
    held = latent_dataset(budget, device, budget.eval_clips, (budget.frames,),
                          _train_buckets(budget), EVAL_SEED, train.latent_scale)  # fmt: skip
    expert = _mini(adaln="expert")
    none = _matched("none", count_parameters(expert))
    mmdit = _matched("mmdit", count_parameters(expert))
    arms = {
        "expert_adaln": {"config": expert, "setting": {"adaln": "expert"}},
        "no_expert": {"config": none, "setting": {"adaln": "none", "ff_mult": none.ff_mult}},
        "mmdit": {"config": mmdit, "setting": {"adaln": "mmdit", "ff_mult": mmdit.ff_mult}},
    }

    def evaluate(arm, model, run_, seed):
        m = {"eval_loss": eval_loss(model, held, budget.eval_timesteps, device)}
        m.update(judged_generations(model, train, budget, seed, device))
        return m

    return {
        "arms": _diffusion_ablation(budget, seeds, device, arms, lambda a: train, evaluate, log),
        "judge_ceiling": judge_ceiling(train, budget, device),
        "primary": ["eval_loss", "judge_score"],
        "higher_is_better": {"eval_loss": False, "judge_score": True},
        "eval": f"{budget.eval_clips} held-out clips; {budget.prompts} generated videos per seed "
        f"({budget.sample_steps} DDIM steps, guidance {budget.guidance}) read by the judge",
        "vae": train.meta["vae"],
    }


def ablation_full_vs_2d1d_attention(budget: Budget, seeds, device, log) -> dict:
    train = latent_dataset(budget, device, budget.clips, (budget.frames,), _train_buckets(budget))
    held = latent_dataset(budget, device, budget.eval_clips, (budget.frames,),
                          _train_buckets(budget), EVAL_SEED, train.latent_scale)  # fmt: skip
    arms = {
        "3d_full": {"config": _mini(attention="full"), "setting": {"attention": "full"}},
        "2d_plus_1d": {"config": _mini(attention="2d1d"), "setting": {"attention": "2d1d"}},
    }

    def evaluate(arm, model, run_, seed):
        m = {"eval_loss": eval_loss(model, held, budget.eval_timesteps, device)}
        m["loss_noise_std"] = detrended_std(run_.losses)
        m["max_loss_late"] = max(run_.losses[len(run_.losses) // 2 :])
        m.update(judged_generations(model, train, budget, seed, device))
        return m

    return {
        "arms": _diffusion_ablation(budget, seeds, device, arms, lambda a: train, evaluate, log),
        "judge_ceiling": judge_ceiling(train, budget, device),
        "primary": ["eval_loss", "track_residual_px", "direction_ok"],
        "higher_is_better": {"eval_loss": False, "track_residual_px": False, "direction_ok": True},
        "eval": "position tracks of generated objects (every toy object moves 45% of the frame)",
        "vae": train.meta["vae"],
    }


def ablation_explicit_uniform_sampling(budget: Budget, seeds, device, log) -> dict:
    train = latent_dataset(budget, device, budget.clips, (budget.frames,), _train_buckets(budget))
    held = latent_dataset(budget, device, budget.eval_clips, (budget.frames,),
                          _train_buckets(budget), EVAL_SEED, train.latent_scale)  # fmt: skip
    arms = {
        "explicit_uniform": {"config": _mini(), "strata": budget.batch,
                             "setting": {"timestep_strata": budget.batch}},
        "independent": {"config": _mini(), "strata": 1, "setting": {"timestep_strata": 1}},
    }  # fmt: skip
    buckets = {}

    def evaluate(arm, model, run_, seed):
        buckets.setdefault(arm, []).append([float(x) for x in run_.tracker.means()])
        return {
            "eval_loss": eval_loss(model, held, budget.eval_timesteps, device),
            "loss_noise_std": detrended_std(run_.losses),
        }

    out = _diffusion_ablation(budget, seeds, device, arms, lambda a: train, evaluate, log)
    for arm in out:
        out[arm]["loss_per_timestep_bucket"] = buckets[arm]
    return {
        "arms": out,
        "primary": ["loss_noise_std", "eval_loss"],
        "higher_is_better": {"loss_noise_std": False, "eval_loss": False},
        "eval": f"each of the {budget.batch} samples of a batch plays one simulated rank",
        "bucket_edges": TimestepLossTracker(1000, 10).edges(),
        "vae": train.meta["vae"],
    }


def ablation_frame_pack(budget: Budget, seeds, device, log) -> dict:
    f = budget.frames
    long_f = 2 * f - 1
    lengths = (f, f + 4, long_f, long_f + 4)  # mixed durations, as real data
    packed = latent_dataset(budget, device, budget.clips, lengths,
                            [Bucket(f, budget.size, budget.size),
                             Bucket(long_f, budget.size, budget.size)])  # fmt: skip
    scale = packed.latent_scale
    # Fixed length: every clip must have long_f frames; shorter ones are discarded.
    fixed = LatentDataset(
        [c for c in packed.clips if c.bucket.frames == long_f], packed.empty_text, scale
    )
    held = latent_dataset(budget, device, budget.eval_clips, (long_f,),
                          [Bucket(long_f, budget.size, budget.size)], EVAL_SEED, scale)  # fmt: skip
    held_short = latent_dataset(
        budget, device, budget.eval_clips, (f,), [Bucket(f, budget.size, budget.size)],
        EVAL_SEED, scale,
    )  # fmt: skip
    frames_available = sum(c[0].shape[1] for c in toy_clips(budget.clips, lengths, 8, 8))
    data = {"frame_pack": packed, "fixed_length": fixed}
    arms = {
        "frame_pack": {"config": _mini(), "setting": {"buckets": [f, long_f]}},
        "fixed_length": {"config": _mini(), "setting": {"buckets": [long_f]}},
    }

    def evaluate(arm, model, run_, seed):
        return {
            "eval_loss": eval_loss(model, held, budget.eval_timesteps, device),
            "eval_loss_short": eval_loss(model, held_short, budget.eval_timesteps, device),
            **judged_generations(model, packed, budget, seed, device, frames=long_f),
        }

    out = _diffusion_ablation(budget, seeds, device, arms, data.__getitem__, evaluate, log)
    for arm, d in data.items():
        used = sum(4 * (c.mean.shape[1] - 1) + 1 for c in d.clips)
        out[arm]["data_used"] = {"clips": len(d.clips), "of_clips": budget.clips,
                                 "frames": used, "of_frames": frames_available}  # fmt: skip
    return {
        "arms": out,
        "judge_ceiling": judge_ceiling(held, budget, device),
        "primary": ["eval_loss", "eval_loss_short", "judge_score"],
        "higher_is_better": {"eval_loss": False, "eval_loss_short": False, "judge_score": True},
        "eval": f"clips of {lengths} frames; buckets {f} and {long_f}; generations of {long_f}",
        "vae": packed.meta["vae"],
    }


RUNNERS = {name: globals()[f"ablation_{name}"] for name in ABLATIONS}

CLAIMS = {
    "vae_3d_vs_2d": "A 3D causal VAE reconstructs video with less flicker and higher PSNR than "
    "per-frame image compression (paper: flicker 85.5, PSNR 29.1 vs Open-Sora's 92.4 / 28.5).",
    "rope_vs_sincos": "3D-RoPE converges faster than sinusoidal absolute positions and copes "
    "better with lengths and resolutions not trained on.",
    "expert_adaln": "Expert AdaLN beats a shared AdaLN and matches/beats MMDiT-style separate "
    "weights at fewer or equal parameters, in loss and text alignment.",
    "full_vs_2d1d_attention": "3D full attention trains more stably than 2D+1D attention and "
    "keeps large motion consistent.",
    "explicit_uniform_sampling": "Explicit uniform sampling makes the loss curve less noisy and "
    "training converge faster than independent timestep sampling.",
    "frame_pack": "Frame pack uses clips of every duration (no data discarded) and trains a "
    "model that generalises across lengths.",
}


def run(
    name: str,
    budget: str | Budget = "small",
    seeds: Sequence[int] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """Run ablation ``name`` with a budget (``tiny``, ``small``, ``full`` or a :class:`Budget`)
    and return its results (JSON-ready): claim, budget, per-arm settings, parameter counts,
    loss curves per seed and metrics as mean ± std over ``seeds`` (default: the budget's)."""
    if name not in RUNNERS:
        raise ValueError(f"expected an ablation in {ABLATIONS}, got {name!r}")
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"expected a budget in {tuple(BUDGETS)}, got {budget!r}")
        budget = BUDGETS[budget]
    seeds = tuple(budget.seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("expected at least one seed")
    budget = replace(budget, seeds=seeds)
    start = time.perf_counter()
    log(f"{name} ({budget.name} budget, seeds {list(seeds)}, {device})")
    result = RUNNERS[name](budget, seeds, device, log)
    return {
        "name": name,
        "claim": CLAIMS[name],
        "budget": budget.name,
        "budget_settings": asdict(budget),
        "device": device,
        "torch": torch.__version__,
        "seeds": list(seeds),
        "seconds": time.perf_counter() - start,
        **result,
    }


# ---------------------------------------------------------------------------------------------
# Figures


def plot(result: dict, path: str | Path) -> Path:
    """One figure per ablation: loss curves (mean over seeds, min-max band) per arm, then one
    panel per primary metric (mean ± std over seeds as a marker with error bar, each seed a
    small dot beside it; the axis is zoomed to the values). Writes ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = result["primary"]
    arms = result["arms"]
    # Two panels a row, so that a four-panel figure stays readable in the book's column.
    cols = min(2, 1 + len(primary))
    rows = -(-(1 + len(primary)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[1 + len(primary) :]:
        ax.set_visible(False)
    axes = list(axes.flat)[: 1 + len(primary)]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0]
    steps_key = "vae_steps" if result["name"] == "vae_3d_vs_2d" else "steps"
    total = result["budget_settings"][steps_key]
    for i, (arm, a) in enumerate(arms.items()):
        c = torch.tensor(a["loss_curves"], dtype=torch.float64)
        x = torch.linspace(0, total, c.shape[1] + 1)[1:]
        ax.plot(x, c.mean(0), color=colours[i], label=arm)
        ax.fill_between(x, c.min(0).values, c.max(0).values, color=colours[i], alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 loss" if result["name"] == "vae_3d_vs_2d" else "v-loss")
    ax.set_title("training loss")
    ax.legend(fontsize=7)
    for ax, metric in zip(axes[1:], primary, strict=True):
        for i, a in enumerate(arms.values()):
            m = a["metrics"][metric]
            ax.errorbar(i, m["mean"], yerr=m["std"], fmt="o", color=colours[i], ms=9, capsize=5)
            ax.plot([i + 0.15] * len(m["values"]), m["values"], "k.", ms=4)
        ax.set_xticks(range(len(arms)), list(arms), fontsize=9)
        ax.set_xlim(-0.5, len(arms) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        better = "higher" if result["higher_is_better"].get(metric, False) else "lower"
        ax.set_title(f"{metric} ({better} is better)", fontsize=9)
    fig.suptitle(f"{result['name']} ({result['budget']} budget, {len(result['seeds'])} seeds)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def load_results(out: str | Path = "book/ablations") -> dict[str, dict]:
    """The committed results: ``{name: result}`` for every ``<name>.json`` under ``out``."""
    out = Path(out)
    return {n: json.loads((out / f"{n}.json").read_text()) for n in ABLATIONS
            if (out / f"{n}.json").is_file()}  # fmt: skip


def verdict(result: dict) -> list[dict]:
    """Per primary metric: the paper's choice (the first arm) against the best other arm.

    ``agrees`` when the paper's arm is better by more than the two spreads (std over seeds)
    added, ``disagrees`` when it is worse by that much, else ``within spread``."""
    arms = list(result["arms"].items())
    (chosen, a), others = arms[0], arms[1:]
    rows = []
    for metric in result["primary"]:
        higher = result["higher_is_better"][metric]
        sign = 1.0 if higher else -1.0
        ma = a["metrics"][metric]
        name, mb = max(
            ((n, o["metrics"][metric]) for n, o in others), key=lambda x: sign * x[1]["mean"]
        )
        gap = sign * (ma["mean"] - mb["mean"])
        spread = ma["std"] + mb["std"] + 1e-6 * abs(ma["mean"])  # equal values tie
        outcome = "agrees" if gap > spread else "disagrees" if gap < -spread else "within spread"
        rows.append(
            {
                "metric": metric,
                "paper_choice": chosen,
                "paper_choice_value": f"{ma['mean']:.4g} ± {ma['std']:.2g}",
                "best_other": name,
                "best_other_value": f"{mb['mean']:.4g} ± {mb['std']:.2g}",
                "better": "higher" if higher else "lower",
                "outcome": outcome,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run the paper's ablations in miniature.")
    p.add_argument("names", nargs="+", choices=[*ABLATIONS, "all"], metavar="NAME",
                   help=f"one or more of {', '.join(ABLATIONS)}, or all")  # fmt: skip
    p.add_argument("--budget", default="small", choices=list(BUDGETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--out", type=Path, default=Path("book/ablations"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--plot-only", action="store_true", help="redraw figures from the JSON")
    args = p.parse_args(argv)
    names = ABLATIONS if "all" in args.names else tuple(args.names)
    if args.plot_only:
        for name, result in load_results(args.out).items():
            if name in names:
                print(plot(result, args.out / f"{name}.png"))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in names:
        result = run(name, args.budget, args.seeds, args.device, log=lambda s: print(s, flush=True))
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        figure = plot(result, args.out / f"{name}.png")
        print(
            f"{name}: {result['seconds']:.0f} s -> {args.out / (name + '.json')}, {figure} "
            f"(total {time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
