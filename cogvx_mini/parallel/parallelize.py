"""The transformer that ``scale/`` trains and benchmarks: built, then parallelised in place.

:func:`parallelize` applies a config's ``parallel`` section to a built model (torchtitan's
``parallelize`` style): activation checkpointing, Ulysses context parallelism, compiled blocks,
FSDP2 — each a function of this package that changes how the model runs, not its code or its
parameter names. :func:`build_transformer` builds the model for a ``ScaleConfig`` on the CPU or
the ``meta`` device, parallelises it and fills it with weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from cogvx_mini.parallel.context_parallel import apply_context_parallel
from cogvx_mini.parallel.distributed import Dist
from cogvx_mini.parallel.fsdp import apply_fsdp, load_full_state_dict, materialize
from cogvx_mini.parallel.runtime import apply_activation_checkpointing, apply_compile


def parallelize(model: nn.Module, parallel, d: Dist) -> nn.Module:
    """Apply ``parallel`` (a ``ScaleConfig.parallel`` section) to ``model`` on ``d``'s layout.

    Checkpointing every ``checkpoint_every``-th block, context parallelism over ``d.cp_group``
    when ``d.cp > 1``, ``torch.compile`` per block if ``compile``, then FSDP2 over all ranks
    (bf16 mixed precision and CPU offload on CUDA only). Returns ``model``, changed in place.
    """
    apply_activation_checkpointing(
        model, parallel.activation_checkpointing, parallel.checkpoint_every
    )
    if d.cp > 1:
        apply_context_parallel(model, d.cp_group)
    if parallel.compile:
        apply_compile(model)
    cuda = d.device.type == "cuda"
    precision = parallel.mixed_precision if cuda else "fp32"
    offload = parallel.cpu_offload and cuda  # CPU runs hold everything on the CPU anyway
    return apply_fsdp(model, d.mesh, precision, offload)


def build_transformer(
    config,
    d: Dist,
    on_meta: bool | None = None,
    independent_init: bool = False,
    adapter=None,
) -> tuple[nn.Module, object]:
    """The ``CogVideoXTransformer`` of ``config`` (a ``ScaleConfig``), parallelised; returns
    ``(model, transformer_config)``.

    On the CPU every rank builds the whole model from the same seed (so runs on any number of
    processes start from identical weights). On CUDA it is built on the ``meta`` device, sharded,
    then allocated and initialised shard by shard on the GPU. ``train.init_from`` loads a
    cogvx_mini state dict or a diffusers folder (on CUDA read by rank 0 only, then broadcast).
    ``on_meta`` forces one path or the other (the benchmark uses the meta path on the CPU too);
    ``independent_init``: weights that do not depend on the sharding (see ``materialize``).
    ``adapter`` (e.g. scale/train.py's LoRA) changes the model before it is sharded: its
    ``add(model)`` runs before ``parallelize``, ``after_materialize(model)`` after the meta path
    drew the weights, and its ``load_init(model, path, d)`` replaces the meta path's loading.
    """
    from cogvx_mini.transformer import CogVideoXTransformer
    from cogvx_mini.weights.loading import load_transformer_weights

    tcfg = config.transformer_config()
    on_meta = d.device.type == "cuda" if on_meta is None else on_meta
    torch.manual_seed(config.train.seed)
    with torch.device("meta" if on_meta else "cpu"):
        model = CogVideoXTransformer(tcfg)
    if config.train.init_from and not on_meta:
        load_transformer_weights(model, config.train.init_from)
    if adapter is not None:
        adapter.add(model)  # FSDP2 shards the parameters a module has when it is wrapped
    parallelize(model, config.parallel, d)
    if on_meta:
        offload = config.parallel.cpu_offload and d.device.type == "cuda"
        materialize(model, torch.device("cpu") if offload else d.device, config.train.seed,
                    independent_init)  # fmt: skip
        if adapter is not None:
            adapter.after_materialize(model)
        if config.train.init_from and adapter is not None:
            adapter.load_init(model, config.train.init_from, d)
        elif config.train.init_from:
            load_full_state_dict(model, _rank0_init_weights(model, config.train.init_from, d))
    return model, tcfg


def _rank0_init_weights(model: nn.Module, path: str, d: Dist) -> dict[str, torch.Tensor]:
    """Rank 0 reads and checks ``path``; the others get ``{}``. An error stops every rank (none
    waits forever for a broadcast)."""
    from cogvx_mini.weights.loading import check_state_dict, read_init_weights

    state, error = {}, [None]
    if d.is_main:
        try:
            state = read_init_weights(path)
            check_state_dict(model, state, path)
        except (OSError, ValueError) as err:
            error = [f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise ValueError(error[0])
    return state
