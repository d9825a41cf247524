"""Print the table of the JSON results that ``scale/gpu_checks.sh`` (or
``python -m cogvx_mini.bench scale --json``) wrote into a folder,
with FSDP scaling efficiency and CP-vs-unsplit loss agreement.

    python -m cogvx_mini.bench.gpu_checks OUT
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def main(folder: str) -> None:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}
    if not results:
        sys.exit(f"no *.json results in {folder}")
    head = f"{'run':<26}{'GPUs':>5}{'dp':>4}{'cp':>4}{'video':>13}{'s/step':>9}"
    print(head + f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>9}{'first loss':>12}  device")
    for name, r in results.items():
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") is not None else "-"
        video = "x".join(str(v) for v in r["video"])
        print(
            f"{name:<26}{r['world']:>5}{r['dp']:>4}{r['cp']:>4}{video:>13}"
            f"{r['time_per_step_s']:>9.3f}{r['tflops_per_gpu']:>9.1f}{mfu:>7}{mem:>9}"
            f"{r['first_loss']:>12.6f}  {r['device']}, torch {r['torch']}"
        )
    base = results.get("5b_fwdbwd_1gpu")
    if base:
        print("\nFSDP weak scaling (one sample per GPU), efficiency = t(1 GPU) / t(N GPUs):")
        for name, r in results.items():
            if re.fullmatch(r"5b_fwdbwd_\d+gpu", name):
                eff = base["time_per_step_s"] / r["time_per_step_s"]
                print(
                    f"  {r['world']} GPUs: {r['time_per_step_s']:.3f} s/step, efficiency {eff:.0%}"
                )
    for name, r in results.items():
        m = re.fullmatch(r"5b_step_(\d+)f_cp(\d+)", name)
        ref = results.get(f"5b_fwd_{m.group(1)}f_cp1") if m else None
        if ref:
            rel = abs(r["first_loss"] - ref["first_loss"]) / abs(ref["first_loss"])
            print(
                f"{m.group(1)} frames, cp {m.group(2)}: loss {r['first_loss']:.6f} vs unsplit "
                f"{ref['first_loss']:.6f} (relative difference {rel:.1e}), "
                f"{r['samples_per_s']:.3f} samples/s"
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
