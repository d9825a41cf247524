"""A procedural, captioned video world: the project's embedded data set.

Each scene holds 1-3 objects (shape, colour, size) that move in a straight line over a dark
background. A scene renders at any resolution and any frame count, and its caption is written from
its parameters ("a small red circle moves left while a large blue square moves up"). Everything is
deterministic by seed, so the same data set exists on every machine without a download.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.25),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (0.95, 0.9, 0.15),
    "purple": (0.7, 0.25, 0.9),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.11, "large": 0.19}  # half-extent as a fraction of the shorter frame side
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dy, dx) in image coordinates, y grows downward
    "left": (0.0, -1.0),
    "right": (0.0, 1.0),
    "up": (-1.0, 0.0),
    "down": (1.0, 0.0),
}
BACKGROUND = (0.08, 0.08, 0.1)
TRAVEL = 0.45  # distance covered over the whole clip, as a fraction of the frame


@dataclass(frozen=True)
class ToyObject:
    """One moving object; ``start`` is its centre ``(y, x)`` at frame 0 in [0, 1] coordinates."""

    shape: str
    colour: str
    size: str
    direction: str
    start: tuple[float, float]

    def centre(self, progress: float) -> tuple[float, float]:
        """Centre ``(y, x)`` in [0, 1] coordinates at ``progress`` in [0, 1] of the clip."""
        dy, dx = DIRECTIONS[self.direction]
        return self.start[0] + TRAVEL * progress * dy, self.start[1] + TRAVEL * progress * dx

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} moves {self.direction}"


@dataclass(frozen=True)
class ToyScene:
    """A scene: objects with distinct colours, so each can be found again by its colour."""

    objects: tuple[ToyObject, ...]

    @property
    def caption(self) -> str:
        return " while ".join(o.phrase() for o in self.objects)


def sample_scene(seed: int, max_objects: int = 3) -> ToyScene:
    """Draw a scene deterministically from ``seed`` with 1..``max_objects`` objects."""
    rng = random.Random(seed)
    n = rng.randint(1, max_objects)
    colours = rng.sample(sorted(COLOURS), n)
    objects = []
    for colour in colours:
        direction = rng.choice(sorted(DIRECTIONS))
        size = rng.choice(sorted(SIZES))
        dy, dx = DIRECTIONS[direction]
        lo = SIZES[size] + 0.02
        # Pick the start so that the whole path stays inside the frame.
        y = rng.uniform(lo - min(dy, 0) * TRAVEL, 1 - lo - max(dy, 0) * TRAVEL)
        x = rng.uniform(lo - min(dx, 0) * TRAVEL, 1 - lo - max(dx, 0) * TRAVEL)
        objects.append(ToyObject(rng.choice(SHAPES), colour, size, direction, (y, x)))
    return ToyScene(tuple(objects))


def _coverage(
    obj: ToyObject, cy: float, cx: float, yy: torch.Tensor, xx: torch.Tensor, px: float
) -> torch.Tensor:
    """Soft (anti-aliased) coverage in [0, 1] of ``obj`` centred at (cy, cx); px = pixel size."""
    r = SIZES[obj.size]
    dy, dx = yy - cy, xx - cx
    if obj.shape == "circle":
        dist = torch.sqrt(dy**2 + dx**2) - r
    elif obj.shape == "square":
        dist = torch.maximum(dy.abs(), dx.abs()) - r * 0.9
    else:  # upward-pointing triangle: intersection of three half-planes
        dist = torch.maximum(dy - r * 0.8, (2 * dx.abs() - dy) / 5**0.5 - r * 0.55)
    return torch.clamp(0.5 - dist / px, 0.0, 1.0)


def render(scene: ToyScene, frames: int, height: int, width: int) -> torch.Tensor:
    """Render ``scene`` to a video tensor ``[3, T, H, W]`` in [-1, 1] (float32).

    Coordinates are fractions of the shorter side, so a scene looks the same at any resolution,
    and motion is a fraction of the clip, so it looks the same at any frame count.
    """
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(
            f"expected positive frames, height, width, got {frames}, {height}, {width}"
        )
    side = min(height, width)
    # Pixel centres in units of the shorter side, with the frame centred on (0.5, 0.5).
    yy = ((torch.arange(height) + 0.5) - height / 2) / side + 0.5
    xx = ((torch.arange(width) + 0.5) - width / 2) / side + 0.5
    yy, xx = torch.meshgrid(yy, xx, indexing="ij")
    video = torch.empty(3, frames, height, width)
    video[:] = torch.tensor(BACKGROUND).view(3, 1, 1, 1)
    for t in range(frames):
        progress = t / max(frames - 1, 1)
        for obj in scene.objects:
            cy, cx = obj.centre(progress)
            alpha = _coverage(obj, cy, cx, yy, xx, 1.0 / side)
            colour = torch.tensor(COLOURS[obj.colour]).view(3, 1, 1)
            video[:, t] = video[:, t] * (1 - alpha) + colour * alpha
    return video * 2 - 1


def sample_video(seed: int, frames: int = 17, height: int = 64, width: int = 64):
    """Scene drawn from ``seed`` and rendered: ``(video [3, T, H, W] in [-1, 1], caption)``."""
    scene = sample_scene(seed)
    return render(scene, frames, height, width), scene.caption
