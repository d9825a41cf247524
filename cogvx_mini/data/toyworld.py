"""A procedural, captioned video world: the project's embedded data set.

Each scene holds 1-3 objects (shape, colour, size) that move in a straight line over a dark
background. A scene renders at any resolution and any frame count, and its caption is written from
its parameters ("a small red circle moves left while a large blue square moves up"). Everything is
deterministic by seed, so the same data set exists on every machine without a download.

Some colour-direction pairs (``HELD_OUT``) never occur in the training split, so a model that
generates "a red circle moves left" from the words alone composes a colour and a motion it has
only seen separately. ``NEW_SHAPES`` are outside the world: no default scene holds one, and a
scene draws one only when asked (``sample_scene(seed, new_shape="diamond")``), to teach a trained
model a concept it has never seen. ``judge(video, caption)`` reads the objects back from the
pixels (colour, area, fill of the bounding box, centroid track) and scores how well a video
follows its caption: the mini model's text-alignment metric. ``write_dataset`` writes the world
out as real video files plus a captions JSONL, and ``VideoFolder`` reads such a folder, or a
user's, back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cogvx_mini.checks import integer, path_inside, positive_int, read_jsonl

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.25),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (0.95, 0.9, 0.15),
    "purple": (0.7, 0.25, 0.9),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("circle", "square", "triangle")
# Shapes outside the world (chapter 9's LoRA fine-tune teaches one): no default scene draws them,
# and the judges consider one only for a caption that names it, so every score of the world's own
# captions stays what it was. Not a colour: the mini VAE paints any other colour in the nearest
# one of its palette (cyan comes back blue), but it draws new shapes.
NEW_SHAPES = ("diamond",)
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


# Colour-direction pairs that never appear in the training split (compositional generalisation).
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("red", "left"), ("green", "up"), ("blue", "right"), ("yellow", "down")}
)
SPLITS = ("all", "train", "held_out")


def _kept_names(name: str, chosen: Sequence[str] | None, known) -> list[str]:
    """``chosen`` (``None``: every name in ``known``), sorted, after checking that it names only
    known entries, each once, and at least one."""
    if chosen is None:
        return sorted(known)
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"{name}: expected distinct names among {sorted(known)}, got {chosen!r}")
    return sorted(chosen)


def sample_scene(
    seed: int,
    max_objects: int = 3,
    split: str = "all",
    new_shape: str | None = None,
    colours: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
) -> ToyScene:
    """Draw a scene deterministically from ``seed`` with 1..``max_objects`` objects.

    ``split="all"`` draws freely; ``"train"`` never pairs a colour with a direction of
    ``HELD_OUT`` (such a direction is redrawn among the others); ``"held_out"`` makes the first
    object one of the ``HELD_OUT`` pairs. ``new_shape`` (one of ``NEW_SHAPES``) gives the first
    object of that same scene this shape; nothing else changes. ``colours`` and ``sizes`` (names
    of ``COLOURS`` and ``SIZES``; ``None``: all) are the ones objects are drawn from, for a
    smaller world; with both ``None`` every seed draws the scene it always drew.
    """
    if split not in SPLITS:
        raise ValueError(f"expected split in {SPLITS}, got {split!r}")
    if new_shape is not None and new_shape not in NEW_SHAPES:
        raise ValueError(f"new_shape: expected one of {list(NEW_SHAPES)}, got {new_shape!r}")
    palette = _kept_names("colours", colours, COLOURS)
    size_names = _kept_names("sizes", sizes, SIZES)
    held_out = sorted(pair for pair in HELD_OUT if pair[0] in palette)
    if split == "held_out" and not held_out:
        raise ValueError(f"colours: none of {palette} has a held-out pair, so no held_out split")
    integer("seed", seed)
    integer("max_objects", max_objects, 1, len(palette))
    rng = random.Random(seed)
    n = rng.randint(1, max_objects)
    if split == "held_out":
        first_colour, first_direction = rng.choice(held_out)
        others = rng.sample(sorted(set(palette) - {first_colour}), n - 1)
        drawn = [first_colour, *others]
    else:
        drawn = rng.sample(palette, n)
    objects = []
    for i, colour in enumerate(drawn):
        direction = rng.choice(sorted(DIRECTIONS))
        if split == "held_out" and i == 0:
            direction = first_direction
        elif split == "train" and (colour, direction) in HELD_OUT:
            direction = rng.choice(sorted(d for d in DIRECTIONS if (colour, d) not in HELD_OUT))
        size = rng.choice(size_names)
        dy, dx = DIRECTIONS[direction]
        lo = SIZES[size] + 0.02
        # Pick the start so that the whole path stays inside the frame.
        y = rng.uniform(lo - min(dy, 0) * TRAVEL, 1 - lo - max(dy, 0) * TRAVEL)
        x = rng.uniform(lo - min(dx, 0) * TRAVEL, 1 - lo - max(dx, 0) * TRAVEL)
        objects.append(ToyObject(rng.choice(SHAPES), colour, size, direction, (y, x)))
    if new_shape is not None:  # after every draw: the default scene, one object reshaped
        objects[0] = dataclasses.replace(objects[0], shape=new_shape)
    return ToyScene(tuple(objects))


def _coverage(
    obj: ToyObject,
    cy: torch.Tensor,
    cx: torch.Tensor,
    yy: torch.Tensor,
    xx: torch.Tensor,
    px: float,
) -> torch.Tensor:
    """Soft (anti-aliased) coverage in [0, 1] of ``obj`` centred at (cy, cx); px = pixel size.

    ``cy``, ``cx`` are ``[T, 1, 1]`` and ``yy``, ``xx`` ``[H, W]``: coverage is ``[T, H, W]``.
    """
    r = SIZES[obj.size]
    dy, dx = yy - cy, xx - cx
    if obj.shape == "circle":
        dist = torch.sqrt(dy**2 + dx**2) - r
    elif obj.shape == "square":
        dist = torch.maximum(dy.abs(), dx.abs()) - r * 0.9
    elif obj.shape == "diamond":  # a square on its corner; the corners stay inside the margin
        dist = (dy.abs() + dx.abs() - r * 1.1) / 2**0.5
    else:  # upward-pointing triangle: intersection of three half-planes
        dist = torch.maximum(dy - r * 0.8, (2 * dx.abs() - dy) / 5**0.5 - r * 0.55)
    return torch.clamp(0.5 - dist / px, 0.0, 1.0)


def render(scene: ToyScene, frames: int, height: int, width: int) -> torch.Tensor:
    """Render ``scene`` to a video tensor ``[3, T, H, W]`` in [-1, 1] (float32).

    Coordinates are fractions of the shorter side, so a scene looks the same at any resolution,
    and motion is a fraction of the clip, so it looks the same at any frame count.
    """
    for name, value in (("frames", frames), ("height", height), ("width", width)):
        positive_int(name, value)
    side = min(height, width)
    # Pixel centres in units of the shorter side, with the frame centred on (0.5, 0.5).
    yy = ((torch.arange(height) + 0.5) - height / 2) / side + 0.5
    xx = ((torch.arange(width) + 0.5) - width / 2) / side + 0.5
    yy, xx = torch.meshgrid(yy, xx, indexing="ij")
    video = torch.empty(3, frames, height, width)
    video[:] = torch.tensor(BACKGROUND).view(3, 1, 1, 1)
    progress = torch.arange(frames, dtype=torch.float64) / max(frames - 1, 1)
    for obj in scene.objects:
        dy, dx = DIRECTIONS[obj.direction]
        # Centres of all frames at once, [T, 1, 1], so coverage is [T, H, W] in one pass.
        cy = (obj.start[0] + TRAVEL * progress * dy).float().view(-1, 1, 1)
        cx = (obj.start[1] + TRAVEL * progress * dx).float().view(-1, 1, 1)
        alpha = _coverage(obj, cy, cx, yy, xx, 1.0 / side)
        colour = torch.tensor(COLOURS[obj.colour]).view(3, 1, 1, 1)
        video = video * (1 - alpha) + colour * alpha
    return video * 2 - 1


def sample_video(
    seed: int, frames: int = 17, height: int = 64, width: int = 64, split: str = "all"
):
    """Scene drawn from ``seed`` and rendered: ``(video [3, T, H, W] in [-1, 1], caption)``."""
    scene = sample_scene(seed, split=split)
    return render(scene, frames, height, width), scene.caption


# ---------------------------------------------------------------------------------------------
# Captions back to objects, and the judge
# ---------------------------------------------------------------------------------------------
_PHRASE = re.compile(
    rf"(?:an?\s+)?({'|'.join(SIZES)})\s+({'|'.join(COLOURS)})\s+({'|'.join(SHAPES + NEW_SHAPES)})"
    rf"\s+moves\s+({'|'.join(DIRECTIONS)})"
)


def parse_caption(caption: str) -> list[tuple[str, str, str, str]]:
    """``(size, colour, shape, direction)`` of each object a caption names, in order.

    Raises ``ValueError`` for a caption outside the toy world's grammar.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a string, got {type(caption).__name__}")
    found = _PHRASE.findall(caption.lower())
    if not found:
        raise ValueError(
            "expected a caption like 'a small red circle moves left while a large blue square "
            f"moves up', got {caption!r}"
        )
    return [tuple(f) for f in found]


