"""This process's place among many: ``torch.distributed`` set up, and the ``(dp, cp)`` layout.

Ranks ``d * cp .. d * cp + cp - 1`` form one context-parallel group (put it inside a node: it
talks on every layer); the ``dp`` groups see different samples. A plain process (no
``torchrun``) is a world of one, so the same code path runs in tests and on one GPU.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place: world size and rank, the (dp, cp) coordinates, device, groups."""

    world: int
    rank: int
    local_rank: int
    device: torch.device
    dp: int
    cp: int
    dp_rank: int
    cp_rank: int
    mesh: object  # DeviceMesh over all ranks (1-D), used by FSDP
    cp_group: dist.ProcessGroup | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cp: int = 1, device: str | None = None) -> Dist:
    """Initialise torch.distributed (NCCL on CUDA, gloo on CPU) and the ``(dp, cp)`` layout.

    Works under ``torchrun`` (reads RANK / WORLD_SIZE / LOCAL_RANK) and as a plain process (a
    world of one, so the same code path runs in tests and on one GPU).
    """
    from torch.distributed.device_mesh import init_device_mesh

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % cp:
        raise ValueError(f"parallel.cp={cp} must divide the world size, got {world} ranks")
    dp = world // cp
    mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("shard",))
    cp_group = None
    if cp > 1:
        mesh2 = init_device_mesh(dev.type, (dp, cp), mesh_dim_names=("dp", "cp"))
        cp_group = mesh2.get_group("cp")
    return Dist(world, rank, local_rank, dev, dp, cp, rank // cp, rank % cp, mesh, cp_group)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
