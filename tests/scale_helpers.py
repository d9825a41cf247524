"""Helpers for the scale/ tests: run a function in N gloo processes, run torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn, args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    fn(rank, world, *args)
    # No rank tears its gloo connections down while another still uses them (that aborts the
    # other process: "terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def run_gloo(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` processes joined by a gloo group."""
    mp.spawn(_worker, args=(world, free_port(), fn, args), nprocs=world, join=True)


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=nproc scale/train.py *args`` on the CPU; raises on failure."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += ["--master_port", str(free_port()), str(ROOT / "scale" / "train.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out
