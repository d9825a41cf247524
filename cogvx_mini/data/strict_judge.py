"""A stricter toy-world judge: objects must stay whole, keep their shape and size in every frame,
move smoothly, and be the only objects there.

:func:`cogvx_mini.data.toyworld.judge` reads each captioned object once per clip: its colour is
present in half the frames, its *typical* area and shape are right, its centroid track goes the
right way. A video in which two objects merge into one patch for a few frames, or in which a
square turns into a blob half-way, can still pass. :func:`strict_judge` asks, per captioned
object, six questions of every frame:

1. **persistent** — the colour is present in at least 90% of the frames;
2. **whole** — in at least 80% of those frames one connected blob holds 90% of its pixels (a
   split or a smear over another object fails);
3. **shape** — the per-frame shape is the captioned one in at least half the frames (ground
   truth loses a few frames to occlusion);
4. **size** — the per-frame area is nearer the captioned size than the other in half of them;
5. **direction** — the centroid track goes the captioned way (the old judge's test);
6. **smooth** — no centroid jump between consecutive frames larger than three times the
   per-frame travel of the caption (an object that vanishes and reappears elsewhere fails).

Frames in which the object touches another one (within 2 pixels; or, when it is absent, was
touching one in the nearest frame it was seen: hidden behind it) and shows fewer pixels than it
should are excused from checks 1-4 and 6, since occlusion cuts and hides objects in the ground
truth too; a blob that merely smears into a neighbour keeps its pixels and is not excused. An
object scores the mean of checks 1, 3, 4 and 5 if it passes 2 and 6, and 0 if it does not: a
merged, split or jumping blob is not the captioned object at all. As in the old judge, each
uncaptioned colour found in the video counts as a missed object, so the object count must be
right too. Ground truth scores at least 0.97 on the evaluation prompts
(``tests/test_strict_judge.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cogvx_mini.data.toyworld import (
    _NAMES,
    SIZES,
    TRAVEL,
    _moves_along,
    _one_video,
    _palette_labels,
    _present_frames,
    _reference_area,
    _shape_of,
    extra_colours,
    min_object_area,
    parse_caption,
    shape_choices,
)

CHECKS = ("persistent", "whole", "shape", "size", "direction", "smooth")


@dataclass
class StrictObjectVerdict:
    """The six checks of one captioned object (all False when it is absent)."""

    size: str
    colour: str
    shape: str
    direction: str
    checks: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(CHECKS, False))

    @property
    def score(self) -> float:
        """The mean of the four attribute checks, zero unless the object stays whole and moves
        smoothly: a merged, split or jumping object is not the captioned object at all."""
        attributes = [self.checks[k] for k in ("persistent", "shape", "size", "direction")]
        gate = self.checks["whole"] and self.checks["smooth"]
        return gate * sum(attributes) / len(attributes)


@dataclass
class StrictVerdict:
    """Per-object strict verdicts and the uncaptioned colours found."""

    objects: list[StrictObjectVerdict]
    extra_colours: list[str]

    @property
    def score(self) -> float:
        return sum(o.score for o in self.objects) / (len(self.objects) + len(self.extra_colours))


def largest_blob_share(masks: torch.Tensor) -> torch.Tensor:
    """For each frame of ``masks`` ``[T, H, W]`` (bool), the share of its pixels in its largest
    4-connected blob (1 for an empty frame): ``[T]``.

    Components are found by label propagation: every pixel starts with its own index and takes
    the largest index among its 4 neighbours inside the mask until nothing changes.
    """
    frames, height, width = masks.shape
    inside = masks.float()[:, None]
    labels = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width)
    labels = labels.expand(frames, 1, height, width) * inside
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    while True:
        padded = F.pad(labels, (1, 1, 1, 1))
        windows = F.unfold(padded, 3)[:, cross.flatten()]  # [T, 5, H*W]: self and 4 neighbours
        grown = windows.max(1).values.view_as(labels) * inside
        if torch.equal(grown, labels):
            break
        labels = grown
    shares = torch.ones(frames)
    for t in range(frames):
        ids = labels[t].flatten()
        ids = ids[ids > 0]
        if len(ids):
            shares[t] = torch.unique(ids, return_counts=True)[1].max() / len(ids)
    return shares


def in_contact(masks: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """``[T]``: whether the object ``masks`` ``[T, H, W]`` touches (within 2 pixels) a pixel of
    another object ``others`` ``[T, H, W]`` (bool) — a frame where occlusion may hide part of it.
    An absent frame takes the contact of the nearest present frame (hidden behind an object)."""
    near = F.max_pool2d(masks.float()[:, None], 5, stride=1, padding=2)[:, 0] > 0
    contact = (near & others).flatten(1).any(1)
    present = torch.nonzero(masks.flatten(1).any(1)).flatten()
    if len(present) == 0:
        return torch.zeros(len(masks), dtype=torch.bool)
    nearest = present[(torch.arange(len(masks))[:, None] - present[None]).abs().argmin(1)]
    return torch.where(masks.flatten(1).any(1), contact, contact[nearest])


def _frame_checks(
    v: StrictObjectVerdict, masks, present, contact, side: int, choices: tuple[str, ...]
) -> None:
    """Fill ``v.checks`` from the object's masks ``[T, H, W]``, its present frames ``[T]`` and
    its frames in contact with another object ``[T]`` (excused from the shape checks); its
    shape is classified among ``choices`` (:func:`~cogvx_mini.data.toyworld.shape_choices`)."""
    frames = len(masks)
    v.checks["persistent"] = bool((present | contact).float().mean() >= 0.9)
    kept = torch.nonzero(present).flatten()
    if len(kept) < 2:
        return
    clear = masks[torch.nonzero(present & ~contact).flatten()]
    # An occluder may cut an object in two: wholeness is judged on frames clear of others only.
    whole = (largest_blob_share(clear) >= 0.9).float().mean() >= 0.8 if len(clear) else True
    v.checks["whole"] = bool(whole)
    if len(clear) < 2:  # always touching another object: shape and size judged on every frame
        clear = masks[kept]
    height, width = masks.shape[1:]
    v.checks["shape"] = sum(_shape_of(m, choices) == v.shape for m in clear) >= 0.5 * len(clear)
    ref = {z: _reference_area(v.shape, z, v.colour, height, width) for z in SIZES}
    areas = clear.flatten(1).sum(1).float()
    nearer = [min(SIZES, key=lambda z, a=a: abs(torch.log(a / ref[z]))) for a in areas]
    v.checks["size"] = nearer.count(v.size) >= 0.5 * len(clear)
    masks = masks[kept]
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    area = masks.flatten(1).sum(1).float()
    track = torch.stack([(masks * yy).flatten(1).sum(1), (masks * xx).flatten(1).sum(1)], 1)
    track = track / area[:, None]
    times = (kept.float() / max(frames - 1, 1)).tolist()
    v.checks["direction"] = _moves_along(times, track.tolist(), v.direction, side)
    # A partly hidden object's centroid shifts by up to about its radius: jumps are judged on
    # consecutive frames that are both clear of other objects.
    per_frame = TRAVEL * side / max(frames - 1, 1)
    free = ~contact[kept]
    pairs = free[1:] & free[:-1]
    steps = (track[1:] - track[:-1]).norm(dim=1) / (kept[1:] - kept[:-1]).float()
    v.checks["smooth"] = bool((steps[pairs] <= 3 * per_frame + 1.0).all())


def strict_judge_details(video: torch.Tensor, caption: str) -> StrictVerdict:
    """Read the captioned objects back from ``video`` ``[3, T, H, W]`` (or ``[1, 3, T, H, W]``)
    with the six per-frame checks of the module docstring."""
    video = _one_video(video)
    _, frames, height, width = video.shape
    labels = _palette_labels(video)
    min_area = min_object_area(height, width)
    verdicts = []
    objects = parse_caption(caption)
    choices = shape_choices(shape for _, _, shape, _ in objects)  # + a new shape it names
    for size, colour, shape, direction in objects:
        v = StrictObjectVerdict(size, colour, shape, direction)
        verdicts.append(v)
        masks = labels == _NAMES.index(colour)
        others = (labels > 0) & ~masks
        present = _present_frames(labels, _NAMES.index(colour), min_area)
        # Occlusion only removes pixels: a frame is excused only if the object is touching
        # another one AND is smaller than it should be (a smear into a neighbour is not).
        full = _reference_area(shape, size, colour, height, width)
        shrunk = masks.flatten(1).sum(1) < 0.85 * full
        contact = in_contact(masks & present[:, None, None], others) & shrunk
        _frame_checks(v, masks, present, contact, min(height, width), choices)
    return StrictVerdict(verdicts, extra_colours(labels, {o.colour for o in verdicts}, min_area))


def strict_judge(video: torch.Tensor, caption: str) -> float:
    """Strict text-alignment score in [0, 1] of ``video`` ``[3, T, H, W]`` for ``caption`` (the
    scoring rule of the module docstring; each uncaptioned colour counts as a missed object)."""
    return strict_judge_details(video, caption).score
