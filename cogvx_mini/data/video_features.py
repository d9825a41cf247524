"""A feature distance between two sets of toy-world videos: the miniature of FVD.

FVD (Unterthiner et al., 2018) embeds real and generated videos with a network trained on real
video (I3D) and reports the Fréchet distance between Gaussians fitted to the two sets of
features. Here the network is :class:`ToyVideoFeatures`, a small 3D CNN trained on the toy world
to say, for every palette colour, whether an object of that colour is in the clip and, if so,
its shape, size and direction: its features hold what the world varies, including motion.
The distance compares whole sets (how varied, how real), where the judge scores one video
against its caption.

    python -m cogvx_mini.data.video_features   # writes assets/; a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cogvx_mini.data.toyworld import COLOURS, DIRECTIONS, SHAPES, SIZES, render, sample_scene
from cogvx_mini.weights.assets import ASSETS
from cogvx_mini.weights.checkpoint import load_weights, save_weights

WEIGHTS_NAME = "video_features_mini.safetensors"
PALETTE, SHAPE_NAMES, SIZE_NAMES, DIRECTION_NAMES = (
    sorted(COLOURS),
    list(SHAPES),
    sorted(SIZES),
    sorted(DIRECTIONS),
)
# Per palette colour: present (1), shape (3), size (2), direction (4) logits; the heads'
# column ranges after the presence logit.
PER_COLOUR = 1 + len(SHAPE_NAMES) + len(SIZE_NAMES) + len(DIRECTION_NAMES)
HEAD_EDGES = (1, 1 + len(SHAPE_NAMES), 1 + len(SHAPE_NAMES) + len(SIZE_NAMES), PER_COLOUR)


class ToyVideoFeatures(nn.Module):
    """``[B, 3, T, H, W]`` in [-1, 1] (any ``T``; resized to 64 x 64) -> features ``[B, dim]``;
    ``logits`` adds the attribute heads, ``[B, len(PALETTE), PER_COLOUR]``."""

    def __init__(self, dim: int = 32, width: int = 16) -> None:
        super().__init__()
        w = width
        self.convs = nn.Sequential(
            nn.Conv3d(3, w, 3, stride=(1, 2, 2), padding=1),
            nn.GELU(),
            nn.Conv3d(w, 2 * w, 3, stride=(1, 2, 2), padding=1),
            nn.GELU(),
            nn.Conv3d(2 * w, 4 * w, 3, stride=(2, 2, 2), padding=1),
            nn.GELU(),
            nn.Conv3d(4 * w, 4 * w, 3, stride=(1, 2, 2), padding=1),
            nn.GELU(),
        )
        self.to_features = nn.Linear(4 * w * 4 * 4, dim)  # the 4 x 4 map kept, time pooled
        self.heads = nn.Linear(dim, len(PALETTE) * PER_COLOUR)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video: expected [B, 3, T, H, W], got {tuple(video.shape)}")
        if video.shape[-2:] != (64, 64):
            b, t = video.shape[0], video.shape[2]
            frames = video.transpose(1, 2).flatten(0, 1)
            frames = F.interpolate(frames, size=(64, 64), mode="bilinear", antialias=True)
            video = frames.unflatten(0, (b, t)).transpose(1, 2)
        x = self.convs(video).mean(dim=2)  # [B, C, 4, 4]: where things are, over time
        return self.to_features(x.flatten(1))

    def logits(self, video: torch.Tensor) -> torch.Tensor:
        return self.heads(F.gelu(self(video))).unflatten(1, (len(PALETTE), PER_COLOUR))


def attribute_targets(caption_scene) -> torch.Tensor:
    """A scene's targets ``[len(PALETTE), 4]``: present, shape, size, direction index (-1 where
    the colour is absent, ignored by the loss)."""
    target = torch.full((len(PALETTE), 4), -1, dtype=torch.long)
    target[:, 0] = 0
    for obj in caption_scene.objects:
        c = PALETTE.index(obj.colour)
        target[c] = torch.tensor(
            [
                1,
                SHAPE_NAMES.index(obj.shape),
                SIZE_NAMES.index(obj.size),
                DIRECTION_NAMES.index(obj.direction),
            ]
        )
    return target


def attribute_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every head: presence of each colour, and the shape, size and direction
    of each colour present. ``logits [B, P, PER_COLOUR]``, ``target [B, P, 4]``."""
    present = F.binary_cross_entropy_with_logits(logits[..., 0], target[..., 0].float())
    losses = [present]
    for k, (a, b) in enumerate(zip(HEAD_EDGES[:-1], HEAD_EDGES[1:], strict=True), start=1):
        losses.append(
            F.cross_entropy(
                logits[..., a:b].flatten(0, 1), target[..., k].flatten(), ignore_index=-1
            )
        )
    return sum(losses)


