"""Filtering a raw video pool: cheap statistics, thresholds, and a small learned classifier.

CogVideoX filters its web clips with video classifiers trained on annotated samples plus
optical-flow and aesthetic thresholds [@yang2024cogvideox]. Here every clip ``[3, T, H, W]`` in
[-1, 1] (frames ``x_t``, pixels in [0, 1] after ``(x + 1) / 2``) gets six statistics, one per
negative class of :mod:`cogvx_mini.data.web_pool`:

- ``cut_spike`` (editing): the largest frame difference over the typical one,
  ``max_t d_t / (median_t d_t + 0.002)`` with ``d_t = mean |x_{t+1} - x_t|``.
- ``jumpiness`` (motion connectivity): ``median_t d_t / (mean |x_{T-1} - x_0| + 0.002)``;
  smooth motion moves a little per frame, shuffled frames as far as the whole clip.
- ``off_palette`` (low quality): the share of pixels farther than 0.12 from every colour of the
  toy world's palette (blur, noise and block averages make in-between colours).
- ``motion`` (lecture type): ``mean |x_{T-1} - x_0| / (mean |x_0 - background| + 0.002)``, the
  flow-like displacement over the clip relative to how much there is to move.
- ``glyph_density`` (text dominated): the share of rows of the time-median frame with at least
  ``max(8, W / 6)`` dark-to-bright transitions (a row through three objects has six).
- ``ui_share`` (noisy screenshots): the share of pixels that are grey (channel spread < 0.08),
  neither dark nor white, and static over the clip.

:func:`fit_thresholds` sets one threshold per statistic (best F1 on labelled clips, one class
against the rest); :class:`DefectClassifier` is a small MLP on the log-statistics trained on the
same labelled share; :func:`precision_recall` scores either on a held-out pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cogvx_mini.data.toyworld import BACKGROUND, COLOURS
from cogvx_mini.data.web_pool import CLASSES, DEFECTS

STATISTICS = ("cut_spike", "jumpiness", "off_palette", "motion", "glyph_density", "ui_share")
STATISTIC_OF = dict(zip(DEFECTS, STATISTICS, strict=True))  # the statistic that flags each class
_PALETTE = torch.tensor([BACKGROUND, *COLOURS.values()])  # [7, 3]
# Most specific first: a UI window is also off-palette and still, glyphs are static too.
THRESHOLD_PRIORITY = ("screenshot", "text_dominated", "lecture", "editing", "motion_jump",
                      "low_quality")  # fmt: skip


def _check_video(video: torch.Tensor) -> torch.Tensor:
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3 or video.shape[1] < 2:
        raise ValueError(f"expected a video [3, T>=2, H, W], got {tuple(video.shape)}")
    return (video.float().clamp(-1, 1) + 1) / 2


def clip_statistics(video: torch.Tensor) -> dict[str, float]:
    """The six filter statistics of ``video`` ``[3, T, H, W]`` in [-1, 1] (see module doc)."""
    x = _check_video(video)
    _, frames, height, width = x.shape
    d = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(0, 2, 3))  # [T-1]
    end = (x[:, -1] - x[:, 0]).abs().mean().item()
    background = torch.tensor(BACKGROUND).view(3, 1, 1)
    content = (x[:, 0] - background).abs().mean().item()
    rgb = x.permute(1, 2, 3, 0).reshape(-1, 3)
    off = (torch.cdist(rgb, _PALETTE).min(1).values > 0.12).float().mean().item()
    bright = x.mean(0).median(dim=0).values > 0.5  # [H, W] of the time-median frame
    transitions = (bright[:, 1:] & ~bright[:, :-1]).sum(1)
    glyph = (transitions >= max(8, width // 6)).float().mean().item()
    grey = (x.max(0).values - x.min(0).values < 0.08) & (x.mean(0) > 0.3) & (x.mean(0) < 0.88)
    static = (x - x[:, :1]).abs().amax(dim=(0, 1)) < 0.02
    ui = (grey.all(0) & static).float().mean().item()
    return {
        "cut_spike": (d.max() / (d.median() + 0.002)).item(),
        "jumpiness": d.median().item() / (end + 0.002),
        "off_palette": off,
        "motion": end / (content + 0.002),
        "glyph_density": glyph,
        "ui_share": ui,
    }


def statistics_matrix(videos: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[N, 6]`` statistics (columns in :data:`STATISTICS` order) of ``N`` videos."""
    rows = (clip_statistics(v) for v in videos)  # once per clip, not once per column
    return torch.tensor([[row[s] for s in STATISTICS] for row in rows])


