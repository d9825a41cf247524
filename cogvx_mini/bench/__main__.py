"""Benchmarks that print numbers (never timed tests).

python -m cogvx_mini.bench vae [options]          # see cogvx_mini/bench/vae.py
python -m cogvx_mini.bench transformer [options]  # see cogvx_mini/bench/transformer.py
python -m cogvx_mini.bench interop [options]      # see cogvx_mini/bench/interop.py
python -m cogvx_mini.bench scale [options]        # see cogvx_mini/bench/scale.py (torchrun -m too)
python -m cogvx_mini.bench mini [options]         # see cogvx_mini/bench/mini.py (judge scores)
python -m cogvx_mini.bench sampling [options]     # see cogvx_mini/bench/sampling.py (CFG steps)
python -m cogvx_mini.bench lora [options]         # see cogvx_mini/bench/lora.py (LoRA vs full)
python -m cogvx_mini.bench end_to_end [options]   # see cogvx_mini/bench/end_to_end.py (sample.py)
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "vae": "cogvx_mini.bench.vae",
    "transformer": "cogvx_mini.bench.transformer",
    "interop": "cogvx_mini.bench.interop",
    "scale": "cogvx_mini.bench.scale",
    "mini": "cogvx_mini.bench.mini",
    "sampling": "cogvx_mini.bench.sampling",
    "lora": "cogvx_mini.bench.lora",
    "end_to_end": "cogvx_mini.bench.end_to_end",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        sys.exit(f"{__doc__}\nexpected one of {sorted(BENCHMARKS)}, got {argv[:1]}")
    importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