def toy_batch(seeds: range, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips ``[N, 3, frames, 64, 64]`` of scene ``seeds`` and their targets ``[N, P, 4]``."""
    scenes = [sample_scene(s) for s in seeds]
    videos = torch.stack([render(s, frames, 64, 64) for s in scenes])
    return videos, torch.stack([attribute_targets(s) for s in scenes])


def train_features(
    steps: int = 800,
    batch: int = 32,
    pool: int = 1536,
    lengths: tuple[int, ...] = (9, 13, 17, 21),
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
):
    """Train :class:`ToyVideoFeatures` on a pool of ``pool`` toy-world clips, a quarter at each
    of ``lengths`` (scene seeds from 1,000,000, far from every other use; rendered once, as
    rendering costs more than a step); returns the model (eval mode) and its losses."""
    torch.manual_seed(seed)
    per = pool // len(lengths)
    groups = [
        toy_batch(range(1_000_000 + i * per, 1_000_000 + (i + 1) * per), frames)
        for i, frames in enumerate(lengths)
    ]
    model = ToyVideoFeatures().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(steps), desc="video features", disable=not progress)
    for step in bar:
        videos, target = groups[step % len(groups)]
        pick = torch.randint(len(videos), (batch,), generator=gen)
        loss = attribute_loss(model.logits(videos[pick].to(device)), target[pick].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.cpu().eval(), losses


@torch.no_grad()
def attribute_accuracy(model: ToyVideoFeatures, count: int = 256) -> dict[str, float]:
    """Share right of each head on ``count`` unseen scenes (seeds from 2,000,000)."""
    videos, target = toy_batch(range(2_000_000, 2_000_000 + count), 17)
    logits = model.logits(videos)
    present = ((logits[..., 0] > 0).long() == target[..., 0]).float().mean().item()
    out = {"present": present}
    for k, name in enumerate(("shape", "size", "direction"), start=1):
        mask = target[..., k] >= 0
        guess = logits[..., HEAD_EDGES[k - 1] : HEAD_EDGES[k]].argmax(-1)
        out[name] = (guess[mask] == target[..., k][mask]).float().mean().item()
    return out


def load_video_features(path: str | Path | None = None) -> ToyVideoFeatures:
    """The shipped feature network (``assets/video_features_mini.safetensors``) or ``path``."""
    model = ToyVideoFeatures()
    model.load_state_dict(unpack_int8(load_weights(Path(path) if path else ASSETS / WEIGHTS_NAME)))
    return model.eval().requires_grad_(False)


def pack_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as int8 with one float32 scale per output channel (``name.scale``), biases as
    float32: a quarter of the float32 file (the shipped files stay under their size budget);
    the features move by well under 1% of their scale."""
    packed = {}
    for name, value in state.items():
        if value.ndim < 2:
            packed[name] = value.float()
            continue
        scale = value.flatten(1).abs().amax(1).clamp_min(1e-12) / 127
        shape = (-1,) + (1,) * (value.ndim - 1)
        packed[name] = (value / scale.view(shape)).round().clamp(-127, 127).to(torch.int8)
        packed[f"{name}.scale"] = scale.float()
    return packed


def unpack_int8(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict of :func:`pack_int8`'s output."""
    state = {}
    for name, value in packed.items():
        if name.endswith(".scale"):
            continue
        if value.dtype == torch.int8:
            scale = packed[f"{name}.scale"].view((-1,) + (1,) * (value.ndim - 1))
            state[name] = value.float() * scale
        else:
            state[name] = value.float()
    return state


@torch.no_grad()
def video_features(model: ToyVideoFeatures, videos, batch: int = 32) -> torch.Tensor:
    """Features ``[N, dim]`` (float64) of ``videos`` (``[N, 3, T, H, W]`` or a list of
    ``[3, T, H, W]``), in batches."""
    videos = list(videos)
    device = next(model.parameters()).device
    parts = [
        model(torch.stack(videos[i : i + batch]).to(device).float()).double().cpu()
        for i in range(0, len(videos), batch)
    ]
    return torch.cat(parts)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a [N, D]`` and ``b [M, D]``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` (0 for equal sets)."""
    _check_feature_sets(a, b)
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))
    root_a = _psd_sqrt(cov_a)
    cross = _psd_sqrt(root_a @ cov_b @ root_a)
    return (mu @ mu + torch.trace(cov_a + cov_b - 2 * cross)).clamp_min(0).item()


def kernel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kernel distance (KID, Bińkowski et al. 2018) between feature sets ``a [N, D]`` and the
    reference ``b [M, D]``: the unbiased squared MMD with the kernel ``(x·y / D + 1)^3``, on
    features standardised by ``b``'s mean and spread. Unlike the Fréchet distance, whose
    estimate from N clips is biased upward by about ``1/N``, it is ~0 for two sets of one
    distribution at any size, so small sets of generated clips can be compared."""
    _check_feature_sets(a, b)
    mean, std = b.double().mean(0), b.double().std(0).clamp_min(1e-12)
    a, b = (a.double() - mean) / std, (b.double() - mean) / std
    d = a.shape[1]

    def kernel(x, y):
        return (x @ y.T / d + 1) ** 3

    m, n = len(a), len(b)
    kaa, kbb = kernel(a, a), kernel(b, b)
    within_a = (kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1))
    within_b = (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
    return (within_a + within_b - 2 * kernel(a, b).mean()).item()


def _check_feature_sets(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"expected two feature sets [N, D] and [M, D] of 2+ rows, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the toy world's video feature network.")
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--pool", type=int, default=1536, help="clips rendered once")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, losses = train_features(args.steps, pool=args.pool, device=args.device)
    if not math.isfinite(losses[-1]):
        raise SystemExit("error: the loss is not finite; nothing written")
    accuracy = attribute_accuracy(model)
    meta = {
        "steps": str(args.steps),
        "pool": str(args.pool),
        "final_loss": f"{sum(losses[-50:]) / 50:.4f}",
        "accuracy": str({k: round(v, 3) for k, v in accuracy.items()}),
    }
    path = save_weights(pack_int8(model.state_dict()), args.out / WEIGHTS_NAME, metadata=meta)
    print(f"{path}: {meta} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