_NAMES = ("background", *COLOURS)
_PALETTE = torch.tensor([BACKGROUND, *COLOURS.values()])  # [7, 3] in [0, 1]


def _palette_labels(video: torch.Tensor) -> torch.Tensor:
    """Label each pixel of ``[3, T, H, W]`` (in [-1, 1]) with its palette index, or -1.

    A pixel takes the nearest palette colour only if it is closer to it than half the distance
    from that colour to any other, so blended edges and washed-out pixels stay unlabelled.
    """
    rgb = (video.float().clamp(-1, 1) + 1) / 2
    dist = torch.cdist(rgb.flatten(1).T, _PALETTE)  # [T*H*W, 7]
    best, idx = dist.min(1)
    between = torch.cdist(_PALETTE, _PALETTE) + torch.eye(len(_PALETTE)) * 9
    idx = torch.where(best < between.min(1).values[idx] / 2, idx, -1)
    return idx.view(video.shape[1:])


def palette_colour_errors(videos: torch.Tensor, references: torch.Tensor) -> dict[str, float]:
    """Mean colour error per palette colour of ``videos`` against ``references`` (both
    ``[B, 3, T, H, W]`` in [-1, 1]), in 8-bit levels: the RGB distance, averaged over the pixels
    that are that colour in the reference (edges excluded, see :func:`_palette_labels`).

    A reconstruction that keeps a white object white scores near 0 for ``"white"``; one that
    turns it yellow-green scores tens of levels. Colours absent from the references are left out.
    """
    if videos.shape != references.shape or videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(
            "expected videos and references of one shape [B, 3, T, H, W], got "
            f"{tuple(videos.shape)} and {tuple(references.shape)}"
        )
    sums = torch.zeros(len(_NAMES), dtype=torch.float64)
    counts = torch.zeros(len(_NAMES), dtype=torch.float64)
    for video, reference in zip(videos, references, strict=True):
        labels = _palette_labels(reference).flatten()
        dist = (video.float() - reference.float()).mul(127.5).norm(dim=0).flatten()
        keep = labels >= 0
        sums.index_add_(0, labels[keep], dist[keep].double())
        counts.index_add_(0, labels[keep], torch.ones_like(dist[keep], dtype=torch.float64))
    return {n: float(sums[i] / counts[i]) for i, n in enumerate(_NAMES) if counts[i] > 0}


