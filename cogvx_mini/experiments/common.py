"""What the ablations share: budgets, the frozen latent VAE and cached latents, training an arm
through the library's own loops, and the evaluations (held-out loss, the judge, summaries).

Every arm trains with ``cogvx_mini.training.train.train`` (diffusion; constant learning rate
after warm-up, no checkpoints, the raw weights evaluated) or ``cogvx_mini.training.vae_train
.train_vae`` (the VAE), so an ablation measures the same recipe the book ships.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from cogvx_mini.data.text_encoder import ToyTextEncoder
from cogvx_mini.diffusion import NoiseSchedule, add_noise, v_loss, v_target
from cogvx_mini.frame_pack import Bucket
from cogvx_mini.training.train import (
    LatentDataset,
    TrainConfig,
    TrainResult,
    cache_latents,
    toy_clips,
    train,
)
from cogvx_mini.training.vae_train import VAETrainConfig, held_out_videos, train_vae
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig, count_parameters
from cogvx_mini.vae import VAE3D, VAEConfig
from cogvx_mini.vae_2d import flicker_score, psnr

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
    # The scenes (a name of training.train.WORLDS: "laptop" is learnable in a few thousand
    # steps, so the judge can tell arms apart there at a small budget), and the recipe's
    # learning-rate decay and EMA: 1.0 and False compare the raw weights at a constant rate.
    world: str = "full"
    final_lr_ratio: float = 1.0
    evaluate_ema: bool = False

    def __post_init__(self) -> None:
        from cogvx_mini.training.train import WORLDS

        if self.world not in WORLDS:
            raise ValueError(f"world: expected one of {sorted(WORLDS)}, got {self.world!r}")

    def scene_options(self) -> dict:
        """``toyworld.sample_scene``'s arguments that draw this budget's world."""
        from cogvx_mini.training.train import WORLDS

        return WORLDS[self.world].scene_options()


BUDGETS = {
    # For the test: seconds.
    "tiny": Budget("tiny", (0, 1), steps=3, batch=2, clips=6, eval_clips=2, eval_timesteps=2,
                   prompts=1, sample_steps=2, vae_steps=2, vae_batch=1, vae_frames=5,
                   vae_crop=16, vae_eval=1, frames=5, size=32, curve_points=3),
    # About two minutes per ablation on one (shared) CPU thread.
    "small": Budget("small", (0, 1), steps=120, batch=8, clips=96, eval_clips=6, prompts=6,
                    sample_steps=8, vae_steps=60, vae_batch=2, vae_frames=9, vae_crop=32,
                    vae_eval=6),
    # All six in minutes on one GPU (a mini step takes a few ms there). Its judge stays near the
    # floor (0.13-0.17 in the pilot, book/ablations/pilot_gpu.json): losses only.
    "full": Budget("full", (0, 1, 2), steps=800, batch=32, clips=1024, frames=9, eval_clips=32,
                   prompts=32, sample_steps=25, vae_steps=400, vae_batch=8, vae_frames=17,
                   vae_crop=64, vae_eval=32, warmup=60),
    # The recipe of `make train` (the laptop world, 13 frames, cosine decay, EMA judged at 50
    # DDIM steps and guidance 3): six draws of it judge 0.680 +- 0.033 (book/data/
    # laptop_sweep.json), so three seeds an arm detect a difference of about 0.09. The VAE arms
    # train 3,000 steps (their late_drop says whether they flattened). On one GPU:
    # tools/gpu_ablations.sh (one process per arm and seed, 13 at once; resumable).
    "laptop": Budget("laptop", (0, 1, 2), steps=4000, batch=32, clips=3000, frames=13, lr=4e-3,
                     warmup=200, eval_clips=32, prompts=64, sample_steps=50, guidance=3.0,
                     vae_steps=3000, vae_batch=8, vae_frames=17, vae_crop=64, vae_eval=32,
                     world="laptop", final_lr_ratio=0.1, evaluate_ema=True),
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


def merge_runs(parts: Sequence[dict], what: str = "parts") -> dict:
    """One result from results of one experiment and budget whose runs split its (arm, seed)
    pairs between them (one process per arm and seed, say): per arm, the seeds' entries are
    joined in seed order (summaries over seeds summarised again, per-seed lists concatenated);
    what does not depend on the seed (settings, parameter counts, judge ceilings) is the first
    part's. Every arm must end with the same seeds. ``seconds`` is the longest part's (they
    ran at once); ``seconds_per_part`` keeps each."""
    settings = {json.dumps(dict(p["budget_settings"], seeds=[]), sort_keys=True) for p in parts}
    if len({p.get("name") for p in parts}) != 1 or len(settings) != 1:
        raise ValueError(f"{what}: expected results of one experiment and one budget")
    runs: dict[str, list[tuple[int, dict, int]]] = {}  # arm -> (seed, part's arm, index)
    for part in parts:
        for arm, entry in part["arms"].items():
            runs.setdefault(arm, []).extend((s, entry, i) for i, s in enumerate(part["seeds"]))
    seeds = sorted(s for s, _, _ in next(iter(runs.values())))
    for arm, entries in runs.items():
        got = sorted(s for s, _, _ in entries)
        if len(set(got)) != len(got) or got != seeds:
            raise ValueError(f"{what}: arm {arm!r} has seeds {got}, expected each of {seeds} once")
    first = parts[0]
    merged = dict(first, seeds=seeds, budget_settings=dict(first["budget_settings"], seeds=seeds))
    merged["seconds"] = max(p["seconds"] for p in parts)
    merged["seconds_per_part"] = [p["seconds"] for p in parts]
    merged["arms"] = {arm: _merge_arm(sorted(e, key=lambda x: x[0])) for arm, e in runs.items()}
    return merged


def _merge_arm(entries: list[tuple[int, dict, int]]) -> dict:
    """One arm from its per-seed entries ``(seed, the arm in a part, the seed's index there)``."""
    head = entries[0][1]

    def join(key_path: tuple[str, ...], value):
        def pick(entry):
            for k in key_path:
                entry = entry[k]
            return entry

        if isinstance(value, dict) and "values" in value and "mean" in value:  # a summary
            return summary([pick(e)["values"][i] for _, e, i in entries])
        if isinstance(value, dict):
            return {k: join((*key_path, k), v) for k, v in value.items()}
        if isinstance(value, list) and all(len(pick(e)) == _seed_count(e) for _, e, _ in entries):
            return [pick(e)[i] for _, e, i in entries]  # one entry per seed
        return value

    return {k: join((k,), v) for k, v in head.items()}


def _seed_count(arm: dict) -> int:
    """How many seeds a part ran for ``arm`` (its loss curves, one per seed)."""
    return len(arm["loss_curves"])


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


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)


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


