"""FSDP2 sharding of a ``CogVideoXTransformer``, and filling a sharded model with weights.

``torch.distributed.fsdp.fully_shard`` shards every parameter, gradient and Adam state over
*all* ranks: each block is one unit (all-gathered just before it runs, freed after), the rest
(embeddings, final norm, projection) is the root unit, the model itself. Mixed precision computes
in bf16 and keeps fp32 master weights; gradients are reduce-scattered in fp32. The model keeps its
class, its forward and its parameter names, so a sharded model's full state dict is a plain one.
"""

from __future__ import annotations

import warnings
import zlib

import torch
from torch import nn


def apply_fsdp(
    model: nn.Module, mesh, mixed_precision: str = "bf16", cpu_offload: bool = False
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 over ``mesh``: one unit per block, then the root.

    ``mixed_precision="bf16"``: bf16 parameters in compute, fp32 gradient reduction, fp32 master
    weights (the sharded parameters stay fp32). On CPU (gloo) use ``"fp32"``. ``cpu_offload``
    keeps parameters, gradients and optimiser state on the CPU. Returns ``model``.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if mixed_precision not in ("bf16", "fp32"):
        raise ValueError(f"mixed_precision: expected 'bf16' or 'fp32', got {mixed_precision!r}")
    # Blocks return (video, text) as slices of one tensor; nothing modifies them in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    if mixed_precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    kwargs = {"mesh": mesh, "mp_policy": mp}
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    blocks = model.blocks
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again first in the backward pass: keep them.
        fully_shard(block, reshard_after_forward=i < len(blocks) - 1, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model


@torch.no_grad()
def materialize(
    model: nn.Module, device: torch.device, seed: int, independent: bool = False
) -> None:
    """Allocate a model built on the ``meta`` device (and sharded) on ``device`` and initialise it
    there: every rank allocates only its shards, so no host ever holds the whole 5B model.

    Default: LayerNorms and linears get their defaults, then the model's own ``reset_parameters``
    (AdaLN-zero), through DTensor's sharded random generator (values depend on the sharding,
    unlike a CPU initialisation). ``independent=True`` (benchmarks, and always with ``device``
    ``cpu``, i.e. FSDP's CPU offload): each parameter is drawn whole from a generator seeded by
    its name — N(0, 0.02), LayerNorm weights 1, biases 0 — and this rank keeps its shard, so the
    weights are the same for any number of GPUs and any parallel layout. Not the model's
    initialisation: fine-tune from weights (``train.init_from``) rather than train from scratch
    with CPU offload.
    """
    model.to_empty(device=device)
    if device.type != "cpu" and not independent:
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        model.reset_parameters()
        return
    from torch.distributed.tensor import distribute_tensor

    draw_on = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    for name, param in model.named_parameters():
        full = torch.empty(param.shape, device=draw_on)
        if name.endswith("bias"):
            full.zero_()
        elif param.ndim == 1:
            full.fill_(1.0)
        else:
            g = torch.Generator(device=draw_on).manual_seed(
                seed * 1_000_003 + zlib.crc32(name.encode())
            )
            full.normal_(0.0, 0.02, generator=g)
        if hasattr(param, "to_local"):
            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(local.to_local())
        else:
            param.copy_(full)


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full cogvx_mini transformer state dict held by rank 0 (others pass ``{}``) into the
    sharded model: rank 0 broadcasts, each rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state, options=options)