def shape_choices(shapes) -> tuple[str, ...]:
    """The shapes the judges tell apart for a caption naming ``shapes``: the world's, then the
    ``NEW_SHAPES`` among ``shapes`` (none for the world's own captions)."""
    named = set(shapes)
    return SHAPES + tuple(s for s in NEW_SHAPES if s in named)


def _corner_fill(box: torch.Tensor) -> float:
    """The share of ``box`` ``[h, w]`` (an object's mask cut to its bounding box) covered outside
    the diamond inscribed in it: ~0 for a diamond, ~0.57 for a circle, 1 for a square."""
    v = (torch.arange(box.shape[0]) + 0.5) / box.shape[0] * 2 - 1
    u = (torch.arange(box.shape[1]) + 0.5) / box.shape[1] * 2 - 1
    return float(box[v.abs()[:, None] + u.abs()[None] > 1].mean())


def _shape_of(mask: torch.Tensor, choices: tuple[str, ...] = SHAPES) -> str:
    """Classify one object's 2D mask ``[H, W]`` as one of ``choices`` (:func:`shape_choices`).

    A triangle has far less mass in the upper half of its bounding box than in the lower half;
    a square fills its box, a circle ~pi/4 of it; a diamond (only among ``choices`` when a
    caption names one) leaves the box's corners empty. Rows and columns with < 2 pixels are
    ignored when finding the box, so stray pixels do not stretch it.
    """
    rows = torch.nonzero(mask.sum(1) >= 2).flatten()
    cols = torch.nonzero(mask.sum(0) >= 2).flatten()
    if len(rows) < 2 or len(cols) < 2:
        return "none"
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float()
    half = box.shape[0] // 2
    upper, lower = box[:half].sum(), box[box.shape[0] - half :].sum()
    if upper < 0.6 * lower:
        return "triangle"
    if "diamond" in choices and _corner_fill(box) < 0.4:  # circles leave >= 0.45 of it
        return "diamond"
    return "square" if box.mean() > 0.88 else "circle"


