"""LoRA against full fine-tuning: one training step of CogVideoX-5B, its time and peak memory.

    python -m cogvx_mini.bench lora --device cuda --out lora.json        # 5B, 49 x 480 x 720
    python -m cogvx_mini.bench lora --size tiny --device cpu --out /tmp/lora.json   # CPU smoke

The model is ``TransformerConfig.cogvideox_5b()`` with random weights (N(0, 0.02), so every path
carries gradient) in ``--dtype`` (bf16 on CUDA), fed what a precomputed latent cache holds at
49 x 480 x 720: latents ``[1, 16, 13, 60, 90]``, T5 text ``[1, 226, 4096]`` (random tensors). One
step is the forward, an MSE against a random target, the backward and an AdamW step, with
activation checkpointing as ``scale/`` applies it (``--checkpointing``, the 5B config's
``selective`` by default). Rows: LoRA of each ``--ranks`` (default 64 and 128) on the blocks'
``qkv``, ``out``, ``fc1``, ``fc2`` (:mod:`cogvx_mini.training.lora`; factors in ``--lora-dtype``,
weights frozen), then the full fine-tune (every weight, its gradient and both AdamW states in
``--dtype``). Each row: ``--warmup`` steps, then the median of ``--repeats`` timed steps
(``torch.cuda.synchronize`` around each); peak memory is ``torch.cuda.max_memory_allocated``
over the row. A row that runs out of memory is recorded as such and the next one runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cogvx_mini.parallel.fsdp import materialize
from cogvx_mini.parallel.runtime import CHECKPOINTING, apply_activation_checkpointing
from cogvx_mini.training.lora import LoraSettings, add_lora, unload_lora
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# --size -> (model config, latents (C, T, H, W), text tokens, default ranks)
SIZES = {
    "5b": (TransformerConfig.cogvideox_5b(), (16, 13, 60, 90), 226, (64, 128)),
    "tiny": (
        TransformerConfig.mini(num_layers=2, num_heads=2, head_dim=16, text_dim=32, max_text_len=8),
        (16, 2, 4, 4),
        8,
        (4, 8),
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="5b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="bf16 on CUDA, else fp32")
    p.add_argument("--lora-dtype", choices=list(DTYPES), default=None, help="default: --dtype")
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="5b: 64 128; tiny: 4 8")
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tune row")
    p.add_argument("--checkpointing", choices=CHECKPOINTING, default="selective")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def build_model(config: TransformerConfig, device: torch.device, dtype: torch.dtype, mode: str):
    """A random ``CogVideoXTransformer`` in ``dtype`` on ``device``, built on ``meta`` (no host
    copy of 5B weights), initialised per parameter by name (``materialize(independent=True)``)
    and checkpointed with ``mode``."""
    with torch.device("meta"):
        model = CogVideoXTransformer(config).to(dtype)
    materialize(model, device, seed=0, independent=True)
    return apply_activation_checkpointing(model, mode).train()


def random_batch(config, latent_shape, text_len, device, dtype) -> tuple[tuple, torch.Tensor]:
    """``((latents [1, C, T, H, W], text [1, L, D_text], timesteps [1]), target)``, seeded."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, *latent_shape, generator=g)
    text = torch.randn(1, text_len, config.text_dim, generator=g)
    inputs = (latents.to(device, dtype), text.to(device, dtype), torch.tensor([500], device=device))
    return inputs, torch.randn(1, *latent_shape, generator=g).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, inputs, target, args, device) -> dict:
    """Warm-up then timed steps (forward, backward, AdamW on the trainable parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # fused AdamW on CUDA: one kernel, no foreach copies of 5B parameters
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")

    def step() -> float:
        loss = (model(*inputs).float() - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    first_loss = step()
    for _ in range(args.warmup - 1):
        step()
    times = []
    for _ in range(args.repeats):
        _sync(device)
        tick = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - tick)
    return {"first_loss": first_loss, "times_s": times, "step_s": statistics.median(times)}


def run_row(model, rank: int | None, inputs, target, args, device) -> dict:
    """One row: LoRA of ``rank`` (``None``: every weight trains); the model is left as it was."""
    lora_dtype = DTYPES[args.lora_dtype] if args.lora_dtype else None
    if rank is not None:
        add_lora(model, LoraSettings(rank=rank))
        if lora_dtype is not None:  # e.g. fp32 factors on bf16 weights, as diffusers' trainers
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(lora_dtype)
    else:
        model.requires_grad_(True)
    row = {"run": f"LoRA r={rank}" if rank else "full fine-tune", "rank": rank}
    row["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        row.update(time_steps(model, inputs, target, args, device))
    except torch.cuda.OutOfMemoryError as err:  # a RuntimeError subclass, on CPU builds too
        row.update(oom=True, error=str(err).splitlines()[0])
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    # Back to the plain frozen model for the next row; the optimiser's states went with it.
    model.zero_grad(set_to_none=True)
    unload_lora(model, merge=False)
    model.requires_grad_(False)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def report(rows: list[dict], meta: dict) -> str:
    """The results as a table (one line per row)."""
    lines = [
        f"{meta['size']} {meta['video']} ({meta['tokens']} tokens) on {meta['device']}, "
        f"{meta['dtype']}, checkpointing {meta['checkpointing']}",
        f"{'run':<16} {'trainable':>15} {'step s':>8} {'peak GiB':>9}",
    ]
    for r in rows:
        step = "OOM" if r.get("oom") else f"{r['step_s']:.3f}"
        peak = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") is not None else "n/a"
        lines.append(f"{r['run']:<16} {r['trainable_parameters']:>15,} {step:>8} {peak:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.warmup < 1 or args.repeats < 1:
        raise SystemExit("error: --warmup and --repeats: expected at least 1")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    config, latent_shape, text_len, default_ranks = SIZES[args.size]
    torch.manual_seed(0)
    model = build_model(config, device, dtype, args.checkpointing).requires_grad_(False)
    inputs, target = random_batch(config, latent_shape, text_len, device, dtype)
    runs = [*(args.ranks or default_ranks)] + ([] if args.no_full else [None])
    rows = [run_row(model, rank, inputs, target, args, device) for rank in runs]
    grid = model.grid((1, *latent_shape))
    meta = {
        "size": args.size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "lora_dtype": args.lora_dtype or str(dtype).removeprefix("torch."),
        "video": [4 * (latent_shape[1] - 1) + 1, 8 * latent_shape[2], 8 * latent_shape[3]],
        "latents": list(latent_shape),
        "tokens": grid[0] * grid[1] * grid[2] + text_len,
        "checkpointing": args.checkpointing,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    print(report(rows, meta), flush=True)
    result = {**meta, "rows": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
