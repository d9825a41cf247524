"""A raw "web" pool of the toy world: defective clips and short, lossy captions.

CogVideoX trains on 35M web clips filtered for six negative classes [@yang2024cogvideox]. This
module makes that pool in miniature: a stated share of clips carries one defect of each class,
in toy form, and every caption is short alt-text ("a red thing moving") rather than the dense
ground truth. The truth (defect class, dense caption) is kept on each clip for measurement only.

=====================  ==========================================================
paper's class          toy defect
=====================  ==========================================================
editing                a hard cut mid-clip to another scene
motion connectivity    frames shuffled: objects jump instead of moving
low quality            blur, noise or blocky compression
lecture type           a nearly static scene (a held frame)
text dominated         static rows of white glyphs over the scene
noisy screenshots      a grey UI window (title bar, list rows) around a small viewport
=====================  ==========================================================

Everything is deterministic by seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from cogvx_mini.data.toyworld import ToyScene, render, sample_scene

DEFECTS = ("editing", "motion_jump", "low_quality", "lecture", "text_dominated", "screenshot")
CLASSES = ("clean", *DEFECTS)
PAPER_NAMES = {
    "editing": "editing",
    "motion_jump": "lack of motion connectivity",
    "low_quality": "low quality",
    "lecture": "lecture type",
    "text_dominated": "text dominated",
    "screenshot": "noisy screenshots",
}
GLYPH = 0.95  # glyph brightness in [0, 1] (the palette's white)


@dataclass(frozen=True)
class WebClip:
    """One clip of the raw pool: ``video`` ``[3, T, H, W]`` in [-1, 1] and its ``web_caption``.

    ``defect`` (one of :data:`CLASSES`) and ``caption`` (the dense ground truth) are for
    measurement only: a curation pipeline sees the video and the web caption.
    """

    video: torch.Tensor
    web_caption: str
    defect: str
    caption: str
    seed: int


def web_caption(scene: ToyScene, rng: random.Random) -> str:
    """Short, lossy alt-text for ``scene``: one attribute or two of one object, or a count."""
    first = scene.objects[0]
    n = len(scene.objects)
    templates = (
        f"a {first.colour} thing moving",
        f"a {first.shape}",
        f"{first.colour} {first.shape}",
        f"something moves {first.direction}",
        f"{n} shapes" if n > 1 else "a shape",
        "video of shapes",
    )
    return rng.choice(templates)


def _scale(side: int, px: float) -> int:
    """``px`` pixels of a 64-pixel frame at ``side`` pixels (at least 1)."""
    return max(1, round(px * side / 64))


def _editing(scene, frames, height, width, split, rng) -> torch.Tensor:
    video = render(scene, frames, height, width)
    other = sample_scene(rng.randrange(2**31), split=split)
    cut = rng.randint(frames // 3, max(frames // 3, 2 * frames // 3))
    video[:, cut:] = render(other, frames, height, width)[:, cut:]
    return video


def _typical_step(order: list[int]) -> int:
    """The median distance in the clip between consecutive frames of ``order``."""
    return sorted(abs(a - b) for a, b in zip(order, order[1:], strict=False))[(len(order) - 1) // 2]


def _motion_jump(scene, frames, height, width, split, rng) -> torch.Tensor:
    # Shuffled frames, reshuffled until the typical step skips a third of the clip: jumps.
    order = list(range(frames))
    while frames > 2 and _typical_step(order) < frames // 3:
        rng.shuffle(order)
    return render(scene, frames, height, width)[:, order]


def _low_quality(scene, frames, height, width, split, rng) -> torch.Tensor:
    video = render(scene, frames, height, width)
    kind = rng.choice(("blur", "noise", "blocky"))
    side = min(height, width)
    if kind == "noise":
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        return (video + 0.5 * torch.randn(video.shape, generator=g)).clamp(-1, 1)
    frames_first = rearrange(video, "c t h w -> t c h w")
    if kind == "blur":
        radius = _scale(side, 3)
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(x**2) / (2 * (radius / 2) ** 2))
        k = (k / k.sum()).view(1, 1, -1)
        out = F.conv2d(frames_first, (k[..., None] * k[:, :, None]).repeat(3, 1, 1, 1),
                       padding=radius, groups=3)  # fmt: skip
    else:
        block = _scale(side, 8)
        out = F.interpolate(F.avg_pool2d(frames_first, block, ceil_mode=True), scale_factor=block)
        out = out[..., :height, :width]
    return rearrange(out, "t c h w -> c t h w")


def _lecture(scene, frames, height, width, split, rng) -> torch.Tensor:
    # A slide: the first frame held, with a one-pixel nudge halfway (nearly, not exactly, still).
    still = render(scene, 1, height, width).expand(3, frames, height, width).clone()
    still[:, frames // 2 :] = still[:, frames // 2 :].roll(1, dims=-1)
    return still


def _text_dominated(scene, frames, height, width, split, rng) -> torch.Tensor:
    video = render(scene, frames, height, width)
    side = min(height, width)
    glyph_h, glyph_w, gap, line = _scale(side, 4), _scale(side, 2), _scale(side, 2), _scale(side, 9)
    mask = torch.zeros(height, width, dtype=torch.bool)
    top = rng.randint(_scale(side, 4), _scale(side, 12))
    for _ in range(rng.randint(3, 5)):
        x = rng.randint(_scale(side, 2), _scale(side, 8))
        while x + glyph_w < width - _scale(side, 2) and top + glyph_h < height:
            if rng.random() < 0.85:  # spaces between words
                mask[top : top + glyph_h, x : x + glyph_w] = True
            x += glyph_w + gap
        top += line
    video[:, :, mask] = GLYPH * 2 - 1
    return video


def _screenshot(scene, frames, height, width, split, rng) -> torch.Tensor:
    ui = torch.full((3, frames, height, width), 0.78)
    side = min(height, width)
    bar = _scale(side, 7)
    ui[:, :, :bar] = 0.45
    row = _scale(side, 6)
    for i, y in enumerate(range(bar + row, height, row)):
        ui[:, :, y : y + row // 2, : width // 3] = 0.62 if i % 2 else 0.7
    # The scene itself, at half size, in a viewport on the right.
    small = render(scene, frames, height // 2, width // 2)
    y0, x0 = bar + _scale(side, 4), width - width // 2 - _scale(side, 3)
    video = ui * 2 - 1
    video[:, :, y0 : y0 + height // 2, x0 : x0 + width // 2] = small
    return video


_DEFECT_RENDERERS: dict[str, Callable[..., torch.Tensor]] = {
    "editing": _editing,
    "motion_jump": _motion_jump,
    "low_quality": _low_quality,
    "lecture": _lecture,
    "text_dominated": _text_dominated,
    "screenshot": _screenshot,
}


def render_defect(
    scene: ToyScene, defect: str, frames: int, height: int, width: int, seed: int = 0,
    split: str = "train",
) -> torch.Tensor:  # fmt: skip
    """``scene`` rendered ``[3, T, H, W]`` in [-1, 1] with ``defect`` (``"clean"``: none)."""
    if defect not in CLASSES:
        raise ValueError(f"expected defect in {CLASSES}, got {defect!r}")
    if defect == "clean":
        return render(scene, frames, height, width)
    return _DEFECT_RENDERERS[defect](scene, frames, height, width, split, random.Random(seed))


def web_clip(
    seed: int,
    frames: int = 9,
    height: int = 64,
    width: int = 64,
    defect_share: float = 0.07,
    split: str = "train",
) -> WebClip:
    """The raw pool's clip number ``seed``: with probability ``defect_share`` per class it
    carries that class's defect (so ``6 * defect_share`` of the pool is defective)."""
    if not 0.0 <= defect_share <= 1.0 / len(DEFECTS):
        raise ValueError(
            f"expected defect_share in [0, 1/{len(DEFECTS)}] (a share per class), "
            f"got {defect_share}"
        )
    rng = random.Random(seed * 6151 + 17)
    draw = rng.random()
    index = int(draw // defect_share) if defect_share > 0 else len(DEFECTS)
    defect = DEFECTS[index] if index < len(DEFECTS) else "clean"
    scene = sample_scene(seed, split=split)
    video = render_defect(scene, defect, frames, height, width, rng.randrange(2**31), split)
    return WebClip(video, web_caption(scene, rng), defect, scene.caption, seed)


def web_pool(
    count: int,
    frames: int = 9,
    height: int = 64,
    width: int = 64,
    defect_share: float = 0.07,
    first_seed: int = 0,
    split: str = "train",
) -> list[WebClip]:
    """``count`` clips of the raw pool (seeds ``first_seed`` ..), see :func:`web_clip`."""
    if count < 0:
        raise ValueError(f"expected a non-negative count, got {count}")
    return [
        web_clip(seed, frames, height, width, defect_share, split)
        for seed in range(first_seed, first_seed + count)
    ]
