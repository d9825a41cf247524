"""Running a large model on a small GPU: weights streamed block by block, or stored in 8 bits.

:func:`stream_blocks` keeps the weights of a ``ModuleList``'s blocks in pinned CPU memory and
copies each block to the GPU just before it runs (the next one is prefetched on a side stream,
so the copy overlaps the current block's compute), then drops the GPU copy: the GPU holds two
blocks and the activations. :func:`quantize_weights` stores every ``nn.Linear`` weight in int8
or float8 with per-channel scales (torchao).
"""

from __future__ import annotations

import torch
from torch import nn

QUANTIZE_MODES = ("int8", "fp8")


class _BlockStream:
    """The hooks of :func:`stream_blocks`: each block's CPU weights and the copy ahead."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device) -> None:
        self.blocks, self.device = list(blocks), device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.cpu = [
            {name: t.detach().cpu().pin_memory() if self.stream else t.detach().cpu()
             for name, t in _tensors(block)}
            for block in self.blocks
        ]  # fmt: skip
        self.ready: dict[int, torch.cuda.Event | None] = {}
        for block in self.blocks:
            _assign(block, {name: t.to("meta") for name, t in _tensors(block)})

    def load(self, i: int) -> None:
        """Start copying block ``i`` to the device (on the side stream)."""
        if i >= len(self.blocks) or i in self.ready:
            return
        if self.stream is None:
            _assign(self.blocks[i], {n: t.to(self.device) for n, t in self.cpu[i].items()})
            self.ready[i] = None
            return
        with torch.cuda.stream(self.stream):
            on_device = {n: t.to(self.device, non_blocking=True) for n, t in self.cpu[i].items()}
            event = torch.cuda.Event()
            event.record(self.stream)
        _assign(self.blocks[i], on_device)
        self.ready[i] = event

    def before(self, block: nn.Module, args: tuple) -> None:
        i = self.blocks.index(block)
        self.load(i)
        event = self.ready[i]
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
            for _, t in _tensors(block):  # the compute stream now uses memory made on another
                t.record_stream(torch.cuda.current_stream(self.device))
        self.load(i + 1)

    def after(self, block: nn.Module, args: tuple, output) -> None:
        i = self.blocks.index(block)
        _assign(block, {name: t.to("meta") for name, t in _tensors(block)})
        del self.ready[i]


def _tensors(module: nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def _assign(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Point each parameter/buffer of ``module`` named in ``tensors`` at that tensor."""
    for name, value in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[leaf] = value


def _move_except(model: nn.Module, prefix: str, device: torch.device) -> None:
    """Move every parameter and buffer of ``model`` outside the submodule ``prefix`` to
    ``device``, keeping tied weights tied (T5's embedding is shared by two modules)."""
    moved: dict[int, torch.Tensor] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name == prefix or name.startswith(prefix + "."):
            continue
        for table, wrap in ((module._parameters, True), (module._buffers, False)):
            for leaf, t in list(table.items()):
                if t is not None:
                    if id(t) not in moved:
                        new = t.detach().to(device)
                        moved[id(t)] = nn.Parameter(new, requires_grad=False) if wrap else new
                    table[leaf] = moved[id(t)]


def stream_blocks(model: nn.Module, blocks: nn.ModuleList, device: str | torch.device) -> nn.Module:
    """Put ``model`` on ``device`` except ``blocks`` (one of its ``ModuleList``s), whose weights
    stay on the CPU and are streamed to ``device`` block by block for each forward. Inference
    only (the weights are frozen); the outputs are unchanged. Returns ``model``."""
    device = torch.device(device)
    prefix = next((name for name, m in model.named_modules() if m is blocks), None)
    if prefix is None:
        raise ValueError("blocks: expected a ModuleList of model, got one it does not hold")
    stream = _BlockStream(blocks, device)
    _move_except(model, prefix, device)
    for block in blocks:
        block.register_forward_pre_hook(stream.before)
        block.register_forward_hook(stream.after)
    blocks._stream = stream  # keep the CPU copies alive with the model
    return model


def quantize_weights(model: nn.Module, mode: str) -> nn.Module:
    """Weight-only quantization of every ``nn.Linear`` of ``model`` in place (torchao):
    ``"int8"`` (per-channel int8 weights, bf16 matmuls) or ``"fp8"`` (float8 e4m3 weights and
    matmuls, per-row scales; needs a GPU with float8, e.g. H100/H200). Halves the weights'
    memory against bf16; a lossy choice."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize: expected one of {QUANTIZE_MODES}, got {mode!r}")
    try:
        from torchao.quantization import quantize_
    except ImportError as err:
        raise ImportError("quantize: needs torchao (pip install 'cogvx-mini[quantize]')") from err
    quantize_(model, _torchao_config(mode))
    return model


def _torchao_config(mode: str):
    import torchao.quantization as q

    if mode == "int8":
        return q.Int8WeightOnlyConfig()
    # float8 weights *and* float8 matmuls (activations scaled per row on the fly): half the
    # memory and the fp8 tensor cores' rate, not only the memory.
    return q.Float8DynamicActivationFloat8WeightConfig(granularity=q.PerRow())