_AREA: dict[tuple[str, str, str, int, int], float] = {}


def _reference_area(shape: str, size: str, colour: str, height: int, width: int) -> float:
    """Pixels the judge finds for one object alone at the frame centre."""
    key = (shape, size, colour, height, width)
    if key not in _AREA:
        obj = ToyObject(shape, colour, size, "right", (0.5, 0.5 - TRAVEL / 2))
        frame = render(ToyScene((obj,)), 3, height, width)[:, 1:2]
        _AREA[key] = float((_palette_labels(frame)[0] == _NAMES.index(colour)).sum())
    return _AREA[key]


@dataclass
class ObjectVerdict:
    """What the judge found for one captioned object (all False when it is absent)."""

    size: str
    colour: str
    shape: str
    direction: str
    present: bool = False
    size_ok: bool = False
    shape_ok: bool = False
    direction_ok: bool = False
    track: list[tuple[float, float]] = field(default_factory=list)

    @property
    def score(self) -> float:
        return (self.present + self.size_ok + self.shape_ok + self.direction_ok) / 4


@dataclass
class Verdict:
    """The judge's reading of one video: per-object verdicts, extra colours, and the score."""

    objects: list[ObjectVerdict]
    extra_colours: list[str]

    @property
    def score(self) -> float:
        """Sum of object scores over (captioned objects + uncaptioned colours present)."""
        return sum(o.score for o in self.objects) / (len(self.objects) + len(self.extra_colours))


def _present_frames(labels: torch.Tensor, index: int, min_area: float) -> torch.Tensor:
    return (labels == index).flatten(1).sum(1) >= min_area


def _one_video(video: torch.Tensor) -> torch.Tensor:
    """``video`` as ``[3, T, H, W]`` (a batch of one is unwrapped), or a clear error."""
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video: expected a tensor [3, T, H, W], got {type(video).__name__}")
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, T, H, W], got {tuple(video.shape)}")
    return video


def _moves_along(times: list[float], track: list, direction: str, side: int) -> bool:
    """Whether the least-squares motion of ``track`` (``(y, x)`` pixels at clip ``times``) goes
    along ``direction`` over at least 40% of the expected travel, and mostly along it."""
    tt = torch.tensor(times)
    points = torch.tensor(track)  # [n, 2] (y, x) in pixels
    tc = tt - tt.mean()
    slope = (tc[:, None] * (points - points.mean(0))).sum(0) / tc.pow(2).sum().clamp(min=1e-9)
    ey, ex = DIRECTIONS[direction]
    along = float(slope[0] * ey + slope[1] * ex)
    across = float(abs(slope[0] * ex - slope[1] * ey))
    return along >= 0.4 * TRAVEL * side and across <= 0.5 * along


