"""Training the VAE on toy-world videos: L1 + KL, optional perceptual and GAN terms.

    python -m cogvx_mini.training.vae_train --out runs/vae --steps 2000   # the 3D mini VAE
    python -m cogvx_mini.training.vae_train --out runs/vae2d --per-frame  # the 2D baseline

The loss is ``|x - x̂|₁ + kl_weight · KL / (pixels)`` (+ ``perceptual_weight · P(x̂, x)`` with a
user-supplied network ``P``: LPIPS, which CogVideoX uses, needs pretrained weights that cannot be
downloaded here) (+ ``gan_weight`` · a hinge GAN loss against a small 3D patch discriminator,
from ``gan_start`` on). Batches are random crops of procedural videos whose seeds come from the
step number, so a resumed run sees exactly the batches an uninterrupted one would, on any
device; the state (model, optimisers, RNG, step: safetensors + JSON) is saved atomically every
``save_every`` steps. The ablations (``cogvx_mini.experiments``) train their VAEs with this loop.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cogvx_mini.data.toyworld import palette_colour_errors, sample_video
from cogvx_mini.training.overrides import with_overrides
from cogvx_mini.training.schedule import LRSchedule
from cogvx_mini.training.step import NonFiniteLossError, check_finite, optimizer_step
from cogvx_mini.vae import VAE3D, VAEConfig, architecture_json
from cogvx_mini.vae_2d import per_frame_config, psnr
from cogvx_mini.weights.checkpoint import (
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    save_weights,
)

STATE_NAME = "state.safetensors"
HELD_OUT_SEED = 1_000_000  # evaluation seeds start here; training seeds stay below


@dataclass
class VAETrainConfig:
    steps: int = 2000
    batch: int = 4
    frames: int = 17
    size: int = 64  # rendered frame size
    crop: int = 32  # training crop (the VAE is fully convolutional)
    lr: float = 1e-3
    warmup: int = 50
    lr_decay: str = "constant"  # or "cosine" / "linear" to min_lr_ratio * lr at the last step
    min_lr_ratio: float = 0.0
    kl_weight: float = 1e-3
    perceptual_weight: float = 0.0
    gan_weight: float = 0.0
    gan_start: int = 1000
    seed: int = 0
    save_every: int = 200
    pool: int = 512  # distinct training scenes (rendered once, cached)
    max_minutes: float = 0.0  # stop (and save) after this long; 0 = no limit

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "frames", "crop", "save_every", "pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.crop > self.size:
            raise ValueError(f"crop: expected at most size ({self.size}), got {self.crop}")
        self.lr_schedule()  # validates lr, warmup and the decay

    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(self.lr, self.warmup, self.steps, self.lr_decay, self.min_lr_ratio)


class PatchDiscriminator3D(nn.Module):
    """A small 3D patch discriminator: ``[B, 3, T, H, W]`` -> logits ``[B, 1, T', H/8, W/8]``."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv3d(3, c, 3, stride=(1, 2, 2), padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv3d(c, 2 * c, 3, stride=(2, 2, 2), padding=1),
            nn.GroupNorm(8, 2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv3d(2 * c, 2 * c, 3, stride=(2, 2, 2), padding=1),
            nn.GroupNorm(8, 2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv3d(2 * c, 1, 3, padding=1),
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


@functools.lru_cache(maxsize=8192)  # the largest pool a run renders once
def _scene_video(seed: int, frames: int, size: int) -> torch.Tensor:
    return sample_video(seed, frames, size, size)[0].half()  # cached in half to save memory


def training_batch(step: int, cfg: VAETrainConfig) -> torch.Tensor:
    """Batch ``[B, 3, frames, crop, crop]`` for ``step``: toy videos cropped at random, all drawn
    from ``(cfg.seed, step)`` so that the batch of a step never depends on the run's history."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    videos = []
    for _ in range(cfg.batch):
        seed = int(torch.randint(0, cfg.pool, (1,), generator=g))
        video = _scene_video(seed, cfg.frames, cfg.size).float()
        y, x = (int(v) for v in torch.randint(0, cfg.size - cfg.crop + 1, (2,), generator=g))
        video = video[:, :, y : y + cfg.crop, x : x + cfg.crop]
        if torch.rand((), generator=g) < 0.5:
            video = video.flip(-1)
        videos.append(video)
    return torch.stack(videos)


def held_out_videos(n: int, frames: int = 17, size: int = 64) -> torch.Tensor:
    """``n`` evaluation videos ``[n, 3, frames, size, size]`` from seeds never trained on."""
    return torch.stack([sample_video(HELD_OUT_SEED + i, frames, size, size)[0] for i in range(n)])


@torch.no_grad()
def evaluate(vae: VAE3D, videos: torch.Tensor) -> dict[str, float]:
    """Mean reconstruction PSNR (dB), latent std (posterior means) and the colour error per
    palette colour (:func:`~cogvx_mini.data.toyworld.palette_colour_errors`) over ``videos``."""
    was_training = vae.training
    vae.eval()
    psnrs, latents, recons = [], [], []
    for video in videos.split(1):
        z = vae.encode(video).mean
        recons.append(vae.decode(z).clamp(-1, 1))
        psnrs.append(psnr(recons[-1], video))
        latents.append(z.flatten())
    vae.train(was_training)
    return {
        "psnr": torch.cat(psnrs).mean().item(),
        "latent_std": torch.cat(latents).std().item(),
        "colour_error": palette_colour_errors(torch.cat(recons), videos),
    }


def vae_loss(
    vae: VAE3D,
    x: torch.Tensor,
    cfg: VAETrainConfig,
    gen: torch.Generator,
    perceptual,
    disc: nn.Module | None,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, l1, reconstruction)`` of a batch ``x`` ``[B, 3, T, H, W]``: L1 + KL (+ terms).

    The posterior noise comes from the CPU generator ``gen`` (then moves to the VAE's device), so
    a resumed run draws what an uninterrupted one would, on any device."""
    posterior = vae.encode(x)
    noise = torch.randn(posterior.mean.shape, generator=gen).to(x.device, posterior.mean.dtype)
    recon = vae.decode(posterior.mean + posterior.std * noise)
    rec = (recon - x).abs().mean()
    loss = rec + cfg.kl_weight * posterior.kl().mean() / x[0].numel()
    if perceptual is not None and cfg.perceptual_weight > 0:
        loss = loss + cfg.perceptual_weight * perceptual(recon, x)
    if disc is not None and step >= cfg.gan_start:
        loss = loss - cfg.gan_weight * disc(recon).mean()  # hinge generator loss
    return loss, rec, recon


# Settings a resumed run may change: how long it runs and how often it saves.
RESUMABLE_CHANGES = ("steps", "save_every", "max_minutes")


@dataclass
class VAERun:
    """The VAE's training state: optimisers, the optional discriminator, RNG, losses, step."""

    vae: VAE3D
    opt: torch.optim.Optimizer
    disc: nn.Module | None
    opt_d: torch.optim.Optimizer | None
    gen: torch.Generator
    losses: list[float]
    step: int = 0

    @classmethod
    def start(cls, vae: VAE3D, cfg: VAETrainConfig) -> VAERun:
        torch.manual_seed(cfg.seed)  # the discriminator's initialisation
        device = next(vae.parameters()).device
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
        disc = PatchDiscriminator3D().to(device) if cfg.gan_weight > 0 else None
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) if disc else None
        return cls(vae, opt, disc, opt_d, torch.Generator().manual_seed(cfg.seed), [])

    def state_dict(self, cfg: VAETrainConfig) -> dict:
        state = {
            "model": self.vae.state_dict(),
            "opt": self.opt.state_dict(),
            "step": self.step,
            "losses": self.losses,
            "generator": self.gen.get_state(),
            "config": asdict(cfg),
            "architecture": architecture_json(self.vae.config),
        }
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict())
        return state

    def load(self, path: Path, cfg: VAETrainConfig) -> None:
        state = load_checkpoint(path)
        ours = asdict(cfg)
        changed = sorted(
            k for k, v in state["config"].items() if k not in RESUMABLE_CHANGES and ours.get(k) != v
        )
        architecture = architecture_json(self.vae.config)
        if state.get("architecture", architecture) != architecture:
            raise ValueError(
                f"{path} holds a VAE of another architecture ({state['architecture']} -> "
                f"{architecture}); use a new --out folder or the same --model"
            )
        if changed:
            diff = ", ".join(f"{k}: {state['config'][k]!r} -> {ours.get(k)!r}" for k in changed)
            raise ValueError(
                f"{path} was trained with other settings ({diff}); "
                "use a new --out folder or the same settings"
            )
        self.vae.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
        self.gen.set_state(state["generator"])
        self.step, self.losses = state["step"], list(state["losses"])


def _discriminator_step(run: VAERun, x: torch.Tensor, recon: torch.Tensor) -> None:
    d_loss = F.relu(1 - run.disc(x)).mean() + F.relu(1 + run.disc(recon.detach())).mean()
    check_finite(run.step, discriminator_loss=d_loss.item())
    run.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    run.opt_d.step()


def train_vae(
    vae: VAE3D,
    cfg: VAETrainConfig,
    out: str | Path | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> list[float]:
    """Train ``vae`` in place (on its device) for ``cfg.steps`` steps; returns the L1 loss per step.

    With ``out``, state is saved atomically to ``out/state.safetensors`` every ``cfg.save_every``
    steps and at the end, and an existing one is resumed (exactly, on any device; other settings
    are refused). ``perceptual(x̂, x) -> scalar`` is an optional perceptual loss network on
    videos ``[B, 3, T, H, W]``. A non-finite loss raises ``NonFiniteLossError`` before the
    weights change.
    """
    if cfg.perceptual_weight > 0 and perceptual is None:
        raise ValueError("perceptual_weight > 0 needs a perceptual network (LPIPS is not shipped)")
    device = next(vae.parameters()).device  # batches are drawn on the CPU, then moved there
    run, lr = VAERun.start(vae, cfg), cfg.lr_schedule()
    path = Path(out) / STATE_NAME if out is not None else None
    if path is not None:
        remove_stale_temporaries(path)
        if path.exists():
            run.load(path, cfg)
    if run.step == 0:
        # Start with a narrow posterior (std e^-2): with std 1 the decoder first sees mostly
        # noise, and the reconstruction loss sits on a plateau until the encoder learns to shrink
        # it. The KL term keeps it from collapsing.
        with torch.no_grad():
            vae.encoder.conv_out.conv.bias[vae.config.latent_channels :] = -4.0
    vae.train()
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc="vae")
    while run.step < cfg.steps:
        x = training_batch(run.step, cfg).to(device)
        loss, rec, recon = vae_loss(vae, x, cfg, run.gen, perceptual, run.disc, run.step)
        check_finite(run.step, loss=loss.item())
        loss.backward()
        optimizer_step(run.opt, vae.parameters(), lr(run.step), 1.0, run.step, loss=loss.item())
        if run.disc is not None and run.step >= cfg.gan_start:
            _discriminator_step(run, x, recon)
        run.losses.append(rec.item())
        run.step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{rec.item():.4f}")
        out_of_time = cfg.max_minutes > 0 and time.perf_counter() - start > 60 * cfg.max_minutes
        if path is not None and (
            run.step % cfg.save_every == 0 or run.step == cfg.steps or out_of_time
        ):
            save_checkpoint(run.state_dict(cfg), path)
        if out_of_time:
            break
    bar.close()
    vae.eval()
    return run.losses


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for state.safetensors and the weights")
    p.add_argument("--per-frame", action="store_true", help="train the per-frame 2D baseline")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (resumes exactly on either)")
    p.add_argument("--eval-videos", type=int, default=16)
    p.add_argument(
        "--model",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="VAEConfig overrides of the mini (or per-frame) VAE: block_out_channels=[16,48,64,96]",
    )
    p.add_argument(
        "--export-only", action="store_true", help="export the weights of the saved state as is"
    )
    # Every VAETrainConfig field is a flag (--lr 1e-3), read by the one override parser.
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    for name in VAETrainConfig.__dataclass_fields__:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest="set",
            action="append",
            type=lambda v, n=name: f"{n}={v}",
            metavar="VALUE",
        )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cfg = with_overrides(VAETrainConfig(), args.set, "vae_train")
        base = per_frame_config() if args.per_frame else VAEConfig.mini()
        model_cfg = with_overrides(base, args.model, "--model")
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    vae = VAE3D(model_cfg).to(args.device)
    start = time.perf_counter()
    try:
        if args.export_only:
            state = load_checkpoint(Path(args.out) / STATE_NAME)
            vae.load_state_dict(state["model"])
            trained = state["step"]
        else:
            trained = len(train_vae(vae, cfg, args.out))  # fewer if --max-minutes stopped it
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:
        raise SystemExit(f"error: {err}; nothing exported") from None
    export(vae, cfg, args, (time.perf_counter() - start) / 60, trained)


