"""The paper's ablations in miniature (chapter 10): ``python -m cogvx_mini.experiments``.

Six ablations [@yang2024cogvideox], each with arms that differ in one switch and share everything
else (steps, batch, data, seeds; parameter counts are reported), one module each
(``vae_3d_vs_2d``, ``rope_vs_sincos``, ``expert_adaln``, ``full_vs_2d1d_attention``,
``explicit_uniform_sampling``, ``frame_pack``); ``common`` holds what they share (budgets, the
latent VAE, training through the library's loops, evaluations), ``registry`` the names, ``run``
and the CLI, ``plots`` the figures and verdicts. ``run(name, budget, seeds, device) -> dict``
returns (and the CLI writes) one JSON per ablation; ``plot(result, path)`` draws its figure.
"""

from cogvx_mini.experiments.common import (
    BUDGETS,
    EVAL_SEED,
    Budget,
    curve,
    detrended_std,
    summary,
    track_residual,
)
from cogvx_mini.experiments.plots import load_results, plot, verdict
from cogvx_mini.experiments.registry import ABLATIONS, CLAIMS, RUNNERS, main, run

__all__ = [
    "ABLATIONS",
    "BUDGETS",
    "CLAIMS",
    "EVAL_SEED",
    "RUNNERS",
    "Budget",
    "curve",
    "detrended_std",
    "load_results",
    "main",
    "plot",
    "run",
    "summary",
    "track_residual",
    "verdict",
]
