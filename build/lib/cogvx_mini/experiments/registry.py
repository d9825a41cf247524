"""The ablations by name: ``ABLATIONS``, each one's module and claim, ``run`` and the CLI.

    python -m cogvx_mini.experiments all --budget small --device cpu --out book/ablations/
    python -m cogvx_mini.experiments rope_vs_sincos --budget tiny --set steps=10 seeds=[0]

Each ablation is a module of this package with a ``CLAIM`` and ``run(budget, seeds, device, log)
-> dict``; ``--set key=value`` overrides fields of the budget (the library's one override
syntax, ``cogvx_mini.training.overrides``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from cogvx_mini.experiments.common import BUDGETS, Budget
from cogvx_mini.training.overrides import with_overrides

ABLATIONS = (
    "vae_3d_vs_2d",
    "rope_vs_sincos",
    "expert_adaln",
    "full_vs_2d1d_attention",
    "explicit_uniform_sampling",
    "frame_pack",
)
MODULES = {name: importlib.import_module(f"cogvx_mini.experiments.{name}") for name in ABLATIONS}
RUNNERS = {name: module.run for name, module in MODULES.items()}
CLAIMS = {name: module.CLAIM for name, module in MODULES.items()}


def run(
    name: str,
    budget: str | Budget = "small",
    seeds: Sequence[int] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """Run ablation ``name`` with a budget (``tiny``, ``small``, ``full`` or a :class:`Budget`)
    and return its results (JSON-ready): claim, budget, per-arm settings, parameter counts,
    loss curves per seed and metrics as mean ± std over ``seeds`` (default: the budget's)."""
    if name not in RUNNERS:
        raise ValueError(f"expected an ablation in {ABLATIONS}, got {name!r}")
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"expected a budget in {tuple(BUDGETS)}, got {budget!r}")
        budget = BUDGETS[budget]
    seeds = tuple(budget.seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("expected at least one seed")
    budget = replace(budget, seeds=seeds)
    start = time.perf_counter()
    log(f"{name} ({budget.name} budget, seeds {list(seeds)}, {device})")
    result = RUNNERS[name](budget, seeds, device, log)
    return {
        "name": name,
        "claim": CLAIMS[name],
        "budget": budget.name,
        "budget_settings": asdict(budget),
        "device": device,
        "torch": torch.__version__,
        "seeds": list(seeds),
        "seconds": time.perf_counter() - start,
        **result,
    }


# ---------------------------------------------------------------------------------------------
# Figures


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run the paper's ablations in miniature.")
    p.add_argument(
        "names",
        nargs="+",
        choices=[*ABLATIONS, "all"],
        metavar="NAME",
        help=f"one or more of {', '.join(ABLATIONS)}, or all",
    )
    p.add_argument("--budget", default="small", choices=list(BUDGETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--out", type=Path, default=Path("book/ablations"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--plot-only", action="store_true", help="redraw figures from the JSON")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="budget overrides, e.g. steps=50 batch=4",
    )
    args = p.parse_args(argv)
    from cogvx_mini.experiments.plots import load_results, plot  # plots reads the registry

    names = ABLATIONS if "all" in args.names else tuple(args.names)
    try:
        budget = with_overrides(BUDGETS[args.budget], args.set, "--set")
    except (TypeError, ValueError) as err:
        p.error(str(err))
    if args.plot_only:
        for name, result in load_results(args.out).items():
            if name in names:
                print(plot(result, args.out / f"{name}.png"))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in names:
        result = run(name, budget, args.seeds, args.device, log=lambda s: print(s, flush=True))
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        figure = plot(result, args.out / f"{name}.png")
        print(
            f"{name}: {result['seconds']:.0f} s -> {args.out / (name + '.json')}, {figure} "
            f"(total {time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