def export(
    vae: VAE3D, cfg: VAETrainConfig, args: argparse.Namespace, minutes: float, trained: int
) -> None:
    """Evaluate on held-out videos and write the float16 weights with their metrics; ``steps``
    in the metadata is the schedule's length, ``trained_steps`` the steps actually taken."""
    vae.cpu()
    vae.load_state_dict({k: v.half().float() for k, v in vae.state_dict().items()})  # as shipped
    metrics = evaluate(vae, held_out_videos(args.eval_videos))
    metrics["scaling_factor"] = 1.0 / metrics["latent_std"]  # latents * factor have unit std
    name = "vae2d_mini.safetensors" if args.per_frame else "vae_mini.safetensors"
    meta = {**asdict(cfg), **metrics, "minutes": minutes, "trained_steps": trained}
    meta["vae_config"] = architecture_json(vae.config)
    meta = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in meta.items()}
    # Shipped in float16 (half the size; loading casts back to the model's float32).
    weights = {k: v.half() if v.is_floating_point() else v for k, v in vae.state_dict().items()}
    save_weights(weights, Path(args.out) / name, metadata=meta)
    print(
        f"{name}: held-out PSNR {metrics['psnr']:.2f} dB, latent std "
        f"{metrics['latent_std']:.3f}, {minutes:.1f} min this run"
    )


if __name__ == "__main__":
    main()
