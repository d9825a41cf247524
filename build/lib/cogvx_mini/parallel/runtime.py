"""Speed choices applied to a built ``CogVideoXTransformer`` from outside, in place.

The model's code is the plain computation; these functions change *how* it runs, never what it
computes, and keep every parameter name (state dicts, optimiser states and DCP checkpoints are
keyed as the plain model's):

- :func:`apply_activation_checkpointing`: ``none``, ``full`` (a block keeps only its inputs and
  recomputes the rest in the backward pass) or ``selective`` (it also keeps the attention
  kernel's output, the most expensive thing to recompute) on every ``every``-th block. The
  checkpoint sits inside the block's call, so FSDP's per-block hooks and the context-parallel
  collectives inside attention run (again) where they belong.
- :func:`apply_compile`: ``torch.compile`` each block in place (one compilation serves all
  identical blocks).
- :func:`use_attention_backend`: one SDPA kernel in every block (the fastest differs between GPUs).

``tests/test_parallel_runtime.py`` checks each against the plain eager model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cogvx_mini.attention import sdpa_core
from cogvx_mini.parallel.context_parallel import UlyssesAttention

CHECKPOINTING = ("none", "full", "selective")


def _attention_kernel_ops() -> set:
    """The aten (and flash-attn) attention kernels whose outputs selective checkpointing keeps."""
    names = (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    )
    ops = {getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)}
    flash = getattr(torch.ops, "flash_attn", None)
    if flash is not None and hasattr(flash, "_flash_attn_forward"):
        ops.add(flash._flash_attn_forward.default)
    return ops


def _selective_context():
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    keep = _attention_kernel_ops()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def _checkpointed_forward(block: nn.Module, mode: str) -> Callable[..., Any]:
    """``block``'s own forward run under ``torch.utils.checkpoint`` while gradients are on."""
    plain = type(block).forward.__get__(block)
    kwargs = {"context_fn": _selective_context} if mode == "selective" else {}

    def forward(*args: Any, **block_kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return plain(*args, **block_kwargs)
        return checkpoint(plain, *args, use_reentrant=False, **kwargs, **block_kwargs)

    return forward


def apply_activation_checkpointing(
    model: nn.Module, mode: str = "full", every: int = 1
) -> nn.Module:
    """Checkpoint every ``every``-th block of ``model.blocks`` (``mode``: ``none``, ``full``,
    ``selective``); a later call replaces an earlier one. Returns ``model``, changed in place.

    Each chosen block's ``forward`` becomes its class's forward wrapped in a non-reentrant
    checkpoint (an instance attribute: parameters and their names are untouched).
    """
    if mode not in CHECKPOINTING:
        raise ValueError(f"mode: expected one of {CHECKPOINTING}, got {mode!r}")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every: expected an int >= 1, got {every!r}")
    for i, block in enumerate(model.blocks):
        block.__dict__.pop("forward", None)  # back to the plain forward of the block's class
        if mode != "none" and i % every == 0:
            block.forward = _checkpointed_forward(block, mode)
    return model


def apply_compile(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` each block of ``model.blocks`` in place (``nn.Module.compile``: the
    state-dict names are unchanged). ``compile_kwargs`` go to ``torch.compile``."""
    for block in model.blocks:
        block.compile(**compile_kwargs)
    return model


def use_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Run every block's attention product on one SDPA ``backend`` (``auto``, ``flash``,
    ``cudnn``, ``efficient``, ``math``; see :func:`cogvx_mini.attention.sdpa_core`). Under
    context parallelism the kernel inside each :class:`UlyssesAttention` core is replaced."""
    core = sdpa_core(backend)
    for block in model.blocks:
        if isinstance(block.attn.core, UlyssesAttention):
            block.attn.core.inner = core
        else:
            block.attn.core = core
    return model