def label_indices(labels: Sequence[str]) -> torch.Tensor:
    """Class names (of :data:`CLASSES`) as indices ``[N]``."""
    bad = sorted(set(labels) - set(CLASSES))
    if bad:
        raise ValueError(f"expected labels in {CLASSES}, got {bad}")
    return torch.tensor([CLASSES.index(label) for label in labels])


# ---------------------------------------------------------------------------------------------
# Thresholds


@dataclass(frozen=True)
class Threshold:
    """Flag a clip as ``defect`` when ``statistic`` is above (``above``) or below ``value``."""

    defect: str
    statistic: str
    value: float
    above: bool

    def flags(self, stats: torch.Tensor) -> torch.Tensor:
        """``[N]`` booleans for a ``[N, 6]`` statistics matrix."""
        column = stats[:, STATISTICS.index(self.statistic)]
        return column > self.value if self.above else column < self.value


def _f1(flagged: torch.Tensor, positive: torch.Tensor) -> float:
    tp = (flagged & positive).sum().item()
    return 2 * tp / max(flagged.sum().item() + positive.sum().item(), 1)


def fit_thresholds(stats: torch.Tensor, labels: Sequence[str]) -> dict[str, Threshold]:
    """Per defect, the threshold on its statistic (direction included: ``motion`` flags low
    values) with the best F1 for that class against the rest of the labelled clips."""
    y = label_indices(labels)
    out = {}
    for defect, statistic in STATISTIC_OF.items():
        column = stats[:, STATISTICS.index(statistic)]
        positive = y == CLASSES.index(defect)
        values = column.unique()
        cuts = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
        best = max(
            (
                Threshold(defect, statistic, float(c), above)
                for c in cuts
                for above in (True, False)
            ),
            key=lambda t: _f1(t.flags(stats), positive),
        )
        out[defect] = best
    return out


def threshold_predictions(thresholds: dict[str, Threshold], stats: torch.Tensor) -> torch.Tensor:
    """Class indices ``[N]``: the first defect in :data:`THRESHOLD_PRIORITY` whose threshold
    flags the clip, else clean."""
    pred = torch.zeros(len(stats), dtype=torch.long)
    for defect in reversed(THRESHOLD_PRIORITY):
        pred = torch.where(thresholds[defect].flags(stats), CLASSES.index(defect), pred)
    return pred


# ---------------------------------------------------------------------------------------------
# The learned classifier


def _features(stats: torch.Tensor) -> torch.Tensor:
    return torch.log(stats.clamp(min=0) + 1e-3)


class DefectClassifier(nn.Module):
    """A small MLP: six log-statistics ``[N, 6]`` -> class logits ``[N, 7]`` (:data:`CLASSES`).

    The features are standardised with the training set's mean and std (stored as buffers).
    """

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.register_buffer("shift", torch.zeros(len(STATISTICS)))
        self.register_buffer("scale", torch.ones(len(STATISTICS)))
        self.net = nn.Sequential(
            nn.Linear(len(STATISTICS), hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, len(CLASSES)),
        )

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return self.net((_features(stats) - self.shift) / self.scale)

    @torch.no_grad()
    def predict(self, stats: torch.Tensor) -> torch.Tensor:
        """Class indices ``[N]`` for statistics ``[N, 6]``."""
        return self.eval()(stats).argmax(-1)


def train_classifier(
    stats: torch.Tensor, labels: Sequence[str], steps: int = 400, seed: int = 0
) -> DefectClassifier:
    """Fit a :class:`DefectClassifier` to labelled clips (full-batch AdamW, class-balanced
    cross-entropy so rare defects count as much as the many clean clips)."""
    y = label_indices(labels)
    if len(y) != len(stats):
        raise ValueError(f"expected one label per clip, got {len(y)} labels for {len(stats)}")
    torch.manual_seed(seed)
    model = DefectClassifier()
    feats = _features(stats)
    model.shift.copy_(feats.mean(0))
    model.scale.copy_(feats.std(0).clamp(min=1e-3) if len(feats) > 1 else torch.ones(6))
    counts = torch.bincount(y, minlength=len(CLASSES)).float()
    weight = torch.where(counts > 0, counts.sum() / (len(CLASSES) * counts.clamp(min=1)), 0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-3)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(stats), y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def precision_recall(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per class of :data:`CLASSES`: ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``
    and ``support`` (true clips) for predicted and true indices ``[N]`` (NaN when undefined)."""
    out = {}
    for i, name in enumerate(CLASSES):
        tp = ((pred == i) & (truth == i)).sum().item()
        flagged, positive = (pred == i).sum().item(), (truth == i).sum().item()
        out[name] = {
            "precision": tp / flagged if flagged else math.nan,
            "recall": tp / positive if positive else math.nan,
            "support": positive,
        }
    return out