def vae_cfg(budget: Budget, seed: int, steps: int | None = None) -> VAETrainConfig:
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
            seed_all(1234)  # the same VAE whatever ran before in this process
            vae = VAE3D(VAEConfig.mini())
            train_vae(vae.to(device), vae_cfg(budget, seed=1234), progress=False)
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
    key = (
        budget.name,
        budget.world,
        device,
        count,
        tuple(lengths),
        tuple(buckets),
        first_seed,
        latent_scale,
        size,
    )
    if key not in _DATASETS:
        _DATASETS[key] = _latent_dataset(
            budget, device, count, lengths, buckets, first_seed, latent_scale, size
        )
    return _DATASETS[key]


_DATASETS: dict[tuple, LatentDataset] = {}


def _latent_dataset(budget, device, count, lengths, buckets, first_seed, latent_scale, size):
    vae, origin = latent_vae(budget, device)
    size = size or budget.size
    clips = toy_clips(count, lengths, size, size, first_seed=first_seed, **budget.scene_options())
    # The VAE lives on ``device``; cache_latents encodes there and keeps the cache on the CPU.
    data = cache_latents(clips, vae, ToyTextEncoder(), buckets, latent_scale, progress=False)
    data.meta["vae"] = origin
    return data


# ---------------------------------------------------------------------------------------------
# Diffusion training on any device (the mini recipe without EMA or checkpoints)


