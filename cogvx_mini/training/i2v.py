"""The mini image-to-video model: the shipped text-to-video transformer taught to start from a
frame.

    python -m cogvx_mini.training.i2v --out runs/i2v --device cuda --steps 2500 --ship
    python -m cogvx_mini.training.i2v --out /tmp/i2v --clips 64 --steps 20 --judge-prompts 4  # CPU

CogVideoX-5B-I2V was made from the text-to-video model by widening its input
[@yang2024cogvideox]: ``patch_embed`` reads the noisy latents and, beside them on channels, a
conditioning video whose frame 0 is the image's latent and whose other frames are zero
(:mod:`cogvx_mini.image_to_video`). Here the same: :func:`widen_input` adds the image channels with
zero weights, so training starts from exactly the shipped model, and only learns to use them.
Each training clip's first frame is encoded alone, as a one-frame video, the way the sampler will
encode a user's image (:class:`FirstFrameBeside`); as CogVideoX's training does, the image latent
is lightly noised (:class:`ImageConditionedObjective`, sigma = exp(N(-3, 0.5))) so the model does
not rely on an exact copy. The loop, checkpoints, EMA and export are those of
:mod:`cogvx_mini.training.train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cogvx_mini.image_to_video import generate_from_image, image_condition
from cogvx_mini.training.objective import DiffusionBatch, Objective
from cogvx_mini.training.step import NonFiniteLossError
from cogvx_mini.training.train import (
    WORLDS,
    LatentDataset,
    TrainConfig,
    cache_key,
    cache_latents,
    cached_dataset,
    export_ema,
    ship,
    toy_clips,
    train,
    write_log,
)
from cogvx_mini.transformer import CogVideoXTransformer
from cogvx_mini.weights.assets import ASSETS
from cogvx_mini.weights.mini import I2V_WEIGHTS_NAME, WEIGHTS_NAME, read_mini_weights

IMAGE_NOISE_LOG_SIGMA = (-3.0, 0.5)  # mean and std of log sigma, as CogVideoX's I2V training


def widen_input(model: CogVideoXTransformer) -> CogVideoXTransformer:
    """A copy of ``model`` whose ``patch_embed`` reads ``[x ; c]`` (twice the channels): the new
    image channels' weights are zero, so the copy predicts exactly what ``model`` does."""
    c = model.config
    if c.in_channels != c.out_channels:
        raise ValueError(f"model: expected a text-to-video model, got in_channels {c.in_channels}")
    wide = CogVideoXTransformer(dataclasses.replace(c, in_channels=2 * c.in_channels))
    state = model.state_dict()
    weight = state["patch_embed.weight"]  # [D, C·q·p·p]; patchify puts channels outermost
    state["patch_embed.weight"] = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    wide.load_state_dict(state)
    return wide


@dataclass
class Moments:
    """A posterior's ``mean`` and ``std`` (what :func:`cache_latents` reads of an encoding)."""

    mean: torch.Tensor
    std: torch.Tensor


