"""How a built model runs fast and on many GPUs, applied from outside and in place (the model
code knows nothing of it): activation checkpointing, compile, attention kernels
(:mod:`.runtime`), FSDP2 (:mod:`.fsdp`), Ulysses context parallelism (:mod:`.context_parallel`),
process groups (:mod:`.distributed`) and all of them together for ``scale/``
(:mod:`.parallelize`)."""

from cogvx_mini.parallel.context_parallel import (
    UlyssesAttention,
    all_gather,
    all_to_all,
    apply_context_parallel,
    shard_sizes,
)
from cogvx_mini.parallel.distributed import Dist, init_distributed
from cogvx_mini.parallel.fsdp import apply_fsdp, load_full_state_dict, materialize
from cogvx_mini.parallel.parallelize import build_transformer, parallelize
from cogvx_mini.parallel.runtime import (
    CHECKPOINTING,
    apply_activation_checkpointing,
    apply_compile,
    use_attention_backend,
)

__all__ = [
    "CHECKPOINTING",
    "Dist",
    "UlyssesAttention",
    "all_gather",
    "all_to_all",
    "apply_activation_checkpointing",
    "apply_compile",
    "apply_context_parallel",
    "apply_fsdp",
    "build_transformer",
    "init_distributed",
    "load_full_state_dict",
    "materialize",
    "parallelize",
    "shard_sizes",
    "use_attention_backend",
]