def train_diffusion(
    model: CogVideoXTransformer,
    data: LatentDataset,
    budget: Budget,
    seed: int,
    device: str,
    strata: int | None = None,
) -> TrainResult:
    """Train ``model`` for ``budget.steps`` on ``data`` with the mini loop: v-loss, AdamW with
    warm-up then a cosine decay to ``budget.final_lr_ratio`` (1: a constant rate), gradient
    clipping, 10% caption dropout; timesteps stratified over ``strata`` simulated ranks
    (default: the batch, CogVideoX's explicit uniform sampling; 1 = independent draws). The arm
    is evaluated on the raw weights, or on the EMA where the budget says ``evaluate_ema``."""
    cfg = TrainConfig(
        steps=budget.steps,
        batch_size=budget.batch,
        lr=budget.lr,
        warmup=budget.warmup,
        final_lr_ratio=budget.final_lr_ratio,
        timestep_strata=budget.batch if strata is None else strata,
        snr_shift_scale=NoiseSchedule().snr_shift_scale,  # the schedule eval_loss uses
        seed=seed,
    )
    result = train(model.to(device), data, cfg, None, progress=False)
    model.eval()
    return result


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
    both judges: mean text-alignment score (the judge's and the strict judge's, which also
    fails an object that breaks up, merges, changes shape or size, or jumps), the feature
    distances of the videos from real clips of the same captions (:func:`feature_distances`,
    lower is better), share of objects
    moving the captioned way, and the position tracks' RMS distance (pixels) from a
    constant-velocity line (large-motion consistency: an object that jumps or stalls scores
    high)."""
    from cogvx_mini.data.strict_judge import strict_judge
    from cogvx_mini.data.toyworld import judge_details, render
    from cogvx_mini.pipeline import evaluation_scenes, generate

    pipe = _pipeline(model, data, budget, device)
    frames = frames or budget.frames
    first = 10_000 + 97 * seed
    scenes = evaluation_scenes("train", budget.prompts, first, **budget.scene_options())
    prompts = [scene.caption for scene in scenes]
    videos = generate(
        prompts,
        pipe,
        frames=frames,
        height=budget.size,
        width=budget.size,
        steps=budget.sample_steps,
        guidance=budget.guidance,
        seed=seed,
        progress=False,
    )
    scores, strict, moving, residuals = [], [], [], []
    for video, prompt in zip(videos, prompts, strict=True):
        verdict = judge_details(video, prompt)
        scores.append(verdict.score)
        strict.append(strict_judge(video, prompt))
        for obj in verdict.objects:
            moving.append(float(obj.direction_ok))
            if len(obj.track) >= 3:
                residuals.append(track_residual(obj.track))
    real = [render(scene, frames, budget.size, budget.size) for scene in scenes]
    return {
        "judge_score": sum(scores) / len(scores),
        "strict_judge_score": sum(strict) / len(strict),
        **feature_distances(list(videos), real),
        "direction_ok": sum(moving) / max(len(moving), 1),
        "track_residual_px": sum(residuals) / len(residuals) if residuals else math.nan,
    }


def feature_distances(generated: list[torch.Tensor], real: list[torch.Tensor]) -> dict:
    """The FVD analogues of ``generated`` against ``real`` clips (each ``[3, T, H, W]``), on the
    shipped toy-video feature network's features: ``feature_kid``, the kernel distance
    (unbiased: ~0 for real against real at any set size), and ``feature_fd``, the Fréchet
    distance (FVD's own, biased upward by ~1/N at N clips: compare it only at equal N). NaN
    for fewer than two clips a side."""
    from cogvx_mini.data.video_features import frechet_distance, kernel_distance, video_features

    if min(len(generated), len(real)) < 2:
        return {"feature_kid": math.nan, "feature_fd": math.nan}
    net = _feature_network()
    fg, fr = video_features(net, generated), video_features(net, real)
    return {"feature_kid": kernel_distance(fg, fr), "feature_fd": frechet_distance(fg, fr)}


@functools.cache
def _feature_network():
    from cogvx_mini.data.video_features import load_video_features

    return load_video_features()


@torch.no_grad()
def judge_ceiling(data: LatentDataset, budget: Budget, device: str) -> float:
    """The judge's mean score of the latent VAE's reconstructions of ``budget.prompts`` real
    clips of ``data``: the best a generator can score through this VAE (1 for a perfect VAE)."""
    from cogvx_mini.data.toyworld import judge

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


def train_and_held(budget: Budget, device: str) -> tuple[LatentDataset, LatentDataset]:
    """The training clips and the held-out clips (normalised alike) of one-bucket ablations."""
    train = latent_dataset(budget, device, budget.clips, (budget.frames,), train_buckets(budget))
    held = latent_dataset(
        budget,
        device,
        budget.eval_clips,
        (budget.frames,),
        train_buckets(budget),
        EVAL_SEED,
        train.latent_scale,
    )
    return train, held


def mini(**overrides) -> TransformerConfig:
    return TransformerConfig.mini(**overrides)


def diffusion_ablation(
    budget: Budget,
    seeds: Sequence[int],
    device: str,
    arms: dict[str, dict],
    data_for: Callable[[str], LatentDataset],
    evaluate: Callable[[str, CogVideoXTransformer, TrainResult, int], dict[str, float]],
    log: Callable[[str], None],
) -> dict:
    """Train every arm (``{"config": TransformerConfig, "strata": int | None}``) for every seed
    on ``data_for(arm)``; ``evaluate`` returns the arm's metrics for one seed."""
    out = {}
    for arm, spec in arms.items():
        data = data_for(arm)
        curves, metrics, seconds = [], {}, []
        for seed in seeds:
            seed_all(seed)
            model = CogVideoXTransformer(spec["config"])
            run_ = train_diffusion(model, data, budget, seed, device, spec.get("strata"))
            curves.append(curve(run_.losses, budget.curve_points))
            m = {"final_train_loss": sum(run_.losses[-20:]) / len(run_.losses[-20:])}
            evaluated = run_.ema.eval() if budget.evaluate_ema else model
            m.update(evaluate(arm, evaluated, run_, seed))
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


def arms_and_judge_ceiling(budget, seeds, device, arms, train, evaluate, log) -> dict:
    """``{"arms", "judge_ceiling"}`` of an ablation whose arms all train on ``train``."""
    return {
        "arms": diffusion_ablation(budget, seeds, device, arms, lambda a: train, evaluate, log),
        "judge_ceiling": judge_ceiling(train, budget, device),
    }


def only(specs: dict[str, dict], arms: Sequence[str]) -> dict[str, dict]:
    """The arm specs named in ``arms`` (a part of an ablation runs some of its arms)."""
    return {name: spec for name, spec in specs.items() if name in arms}


def train_buckets(budget: Budget) -> list[Bucket]:
    return [Bucket(budget.frames, budget.size, budget.size)]