def judge_details(video: torch.Tensor, caption: str) -> Verdict:
    """Read the captioned objects back from ``video`` ``[3, T, H, W]`` (or ``[1, 3, T, H, W]``).

    For each object: **colour** present (enough pixels of it in at least half the frames);
    **size** (upper-quartile area over frames nearer the captioned size's reference area than
    the other size's); **shape** (majority vote of a per-frame classification, see
    :func:`_shape_of`); **direction** (least-squares centroid motion along the captioned
    direction over at least 40% of the expected travel, and mostly along it).
    """
    video = _one_video(video)
    _, frames, height, width = video.shape
    side = min(height, width)
    labels = _palette_labels(video)
    min_area = min_object_area(height, width)
    objects = parse_caption(caption)
    choices = shape_choices(shape for _, _, shape, _ in objects)  # + a new shape it names
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    verdicts = []
    for size, colour, shape, direction in objects:
        v = ObjectVerdict(size, colour, shape, direction)
        verdicts.append(v)
        index = _NAMES.index(colour)
        present = _present_frames(labels, index, min_area)
        if present.sum() < max(1, frames / 2):
            continue
        v.present = True
        areas, shapes, times = [], [], []
        for t in torch.nonzero(present).flatten().tolist():
            mask = labels[t] == index
            area = mask.sum().float()
            areas.append(float(area))
            shapes.append(_shape_of(mask, choices))
            v.track.append((float((mask * yy).sum() / area), float((mask * xx).sum() / area)))
            times.append(t / max(frames - 1, 1))
        # Occlusion by a later-drawn object only removes pixels: judge size on fuller frames.
        area = torch.tensor(areas).quantile(0.75).item()
        ref_area = {z: _reference_area(shape, z, colour, height, width) for z in SIZES}
        v.size_ok = min(SIZES, key=lambda z: abs(math.log(area / ref_area[z]))) == size
        v.shape_ok = max(choices, key=shapes.count) == shape
        if len(times) >= 2:
            v.direction_ok = _moves_along(times, v.track, direction, side)
    return Verdict(verdicts, extra_colours(labels, {o.colour for o in verdicts}, min_area))


def extra_colours(labels: torch.Tensor, named: set[str], min_area: float) -> list[str]:
    """Palette colours not in ``named`` that ``labels`` ``[T, H, W]`` shows (``min_area`` pixels
    in at least half the frames): objects the caption does not ask for."""
    frames = labels.shape[0]
    return [
        c
        for c in COLOURS
        if c not in named
        and _present_frames(labels, _NAMES.index(c), min_area).sum() >= max(1, frames / 2)
    ]


def min_object_area(height: int, width: int) -> float:
    """Pixels a colour needs in a frame to count as an object: 30% of the smallest object."""
    return 0.3 * min(_reference_area(s, z, "white", height, width) for s in SHAPES for z in SIZES)


def judge(video: torch.Tensor, caption: str) -> float:
    """Text-alignment score in [0, 1] of ``video`` ``[3, T, H, W]`` for ``caption``.

    The mean over captioned objects of four checks (colour present, size, shape, direction),
    with each uncaptioned colour found in the video counted as a missed object; see
    :func:`judge_details`. Ground truth scores ~1; a random caption scores ~0.15.
    """
    return judge_details(video, caption).score


def chance_level(
    count: int = 64,
    max_objects: int = 3,
    frames: int = 17,
    size: int = 64,
    first_seed: int = 10_000,
    colours: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
) -> float:
    """The judge's mean score of real clips each judged against the next scene's caption: what a
    model that draws perfect scenes but ignores the text would score on scenes of this kind
    (``colours``, ``sizes``: as in :func:`sample_scene`)."""
    scenes = [
        sample_scene(first_seed + i, max_objects, colours=colours, sizes=sizes)
        for i in range(count + 1)
    ]
    return (
        sum(
            judge(render(scene, frames, size, size), other.caption)
            for scene, other in zip(scenes, scenes[1:], strict=False)
        )
        / count
    )