class FirstFrameBeside(nn.Module):
    """An encoder for :func:`cache_latents`: ``encode(video [B, 3, T, H, W])`` -> moments
    ``[B, 2·C, T', h, w]``, the clip's posterior and, beside it on channels, the posterior of its
    first frame encoded alone at latent frame 0 (zero after it: :func:`image_condition`)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def encode(self, video: torch.Tensor) -> Moments:
        clip, first = self.vae.encode(video), self.vae.encode(video[:, :, :1])
        frames = clip.mean.shape[2]
        mean = torch.cat([clip.mean, image_condition(first.mean, frames)], dim=1)
        return Moments(mean, torch.cat([clip.std, image_condition(first.std, frames)], dim=1))


@dataclass
class ImageConditionedObjective(Objective):
    """v-prediction on the video channels of ``x0 [B, 2·C, T', h, w]``, with its image channels,
    lightly noised, beside the noisy latents. The loop draws noise for all channels; that of the
    image channels supplies the image's noise (at frame 0) and each sample's sigma (its last
    value, a draw the image's noise does not use when T' > 1)."""

    def per_sample_loss(self, model: nn.Module, batch: DiffusionBatch) -> torch.Tensor:
        video, image = batch.x0.chunk(2, dim=1)
        video_noise, image_noise = batch.noise.chunk(2, dim=1)
        mean, std = IMAGE_NOISE_LOG_SIGMA
        sigma = torch.exp(mean + std * image_noise.flatten(1)[:, -1]).view(-1, 1, 1, 1, 1)
        noise_at_image = torch.zeros_like(image_noise)
        noise_at_image[:, :, :1] = image_noise[:, :, :1]  # later frames of the condition stay 0
        condition = image + sigma * noise_at_image

        def conditioned(x: torch.Tensor, text: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(torch.cat([x, condition], dim=1), text, t)

        inner = dataclasses.replace(batch, x0=video, noise=video_noise)
        return super().per_sample_loss(conditioned, inner)


def build_i2v_dataset(
    count: int,
    latent_scale: float,
    text_shape: tuple[int, int],
    vae_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> LatentDataset:
    """The full world's training clips with their first frames beside them
    (:class:`FirstFrameBeside`), scaled by ``latent_scale`` and with text embeddings of
    ``text_shape`` = ``(max_text_len, text_dim)``: those of the model being widened, so the
    video channels and the text are exactly what it trained on."""
    from cogvx_mini.data.text_encoder import ToyTextEncoder
    from cogvx_mini.vae import load_mini_vae

    world = WORLDS["full"]
    encoder = FirstFrameBeside(load_mini_vae(vae_weights).to(device))
    clips = toy_clips(count, world.lengths, **world.scene_options())
    text = ToyTextEncoder(dim=text_shape[1], max_length=text_shape[0])
    return cache_latents(clips, encoder, text, world.buckets, latent_scale, progress=progress)


def start_kept(video: torch.Tensor, real: torch.Tensor, caption: str, tolerance: float) -> list:
    """Per captioned object: does ``video`` ``[3, T, H, W]`` show it at frame 0 within
    ``tolerance`` pixels of where ``real`` (the clip whose first frame was given) has it?"""
    from cogvx_mini.data.toyworld import judge_details

    got, want = (judge_details(v[:, :1], caption).objects for v in (video, real))
    return [
        g.present and w.present and math.dist(g.track[0], w.track[0]) <= tolerance
        for g, w in zip(got, want, strict=True)
    ]


@torch.no_grad()
def image_to_video_scores(
    pipe, clips: list, frames: int, use_image: bool = True, batch_size: int = 16, **kwargs
) -> dict:
    """Judge the videos ``pipe`` makes from each real clip's first frame and caption
    (``use_image=False``: from the caption alone, a text-to-video model's baseline): the means of
    the judge and the strict judge, and ``start_kept``, the share of objects that start where the
    given frame has them (within 3 pixels of 64)."""
    from cogvx_mini.data.strict_judge import strict_judge
    from cogvx_mini.data.toyworld import judge
    from cogvx_mini.pipeline import generate

    scores: dict[str, list] = {"judge": [], "strict": [], "start_kept": []}
    for start in range(0, len(clips), batch_size):
        reals = torch.stack([v for v, _ in clips[start : start + batch_size]])
        captions = [c for _, c in clips[start : start + batch_size]]
        common = {"frames": frames, "progress": False, **kwargs}
        if use_image:
            videos = generate_from_image(reals[:, :, 0], captions, pipe, **common)
        else:
            videos = generate(captions, pipe, **common)
        for video, real, caption in zip(videos, reals, captions, strict=True):
            scores["judge"].append(judge(video, caption))
            scores["strict"].append(strict_judge(video, caption))
            scores["start_kept"] += start_kept(video, real, caption, tolerance=3.0)
    return {k: sum(v) / len(v) for k, v in scores.items()} | {"prompts": len(clips)}


def evaluation_clips(split: str, count: int, frames: int = 17, first_seed: int = 10_000) -> list:
    """``count`` real clips ``([3, frames, 64, 64], caption)`` of ``split`` from seeds no
    training clip used (those of :func:`~cogvx_mini.pipeline.evaluation_prompts`)."""
    return list(toy_clips(count, (frames,), split=split, first_seed=first_seed))


def judge_i2v(weights: Path, base: Path, prompts: int, vae_weights: Path | None) -> dict:
    """:func:`image_to_video_scores` of the trained ``weights`` on ``prompts`` clips of each
    split, beside the text-to-video ``base`` model's on the same captions."""
    from cogvx_mini.pipeline import MINI_GUIDANCE, load_mini

    judged: dict = {"guidance": MINI_GUIDANCE, "frames": 17, "steps": 50}
    models = {"image_to_video": (weights, True), "text_to_video_base": (base, False)}
    for split in ("train", "held_out"):
        clips = evaluation_clips(split, prompts)
        for name, (path, use_image) in models.items():
            got = image_to_video_scores(load_mini(path, vae_weights), clips, 17, use_image)
            judged.setdefault(name, {})[split] = got
            print(f"{name:>19} {split:>8}: judge {got['judge']:.3f}, strict {got['strict']:.3f}, "
                  f"objects starting where the frame has them {got['start_kept']:.0%}")  # fmt: skip
    return judged


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the mini image-to-video model.")
    p.add_argument("--out", type=Path, default=Path("runs/i2v"))
    p.add_argument("--init-from", type=Path, default=ASSETS / WEIGHTS_NAME,
                   help="the text-to-video weights to widen (default: shipped)")  # fmt: skip
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    p.add_argument("--clips", type=int, default=20_000, help="training scenes")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--vae-weights", type=Path, default=None, help="default: shipped")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after")
    p.add_argument("--judge-prompts", type=int, default=64, help="clips per split (0: none)")
    p.add_argument("--ship", action="store_true", help=f"write assets/{I2V_WEIGHTS_NAME}")
    args = p.parse_args(argv)
    for name in ("clips", "steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got "
                    f"{getattr(args, name)}")  # fmt: skip
    if args.judge_prompts < 0:
        p.error(f"--judge-prompts: expected a count >= 0, got {args.judge_prompts}")
    if not args.init_from.is_file():
        p.error(f"--init-from: no weights file at {args.init_from}")
    args.world, args.lora = "full", None  # what export_ema and write_log read of a run
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup)
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    start = time.perf_counter()
    base_config, base_state, meta = read_mini_weights(args.init_from)
    if float(meta["snr_shift_scale"]) != cfg.snr_shift_scale:
        raise SystemExit(f"error: {args.init_from} was trained with another noise schedule")
    base = CogVideoXTransformer(base_config)
    base.load_state_dict(base_state)
    model = widen_input(base).to(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    text_shape = (base_config.max_text_len, base_config.text_dim)  # what the model reads
    key = cache_key(args.clips, WORLDS["full"], args.vae_weights, text_shape)
    key["first_frame_beside"] = True
    scale = float(meta["latent_scale"])
    dataset = cached_dataset(
        args.out,
        key,
        lambda: build_i2v_dataset(args.clips, scale, text_shape, args.vae_weights, args.device),
    )
    print(f"{len(dataset.clips)} clips with their first frames cached; widened {args.init_from}")
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    objective = ImageConditionedObjective(cfg.schedule())
    try:
        result = train(model, dataset, cfg, args.out, max_seconds=max_seconds, objective=objective)
    except (ValueError, NonFiniteLossError) as err:
        raise SystemExit(f"error: {err}") from None
    weights = export_ema(result, args.out, model.config, cfg, args)
    print(f"EMA weights after {result.step} steps: {weights} ({time.perf_counter() - start:.0f} s)")
    judged = {}
    if args.judge_prompts:
        judged = judge_i2v(weights, args.init_from, args.judge_prompts, args.vae_weights)
    write_log(args, result, dataset, model.config, cfg, time.perf_counter() - start, judged)
    if args.ship:
        ship(weights, ASSETS / I2V_WEIGHTS_NAME, finished=result.step == cfg.steps)
    if result.interrupted:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
