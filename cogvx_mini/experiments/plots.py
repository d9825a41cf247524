"""Figures and verdicts of ablation results: from the JSON alone, apart from running them."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from cogvx_mini.experiments.registry import ABLATIONS


def plot(result: dict, path: str | Path) -> Path:
    """One figure per ablation: loss curves (mean over seeds, min-max band) per arm, then one
    panel per primary metric (mean ± std over seeds as a marker with error bar, each seed a
    small dot beside it; the axis is zoomed to the values). Writes ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = result["primary"]
    arms = result["arms"]
    # Two panels a row, so that a four-panel figure stays readable in the book's column.
    cols = min(2, 1 + len(primary))
    rows = -(-(1 + len(primary)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[1 + len(primary) :]:
        ax.set_visible(False)
    axes = list(axes.flat)[: 1 + len(primary)]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0]
    steps_key = "vae_steps" if result["name"] == "vae_3d_vs_2d" else "steps"
    total = result["budget_settings"][steps_key]
    for i, (arm, a) in enumerate(arms.items()):
        c = torch.tensor(a["loss_curves"], dtype=torch.float64)
        x = torch.linspace(0, total, c.shape[1] + 1)[1:]
        ax.plot(x, c.mean(0), color=colours[i], label=arm)
        ax.fill_between(x, c.min(0).values, c.max(0).values, color=colours[i], alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 loss" if result["name"] == "vae_3d_vs_2d" else "v-loss")
    ax.set_title("training loss")
    ax.legend(fontsize=7)
    for ax, metric in zip(axes[1:], primary, strict=True):
        for i, a in enumerate(arms.values()):
            m = a["metrics"][metric]
            ax.errorbar(i, m["mean"], yerr=m["std"], fmt="o", color=colours[i], ms=9, capsize=5)
            ax.plot([i + 0.15] * len(m["values"]), m["values"], "k.", ms=4)
        ax.set_xticks(range(len(arms)), list(arms), fontsize=9)
        ax.set_xlim(-0.5, len(arms) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        better = "higher" if result["higher_is_better"].get(metric, False) else "lower"
        ax.set_title(f"{metric} ({better} is better)", fontsize=9)
    fig.suptitle(f"{result['name']} ({result['budget']} budget, {len(result['seeds'])} seeds)")
    return save_figure(fig, path)


def plot_probes(result: dict, path: str | Path) -> Path | None:
    """The probes an ablation stored, mean over seeds per arm: the attention an object's
    tokens give to it in the previous frame per layer (dashed: uniform attention over the keys
    the layer allows), and the text-vs-video scale cosine per timestep (mean over the norms).
    Writes ``path`` (PNG) and returns it, or ``None`` when the result holds no probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [
        k
        for k in ("attention_probe", "modulation_probe")
        if k in next(iter(result["arms"].values()))
    ]
    if not kinds:
        return None
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 3.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, (arm, a) in enumerate(result["arms"].items()):
            if kind == "attention_probe":
                share = torch.tensor([[layer["share"] for layer in run] for run in a[kind]])
                even = torch.tensor([[layer["uniform"] for layer in run] for run in a[kind]])
                layers = torch.arange(1, share.shape[1] + 1)
                ax.plot(layers, share.nanmean(0), "o-", color=colours[i], label=arm)
                ax.plot(layers, even.nanmean(0), "--", color=colours[i], lw=0.8)
                ax.set(
                    xlabel="layer", ylabel="attention share", title="object -> itself, frame before"
                )
            else:
                cos = torch.tensor(
                    [[row["scale_cosine"] for row in run["norms"]] for run in a[kind]]
                )
                ax.plot(
                    a[kind][0]["timesteps"], cos.mean((0, 1)), "o-", color=colours[i], label=arm
                )
                ax.set(xlabel="timestep", ylabel="cosine", title="text vs video AdaLN scale")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG, the book's resolution) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _seed_count(m: dict) -> int:
    """Seeds behind a summary (results written before ``summary`` stored ``n``: its values)."""
    return m["n"] if "n" in m else sum(math.isfinite(v) for v in m["values"])


def load_results(out: str | Path = "book/ablations") -> dict[str, dict]:
    """The committed results: ``{name: result}`` for every ``<name>.json`` under ``out``."""
    out = Path(out)
    return {
        n: json.loads((out / f"{n}.json").read_text())
        for n in ABLATIONS
        if (out / f"{n}.json").is_file()
    }


def verdict(result: dict) -> list[dict]:
    """Per primary metric: the paper's choice (the first arm) against the best other arm, or,
    where the result names ``contrasts`` (``[[arm, other], ...]``), each arm against its other.

    ``agrees`` when the (paper's) arm is better by more than the two spreads (std over seeds)
    added, ``disagrees`` when it is worse by that much, else ``within spread``."""
    arms = result["arms"]
    first = next(iter(arms))
    pairs = result.get("contrasts") or [[first, None]]
    return [verdict_row(result, metric, a, b) for a, b in pairs for metric in result["primary"]]


def verdict_row(result: dict, metric: str, chosen: str, other: str | None) -> dict:
    """One row of :func:`verdict`: ``chosen`` against ``other`` (``None``: the best other)."""
    higher = result["higher_is_better"][metric]
    sign = 1.0 if higher else -1.0
    ma = result["arms"][chosen]["metrics"][metric]
    if other is None:
        name, mb = max(
            ((n, o["metrics"][metric]) for n, o in result["arms"].items() if n != chosen),
            key=lambda x: sign * x[1]["mean"],
        )
    else:
        name, mb = other, result["arms"][other]["metrics"][metric]
    gap = sign * (ma["mean"] - mb["mean"])
    spread = ma["std"] + mb["std"] + 1e-6 * abs(ma["mean"])  # equal values tie
    outcome = "agrees" if gap > spread else "disagrees" if gap < -spread else "within spread"
    return {
        "metric": metric,
        "paper_choice": chosen,
        "paper_choice_value": f"{ma['mean']:.4g} ± {ma['std']:.2g}",
        "best_other": name,
        "best_other_value": f"{mb['mean']:.4g} ± {mb['std']:.2g}",
        "better": "higher" if higher else "lower",
        "outcome": outcome,
        "detectable": detectable_difference(ma, mb),
    }


def detectable_difference(a: dict, b: dict, power: float = 0.8) -> float:
    """The true difference that the verdict rule calls with probability ``power`` for two arms'
    summaries (chapter 10's power statement): ``σ (2 + z_power √(2/n))``, with ``σ`` the mean of
    their seed standard deviations and ``n`` the smaller seed count."""
    n = max(1, min(_seed_count(a), _seed_count(b)))
    z = statistics.NormalDist().inv_cdf(power)
    return (a["std"] + b["std"]) / 2 * (2 + z * math.sqrt(2 / n))
