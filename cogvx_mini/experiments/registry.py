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
from cogvx_mini.experiments.common import BUDGETS, Budget, merge_runs
from cogvx_mini.training.overrides import with_overrides
from cogvx_mini.weights.checkpoint import write_text_atomic

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
    arms: Sequence[str] | None = None,
) -> dict:
    """Run ablation ``name`` with a budget (a name of ``BUDGETS`` or a :class:`Budget`) and
    return its results (JSON-ready): claim, budget, per-arm settings, parameter counts, loss
    curves per seed and metrics as mean ± std over ``seeds`` (default: the budget's); ``arms``
    (default: every one of the module's ``ARMS``) runs a part of it."""
    if name not in RUNNERS:
        raise ValueError(f"expected an ablation in {ABLATIONS}, got {name!r}")
    arms = tuple(MODULES[name].ARMS if arms is None else arms)
    unknown = [a for a in arms if a not in MODULES[name].ARMS]
    if unknown or not arms:
        raise ValueError(f"arms: expected some of {MODULES[name].ARMS}, got {list(arms)}")
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
    result = RUNNERS[name](budget, seeds, device, log, arms=arms)
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
# One process per arm and seed (a GPU runs many mini trainings at once: each is bound by its
# host), each part kept on disk, so a run stopped by a time limit resumes where it stopped


def part_path(work: Path, name: str, arm: str, seed: int) -> Path:
    return work / name / f"{arm}-seed{seed}.json"


def finished_part(path: Path, budget: Budget, device: str) -> dict | None:
    """The part at ``path`` if it ran with ``budget`` (any seed) on ``device``, else None."""
    if not path.is_file():
        return None
    try:
        part = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    want = json.loads(json.dumps(dict(asdict(budget), seeds=[])))
    same = dict(part.get("budget_settings", {}), seeds=[]) == want
    return part if same and part.get("device") == device else None


def run_parts(names: Sequence[str], args: argparse.Namespace, budget: Budget) -> dict[str, dict]:
    """Every (ablation, arm, seed) of ``names`` in its own process, ``args.parallel`` at once
    (one thread each), each part written to ``args.work``; parts already there with the same
    budget and device are kept. Returns each ablation's parts merged (``common.merge_runs``)."""
    import subprocess
    import sys

    from tqdm import tqdm

    seeds = tuple(args.seeds or budget.seeds)
    arms = {n: tuple(args.arms or MODULES[n].ARMS) for n in names}
    jobs = [(n, a, s) for n in names for a in arms[n] for s in seeds]
    work = args.work / budget.name
    todo = [j for j in jobs if finished_part(part_path(work, *j), budget, args.device) is None]
    options = ["--budget", args.budget, "--device", args.device, "--threads", "1"]
    options += ["--set", *args.set]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="ablation parts")
    running: list[tuple[tuple, object, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < args.parallel:
            job = todo.pop(0)
            path = part_path(work, *job)
            path.parent.mkdir(parents=True, exist_ok=True)
            log = open(path.with_suffix(".log"), "w")  # noqa: SIM115 (closed below)
            cmd = [sys.executable, "-m", "cogvx_mini.experiments", job[0], *options]
            cmd += ["--seeds", str(job[2]), "--arms", job[1], "--part", str(path)]
            running.append((job, log, subprocess.Popen(cmd, stdout=log, stderr=log)))
        job, log, proc = running.pop(0)
        code = proc.wait()
        log.close()
        if code:
            tail = Path(log.name).read_text()[-2000:]
            raise SystemExit(f"error: {job[0]} arm {job[1]} seed {job[2]} failed:\n{tail}")
        bar.update(1)
    bar.close()
    merged = {}
    for n in names:
        parts = [json.loads(part_path(work, n, a, s).read_text()) for a in arms[n] for s in seeds]
        merged[n] = merge_runs(parts, what=n)
        # What the ablation cost: its parts' process time, and how many shared the machine.
        merged[n]["part_seconds_total"] = sum(p["seconds"] for p in parts)
        merged[n]["parallel"] = args.parallel
    return merged


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
        help="parts (one arm and seed each) run at once, one process each (GPU)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("outputs/ablation_parts"),
        help="where --parallel keeps its parts (a rerun keeps those finished)",
    )
    p.add_argument("--arms", nargs="+", default=None, help="run only these arms")
    p.add_argument("--part", type=Path, default=None, help=argparse.SUPPRESS)  # a child's JSON
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
    if (args.arms or args.part) and len(names) != 1:
        p.error(f"--arms and --part: expected one ablation, got {', '.join(names)}")
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
    if args.part is not None:  # one part of one ablation, for run_parts
        result = run(names[0], budget, args.seeds, args.device, print, args.arms)
        write_text_atomic(args.part, json.dumps(result, indent=1) + "\n")
        return
    merged = run_parts(names, args, budget) if args.parallel > 1 else {}
    for name in names:
        if name in merged:
            result = merged[name]
        else:
            log = lambda s: print(s, flush=True)  # noqa: E731
            result = run(name, budget, args.seeds, args.device, log, args.arms)
        write_text_atomic(args.out / f"{name}.json", json.dumps(result, indent=1) + "\n")
        figure = plot(result, args.out / f"{name}.png")
        plot_probes(result, args.out / f"{name}_probes.png")
        print(
            f"{name}: {result['seconds']:.0f} s -> {args.out / (name + '.json')}, {figure} "
            f"(total {time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