# ---------------------------------------------------------------------------------------------
# The world as files, and a loader for any folder of videos + captions
# ---------------------------------------------------------------------------------------------
def write_dataset(
    root: str | Path,
    count: int,
    frames: int = 17,
    height: int = 64,
    width: int = 64,
    split: str = "train",
    fmt: str = "mp4",
    first_seed: int = 0,
    fps: int = 8,
) -> Path:
    """Render ``count`` scenes (seeds ``first_seed`` ..) to ``root/videos/`` and caption them.

    Writes ``root/captions.jsonl`` with one ``{"video", "caption", "seed"}`` object per line
    (video paths relative to ``root``) and returns its path.
    """
    from cogvx_mini.data.video_io import save_video

    if fmt not in ("mp4", "gif"):
        raise ValueError(f"expected fmt 'mp4' or 'gif', got {fmt!r}")
    integer("count", count, low=0)
    integer("first_seed", first_seed)
    positive_int("fps", fps)
    root = Path(root)
    lines = []
    for seed in range(first_seed, first_seed + count):
        video, caption = sample_video(seed, frames, height, width, split=split)
        rel = f"videos/{seed:06d}.{fmt}"
        save_video(video, root / rel, fps=fps)
        lines.append(json.dumps({"video": rel, "caption": caption, "seed": seed}))
    path = root / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _entry(root: Path, where: str, entry: object) -> tuple[Path, str]:
    """``(video path, caption)`` of one ``captions.jsonl`` line, checked."""
    if not isinstance(entry, dict) or not isinstance(entry.get("video"), str):
        raise ValueError(f"{where}: expected an object with 'video' and 'caption', got {entry!r}")
    if not isinstance(entry.get("caption"), str):
        raise ValueError(f"{where}: expected a 'caption' string, got {entry.get('caption')!r}")
    return path_inside(where, root, entry["video"]), entry["caption"]


class VideoFolder:
    """A folder of videos with captions, read lazily: iterate to get ``(video, caption)``.

    The folder holds either ``captions.jsonl`` (lines ``{"video": relative path, "caption": ...}``,
    as :func:`write_dataset` writes) or the line-aligned pair ``videos.txt`` + ``prompts.txt``
    of CogVideoX's fine-tuning scripts. Videos come as ``[3, T, H, W]`` in [-1, 1]. A video that
    cannot be read is skipped with a warning and recorded in ``skipped`` (path, reason).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        jsonl = self.root / "captions.jsonl"
        if jsonl.is_file():
            self.entries = [_entry(self.root, where, e) for where, e in read_jsonl(jsonl)]
        elif (self.root / "videos.txt").is_file() and (self.root / "prompts.txt").is_file():
            videos = (self.root / "videos.txt").read_text().splitlines()
            prompts = (self.root / "prompts.txt").read_text().splitlines()
            if len(videos) != len(prompts):
                raise ValueError(
                    f"expected as many lines in videos.txt as in prompts.txt, got "
                    f"{len(videos)} and {len(prompts)}"
                )
            self.entries = [
                (path_inside(f"{self.root / 'videos.txt'}:{i}", self.root, v.strip()), p.strip())
                for i, (v, p) in enumerate(zip(videos, prompts, strict=True), start=1)
            ]
        else:
            raise FileNotFoundError(
                f"expected {jsonl} or videos.txt + prompts.txt in {self.root}, found neither"
            )
        self.skipped: list[tuple[Path, str]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        from cogvx_mini.data.video_io import read_video

        self.skipped = []
        for path, caption in self.entries:
            try:
                video = read_video(path)
            except (ValueError, OSError) as err:
                warnings.warn(f"skipping unreadable video {path}: {err}", stacklevel=2)
                self.skipped.append((path, str(err)))
                continue
            yield video, caption
