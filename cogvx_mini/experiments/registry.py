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

from cogvx_mini.checks import cli_type, positive_int
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
# One process per seed (a GPU runs many mini trainings at once: each is bound by its host)


def merge_seeds(results: Sequence[dict]) -> dict:
    """The result of one ablation over every seed, from results of the same ablation and budget
    over disjoint seeds: per-seed lists are joined and the metrics summarised again; what does
    not depend on the seed (settings, parameter counts, judge ceilings) is the first result's.
    ``seconds`` is the longest run's (they ran at once); ``seconds_per_seed`` keeps each."""
    from cogvx_mini.experiments.common import summary

    first = results[0]
    settings = [json.dumps(dict(r["budget_settings"], seeds=[]), sort_keys=True) for r in results]
    if len({r["name"] for r in results}) != 1 or len(set(settings)) != 1:
        raise ValueError("expected results of one ablation and one budget")
    seeds = [s for r in results for s in r["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"expected disjoint seeds, got {seeds}")
    per_run = [len(r["seeds"]) for r in results]
    merged = dict(first, seeds=seeds)
    merged["seconds"] = max(r["seconds"] for r in results)
    merged["seconds_per_seed"] = [r["seconds"] for r in results]
    merged["budget_settings"] = dict(first["budget_settings"], seeds=merged["seeds"])
    merged["arms"] = {}
    for arm, a in first["arms"].items():
        arms = [r["arms"][arm] for r in results]
        out = dict(a)
        for key, value in a.items():
            if isinstance(value, dict) and "values" in value:  # a summary over seeds
                out[key] = summary([v for x in arms for v in x[key]["values"]])
            elif key == "metrics":
                out[key] = {
                    m: summary([v for x in arms for v in x[key][m]["values"]]) for m in value
                }
            elif isinstance(value, list) and all(
                len(x[key]) == n for x, n in zip(arms, per_run, strict=True)
            ):  # one entry per seed
                out[key] = [item for x in arms for item in x[key]]
        merged["arms"][arm] = out
    return merged


def run_in_processes(name: str, args: argparse.Namespace, seeds: Sequence[int]) -> dict:
    """``name`` for each seed in its own process (``args.parallel`` at once, one thread each),
    the results merged by :func:`merge_seeds`."""
    import subprocess
    import sys
    import tempfile

    base = [sys.executable, "-m", "cogvx_mini.experiments", name, "--budget", args.budget]
    base += ["--device", args.device, "--threads", "1", "--set", *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        folders = {seed: Path(tmp) / f"seed{seed}" for seed in seeds}
        pending, running = list(seeds), []
        while pending or running:
            while pending and len(running) < args.parallel:
                seed = pending.pop(0)
                log = open(Path(tmp) / f"seed{seed}.log", "w")  # noqa: SIM115 (closed below)
                cmd = [*base, "--seeds", str(seed), "--out", str(folders[seed])]
                running.append((seed, log, subprocess.Popen(cmd, stdout=log, stderr=log)))
            seed, log, proc = running.pop(0)
            code = proc.wait()
            log.close()
            if code:
                tail = Path(log.name).read_text()[-2000:]
                raise SystemExit(f"error: {name} with seed {seed} failed:\n{tail}")
        results = [json.loads((folders[s] / f"{name}.json").read_text()) for s in seeds]
    return merge_seeds(results)


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
        "--parallel",
        type=cli_type(positive_int),
        default=1,
        help="seeds run at once, one process each (GPU)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="budget overrides, e.g. steps=50 batch=4",
    )
    args = p.parse_args(argv)
    from cogvx_mini.experiments.plots import load_results, plot, plot_probes  # (reads the registry)

    names = ABLATIONS if "all" in args.names else tuple(args.names)
    try:
        budget = with_overrides(BUDGETS[args.budget], args.set, "--set")
    except (TypeError, ValueError) as err:
        p.error(str(err))
    if args.plot_only:
        for name, result in load_results(args.out).items():
            if name in names:
                print(plot(result, args.out / f"{name}.png"))
                plot_probes(result, args.out / f"{name}_probes.png")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in names:
        if args.parallel > 1:
            result = run_in_processes(name, args, args.seeds or budget.seeds)
        else:
            result = run(name, budget, args.seeds, args.device, log=lambda s: print(s, flush=True))
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        figure = plot(result, args.out / f"{name}.png")
        plot_probes(result, args.out / f"{name}_probes.png")
        print(
            f"{name}: {result['seconds']:.0f} s -> {args.out / (name + '.json')}, {figure} "
            f"(total {time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
