"""Sampling on several GPUs: the two CFG halves on two ranks, video tokens split (Ulysses).

A layout ``cfg x ulysses`` runs on ``cfg * ulysses`` ranks. Rank ``r`` has
``cfg_rank = r // ulysses`` and ``cp_rank = r % ulysses``: consecutive ranks share one forward
(Ulysses, talking on every layer: keep them inside a node) and the two Ulysses groups compute the
conditional (``cfg_rank`` 0) and unconditional (1) predictions, exchanged once per step. Every
rank ends each step with the same latents, so any rank can decode.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cogvx_mini.parallel.context_parallel import apply_context_parallel
from cogvx_mini.parallel.distributed import init_distributed


@dataclass(frozen=True)
class SamplingLayout:
    """``cfg`` (1, or 2: the CFG halves on two ranks) times ``ulysses`` (ranks per forward)."""

    cfg: int = 1
    ulysses: int = 1

    @property
    def world(self) -> int:
        return self.cfg * self.ulysses

    @classmethod
    def parse(cls, text: str) -> SamplingLayout:
        """``"none"``, ``"cfg"``, ``"ulysses=K"`` or ``"cfg,ulysses=K"``."""
        match = re.fullmatch(r"(none|cfg|ulysses=(\d+)|cfg,ulysses=(\d+))", text.strip())
        if match is None or int(match.group(2) or match.group(3) or 1) < 1:
            raise ValueError(
                f"parallel: expected none, cfg, ulysses=K or cfg,ulysses=K (K >= 1), got {text!r}"
            )
        return cls(2 if text.startswith("cfg") else 1, int(match.group(2) or match.group(3) or 1))

    def check(self, heads: int, guidance: float) -> None:
        """Raise unless this layout fits a model of ``heads`` heads sampled at ``guidance``."""
        if heads % self.ulysses:
            raise ValueError(
                f"parallel: ulysses={self.ulysses} must divide the model's {heads} attention heads"
            )
        if self.cfg == 2 and guidance <= 1:
            raise ValueError(f"parallel: cfg needs guidance > 1 (two predictions), got {guidance}")


@dataclass
class SamplingRanks:
    """This process's place in a :class:`SamplingLayout`."""

    layout: SamplingLayout
    rank: int
    device: torch.device
    cfg_rank: int
    cfg_group: dist.ProcessGroup | None
    cp_group: dist.ProcessGroup | None


def init_sampling(layout: SamplingLayout, device: torch.device) -> SamplingRanks:
    """Join the ranks of ``layout`` (under ``torchrun``). A layout of one rank in a plain process
    needs no process group: it runs on ``device`` as it is."""
    from torch.distributed.device_mesh import init_device_mesh

    if layout.world == 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SamplingRanks(layout, 0, device, 0, None, None)
    d = init_distributed(cp=layout.ulysses, device=device.type)
    if d.world != layout.world:
        raise ValueError(
            f"parallel: the layout cfg={layout.cfg} x ulysses={layout.ulysses} needs "
            f"{layout.world} ranks, got {d.world} (torchrun --nproc_per_node={layout.world})"
        )
    cfg_group = None
    if layout.cfg > 1:
        names = ("cfg", "cp")
        mesh = init_device_mesh(d.device.type, (layout.cfg, layout.ulysses), mesh_dim_names=names)
        cfg_group = mesh.get_group("cfg")
    return SamplingRanks(layout, d.rank, d.device, d.rank // layout.ulysses, cfg_group, d.cp_group)


def parallelize_for_sampling(model: nn.Module, ranks: SamplingRanks) -> nn.Module:
    """Ulysses over ``ranks.cp_group`` when the layout splits tokens; else ``model`` as it is."""
    return apply_context_parallel(model, ranks.cp_group) if ranks.cp_group is not None else model


def cfg_parallel_predictor(model, text: torch.Tensor, negative: torch.Tensor, ranks: SamplingRanks):
    """A ``model_fn`` for :func:`~cogvx_mini.diffusion.ddim_sample` returning ``(v_c, v_u)``:
    this rank's CFG half computes one of them (``text`` or ``negative``, ``[B, L, D]``) and the
    pair is exchanged with the other half (one all-gather of ``[B, C, T, H, W]`` per step)."""
    mine = text if ranks.cfg_rank == 0 else negative

    def predict(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = model(x, mine, t).float().contiguous()
        pair = [torch.empty_like(v) for _ in range(2)]
        dist.all_gather(pair, v, group=ranks.cfg_group)
        return pair[0], pair[1]

    return predict
