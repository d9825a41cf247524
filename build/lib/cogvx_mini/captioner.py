"""A mini video captioner: video -> dense caption in the toy world's grammar.

CogVideoX re-captions its clips densely with a fine-tuned video captioner (CogVLM2-Caption)
because web captions are short and lossy [@yang2024cogvideox]. This is that role in miniature:
a small model trained on a labelled subset (clips with their dense captions) that writes
"a small red circle moves left while ...".

The toy world gives every object its own colour, so the captioner asks six questions, one per
colour, with one shared network: is an object of this colour there, and if so which shape, size
and direction? Its input per colour is a soft colour mask ``m_c = exp(-||x - c||^2 / (2 s^2))``
(``s = 0.12``) of the video resampled to ``9 x 32 x 32``; the network reads the mask's area and
centroid in every frame (for presence, size, direction) and a small CNN over the middle frame's
mask (for shape).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cogvx_mini.data.toyworld import COLOURS, DIRECTIONS, SHAPES, SIZES, parse_caption

CAPTION_FRAMES = 9
MASK_SIZE = 32
_COLOURS = torch.tensor(list(COLOURS.values()))  # [6, 3]
_SIZES, _DIRECTIONS = tuple(SIZES), tuple(DIRECTIONS)
HEADS = {"present": 2, "shape": len(SHAPES), "size": len(_SIZES), "direction": len(_DIRECTIONS)}
ATTRIBUTES = ("count", "colour", "shape", "size", "direction")


def colour_masks(videos: torch.Tensor) -> torch.Tensor:
    """Soft colour masks ``[B, 6, 9, 32, 32]`` of videos ``[B, 3, T, H, W]`` in [-1, 1]."""
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"expected videos [B, 3, T, H, W], got {tuple(videos.shape)}")
    frames = torch.linspace(0, videos.shape[2] - 1, CAPTION_FRAMES).round().long()
    x = (videos[:, :, frames].float().clamp(-1, 1) + 1) / 2
    x = F.adaptive_avg_pool3d(x, (CAPTION_FRAMES, MASK_SIZE, MASK_SIZE))
    dist2 = ((x[:, None] - _COLOURS.view(1, 6, 3, 1, 1, 1)) ** 2).sum(2)
    return torch.exp(-dist2 / (2 * 0.12**2))


def _tracks(masks: torch.Tensor) -> torch.Tensor:
    """Per colour and frame: area share and centroid ``(y, x)`` in [0, 1]: ``[B, 6, 3 * 9]``."""
    grid = (torch.arange(MASK_SIZE, dtype=torch.float32) + 0.5) / MASK_SIZE
    mass = masks.sum(dim=(-2, -1))
    # One pixel's worth of mass at the centre keeps an absent colour's centroid defined.
    cy = ((masks * grid[:, None]).sum(dim=(-2, -1)) + 0.5) / (mass + 1)
    cx = ((masks * grid).sum(dim=(-2, -1)) + 0.5) / (mass + 1)
    area = mass / MASK_SIZE**2 * 10
    return torch.cat([area, cy - cy.mean(-1, keepdim=True), cx - cx.mean(-1, keepdim=True)], -1)


class MiniCaptioner(nn.Module):
    """Colour masks ``[B, 6, 9, 32, 32]`` -> logits ``[B, 6, 11]`` (present 2, shape 3, size 2,
    direction 4, in :data:`HEADS` order), one shared network for every colour."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.shape_cnn = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.GELU(), nn.AdaptiveMaxPool2d(1),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Linear(16 + 3 * CAPTION_FRAMES, hidden),
            nn.GELU(),
            nn.Linear(hidden, sum(HEADS.values())),
        )

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        b = masks.shape[0]
        middle = rearrange(masks[:, :, CAPTION_FRAMES // 2], "b k h w -> (b k) 1 h w")
        shape = rearrange(self.shape_cnn(middle), "(b k) f 1 1 -> b k f", b=b)
        return self.head(torch.cat([shape, _tracks(masks)], -1))


def caption_targets(captions: Sequence[str]) -> torch.Tensor:
    """Per clip and colour the class of each head, ``[N, 6, 4]`` (-100 where absent)."""
    out = torch.full((len(captions), len(COLOURS), 4), -100, dtype=torch.long)
    out[:, :, 0] = 0
    names = list(COLOURS)
    for i, caption in enumerate(captions):
        for size, colour, shape, direction in parse_caption(caption):
            k = names.index(colour)
            out[i, k] = torch.tensor(
                [1, SHAPES.index(shape), _SIZES.index(size), _DIRECTIONS.index(direction)]
            )
    return out


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    parts = logits.split(list(HEADS.values()), dim=-1)
    return sum(
        F.cross_entropy(p.flatten(0, 1), targets[..., j].flatten(), ignore_index=-100)
        for j, p in enumerate(parts)
    )


def train_captioner(
    videos: torch.Tensor,
    captions: Sequence[str],
    steps: int = 300,
    seed: int = 0,
    batch: int = 32,
) -> MiniCaptioner:
    """Fit a :class:`MiniCaptioner` to labelled clips ``[N, 3, T, H, W]`` and their dense
    captions (AdamW on seeded mini-batches of ``batch`` clips; the masks are computed once)."""
    if len(videos) != len(captions):
        raise ValueError(f"expected one caption per video, got {len(captions)} for {len(videos)}")
    masks, targets = colour_masks(videos), caption_targets(captions)
    torch.manual_seed(seed)
    model = MiniCaptioner()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(masks), generator=gen)[:batch]
        loss = _loss(model(masks[idx]), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def write_captions(model: MiniCaptioner, videos: torch.Tensor, batch: int = 64) -> list[str]:
    """Dense captions of videos ``[N, 3, T, H, W]``: one phrase per colour judged present (the
    most likely colour when none is), in the palette's order."""
    out = []
    for chunk in videos.split(batch):
        logits = model.eval()(colour_masks(chunk))
        present, shape, size, direction = (
            p.argmax(-1) for p in logits.split(list(HEADS.values()), -1)
        )
        for i in range(len(chunk)):
            keep = torch.nonzero(present[i]).flatten().tolist()
            if not keep:
                keep = [int(logits[i, :, 1].sub(logits[i, :, 0]).argmax())]
            phrases = [
                f"a {_SIZES[size[i, k]]} {list(COLOURS)[k]} {SHAPES[shape[i, k]]} moves "
                f"{_DIRECTIONS[direction[i, k]]}"
                for k in keep
            ]
            out.append(" while ".join(phrases))
    return out


def attribute_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> dict[str, float]:
    """Per attribute, the share right: ``count`` per clip (as many objects named as there are);
    ``colour`` per true object (its colour named); ``shape``, ``size``, ``direction`` per true
    object (its colour named with that attribute right). Captions that do not parse name
    nothing."""
    if len(predicted) != len(truth):
        raise ValueError(f"expected as many predictions as truths, got {len(predicted)}, "
                         f"{len(truth)}")  # fmt: skip
    hits = Counter()
    clips = objects = 0
    for pred, true in zip(predicted, truth, strict=True):
        try:
            named = {c: (z, s, d) for z, c, s, d in parse_caption(pred)}
        except ValueError:
            named = {}
        objs = parse_caption(true)
        clips, objects = clips + 1, objects + len(objs)
        hits["count"] += len(named) == len(objs)
        for size, colour, shape, direction in objs:
            if colour in named:
                z, s, d = named[colour]
                hits.update(colour=1, size=z == size, shape=s == shape, direction=d == direction)
    return {a: hits[a] / max(clips if a == "count" else objects, 1) for a in ATTRIBUTES}


def majority_caption(captions: Sequence[str]) -> str:
    """The trivial captioner: one object with the most common value of every attribute."""
    objs = [o for c in captions for o in parse_caption(c)]
    size, colour, shape, direction = (Counter(o[j] for o in objs).most_common(1)[0][0]
                                      for j in range(4))  # fmt: skip
    return f"a {size} {colour} {shape} moves {direction}"
