"""Benchmark: cogvx_mini's transformer against diffusers' CogVideoXTransformer3DModel.

    python -m cogvx_mini.bench transformer --device cuda            # 2B, 5B: bf16, 13x60x90 + 226
    python -m cogvx_mini.bench transformer --device cuda --compile  # torch.compile each block, both
    python -m cogvx_mini.bench transformer --device cpu             # smoke test at mini size

For each model: diffusers is built with random weights, cogvx_mini gets the *same* weights through
``transformer_state_dict_from_diffusers`` (the printed relative error checks the conversion at
full size), then each is timed alone: forward (no grad) and a training step (forward + backward
of a mean-square loss, activation checkpointing on), median of ``--repeats`` runs after
``--warmup`` runs, with CUDA synchronised; peak memory is that of the training step. Throughput
is model FLOPs (``forward_flops``; a training step counts 3x, recomputation not counted) over
time; MFU divides by the bf16 matmul peak measured in the same run (an 8192³ matmul).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cogvx_mini.parallel.runtime import (
    apply_activation_checkpointing,
    apply_compile,
    use_attention_backend,
)
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig, forward_flops
from cogvx_mini.weights.diffusers import transformer_state_dict_from_diffusers

CONFIGS = {
    "mini": TransformerConfig.mini,
    "2b": TransformerConfig.cogvideox_2b,
    "5b": TransformerConfig.cogvideox_5b,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of an ``n³`` matmul: the practical peak that MFU is measured against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, warmup=3, repeats=repeats)
    return 2 * n**3 / seconds


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_memory(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")


def _measure(
    name: str,
    forward: Callable[[], torch.Tensor],
    params: list[torch.nn.Parameter],
    device: torch.device,
    args: argparse.Namespace,
    flops: int,
    peak: float,
) -> dict:
    """Forward and training-step timings of one implementation."""
    row: dict = {"impl": name}
    try:
        with torch.no_grad():
            row["forward_s"] = timed(forward, device, args.warmup, args.repeats)
        row["forward_tflops"] = flops / row["forward_s"] / 1e12
        row["forward_mfu"] = flops / row["forward_s"] / peak

        def step() -> None:
            forward().float().square().mean().backward()
            for p in params:
                p.grad = None

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row["train_s"] = timed(step, device, args.warmup, args.repeats)
        row["train_peak_gb"] = _peak_memory(device)
        row["train_tflops"] = 3 * flops / row["train_s"] / 1e12
        row["train_mfu"] = 3 * flops / row["train_s"] / peak
    except Exception as error:  # keep the other numbers when one variant fails (e.g. OOM)
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    for p in params:
        p.grad = None
    _free(device)  # after the except block, whose traceback holds the failed run's tensors
    print(_format(row), flush=True)
    return row


def _format(row: dict) -> str:
    if "error" in row and "forward_s" not in row:
        return f"  {row['impl']:<40} failed: {row['error']}"
    parts = [f"  {row['impl']:<40} forward {row['forward_s']:.3f} s"]
    parts.append(f"({row['forward_tflops']:.3g} TFLOP/s, MFU {row['forward_mfu']:.0%})")
    if "train_s" in row:
        parts.append(f"| train step {row['train_s']:.3f} s ({row['train_tflops']:.3g} TFLOP/s,")
        parts.append(f"MFU {row['train_mfu']:.0%}) peak {row['train_peak_gb']:.1f} GB")
    if "error" in row:
        parts.append(f"| failed: {row['error']}")
    return " ".join(parts)


def _diffusers_rope(model, frames: int, height: int, width: int, device=None):
    """Rotary tables as diffusers' CogVideoX pipelines compute them for latents ``frames x
    height x width`` (None for sincos models): 1.0 squeezes the grid into the training grid's
    crop, 1.5 (temporal patch) slices a larger table."""
    c = model.config
    if not c.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p = c.patch_size
    grid, base = (height // p, width // p), (c.sample_height // p, c.sample_width // p)
    if c.patch_size_t is None:
        crops = get_resize_crop_region_for_grid(grid, base[1], base[0])
        return get_3d_rotary_pos_embed(c.attention_head_dim, crops, grid, frames, device=device)
    return get_3d_rotary_pos_embed(
        c.attention_head_dim, None, grid, -(-frames // c.patch_size_t), grid_type="slice",
        max_size=base, device=device,
    )  # fmt: skip


class Workload:
    """One model's benchmark inputs: latents ``[1, C, T, H, W]``, text ``[1, L, D_text]``, a
    timestep ``[1]``, and the FLOPs of one forward pass."""

    def __init__(self, name: str, config: TransformerConfig, args: argparse.Namespace) -> None:
        self.device, self.dtype = torch.device(args.device), getattr(torch, args.dtype)
        frames, height, width, text_len = args.frames, args.height, args.width, args.text_len
        if name == "mini":
            frames, height, width, text_len = 5, 8, 8, 16
        self.frames, self.height, self.width = frames, height, width
        self.flops = forward_flops(config, frames, height, width, text_len)["total"]
        print(
            f"\n{name}: latents 1x{config.in_channels}x{frames}x{height}x{width} + {text_len} "
            f"text tokens, {self.flops / 1e12:.3g} TFLOP per forward, {args.dtype}",
            flush=True,
        )
        g = torch.Generator(device="cpu").manual_seed(0)
        latents = torch.randn(1, config.in_channels, frames, height, width, generator=g)
        text = torch.randn(1, text_len, config.text_dim, generator=g)
        self.latents, self.text = (
            latents.to(self.device, self.dtype),
            text.to(self.device, self.dtype),
        )
        self.steps = torch.tensor([500.0], device=self.device)


def bench_model(name: str, args: argparse.Namespace, peak: float) -> list[dict]:
    """Rows of one model (``mini``, ``2b``, ``5b``): the check against diffusers, diffusers'
    timings, then cogvx_mini's for each attention backend and checkpointing mode."""
    config = CONFIGS[name]()
    work = Workload(name, config, args)
    theirs, ours = _same_weights(config, work, args)
    rows: list[dict] = []
    if theirs is not None:
        rows += _bench_diffusers(theirs, ours, work, args, peak)
        del theirs
        _free(work.device)
    rows += _bench_ours(ours, work, args, peak)
    del ours
    _free(work.device)
    for row in rows:
        row["model"] = name
    _print_speedups(rows)
    return rows


def _same_weights(config: TransformerConfig, work: Workload, args: argparse.Namespace):
    """``(diffusers model or None, cogvx_mini model)``: random weights from diffusers, converted,
    so that both compute the same function (cogvx_mini's own initialisation without diffusers)."""
    theirs, state = None, None
    try:
        from diffusers import CogVideoXTransformer3DModel
    except ImportError:
        CogVideoXTransformer3DModel = None  # noqa: N806
        print("  diffusers is not installed: timing cogvx_mini only")
    if CogVideoXTransformer3DModel is not None and not args.no_diffusers:
        torch.manual_seed(0)
        with torch.device(work.device):
            theirs = CogVideoXTransformer3DModel(**config.to_diffusers_config()).to(work.dtype)
        state = transformer_state_dict_from_diffusers(theirs.state_dict(), config)
    with torch.device("meta"):
        ours = CogVideoXTransformer(config)
    if state is not None:
        ours.load_state_dict(state, assign=True)
    else:
        ours = ours.to_empty(device=work.device).to(work.dtype)
        ours.reset_parameters()
    return theirs, ours


def _bench_diffusers(theirs, ours, work: Workload, args: argparse.Namespace, peak: float):
    """The relative error cogvx_mini vs diffusers, then diffusers timed alone (checkpointed)."""
    device, rows = work.device, []
    theirs_latents = work.latents.transpose(1, 2).contiguous()
    rope = _diffusers_rope(theirs, work.frames, work.height, work.width, device)

    def theirs_forward() -> torch.Tensor:
        return theirs(
            theirs_latents, work.text, work.steps, image_rotary_emb=rope, return_dict=False
        )[0]

    with torch.no_grad():
        a = ours(work.latents, work.text, work.steps).float()
        b = theirs_forward().transpose(1, 2).float()
    error = ((a - b).norm() / b.norm()).item()
    print(f"  same weights, relative error cogvx_mini vs diffusers: {error:.2e}", flush=True)
    rows.append({"impl": "check", "relative_error": error})
    del a, b
    # time diffusers alone: ours shares its tensors except the fused qkv
    ours_cpu = {k: v.cpu() for k, v in ours.state_dict().items() if ".attn.qkv." in k}
    ours.load_state_dict(ours_cpu, strict=False, assign=True)
    _free(device)
    theirs.train()
    theirs.enable_gradient_checkpointing()
    params = list(theirs.parameters())
    if args.compile:
        for block in theirs.transformer_blocks:
            block.compile()
    for backend in args.diffusers_backends:
        label = f"diffusers {backend}" + (" compiled" if args.compile else "")
        with _sdpa_backend(backend, device):
            rows.append(_measure(label, theirs_forward, params, device, args, work.flops, peak))
    ours.load_state_dict({k: v.to(device) for k, v in ours_cpu.items()}, strict=False, assign=True)
    return rows


def _bench_ours(ours, work: Workload, args: argparse.Namespace, peak: float) -> list[dict]:
    """cogvx_mini timed for each attention backend and checkpointing mode, applied in place."""
    rows = []
    ours.train()
    params = list(ours.parameters())
    for p in params:
        p.requires_grad_(True)
    if args.compile:
        apply_compile(ours)
    for backend in args.backends:
        use_attention_backend(ours, backend)
        for mode in args.checkpointing:
            apply_activation_checkpointing(ours, mode, args.checkpoint_every)
            label = f"cogvx_mini {backend} ckpt={mode}" + (" compiled" if args.compile else "")

            def ours_forward() -> torch.Tensor:
                return ours(work.latents, work.text, work.steps)

            rows.append(_measure(label, ours_forward, params, work.device, args, work.flops, peak))
    return rows


def _print_speedups(rows: list[dict]) -> None:
    """Each cogvx_mini variant against the first diffusers row (eager or compiled alike)."""
    base = next((r for r in rows if r["impl"].startswith("diffusers") and "train_s" in r), None)
    if base is None:
        return
    print(f"  speed-ups against {base['impl']}:")
    for row in rows:
        if row["impl"].startswith("cogvx_mini") and "train_s" in row:
            forward = base["forward_s"] / row["forward_s"]
            train = base["train_s"] / row["train_s"]
            row["forward_speedup"], row["train_speedup"] = forward, train
            print(f"    {row['impl']:<40} forward {forward:.2f}x, training step {train:.2f}x")


@contextlib.contextmanager
def _sdpa_backend(backend: str, device: torch.device):
    if backend == "auto" or device.type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[backend]
    with sdpa_kernel(chosen):
        yield


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cogvx_mini.bench transformer")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=None, help="comma list of mini,2b,5b")
    parser.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--frames", type=int, default=13, help="latent frames")
    parser.add_argument("--height", type=int, default=60, help="latent height")
    parser.add_argument("--width", type=int, default=90, help="latent width")
    parser.add_argument("--text-len", type=int, default=226)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="auto", help="cogvx_mini attention: auto,cudnn,...")
    parser.add_argument("--diffusers-backends", default="auto", help="SDPA backends for diffusers")
    parser.add_argument("--checkpointing", default="none,selective,full", help="training modes")
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (both)")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--matmul", type=int, default=None, help="size of the peak matmul")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.models = (args.models or ("2b,5b" if cuda else "mini")).split(",")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.matmul = args.matmul or (8192 if cuda else 512)
    for name in ("backends", "diffusers_backends", "checkpointing"):
        setattr(args, name, getattr(args, name).split(","))
    unknown = [m for m in args.models if m not in CONFIGS]
    if unknown:
        parser.error(f"expected models among {list(CONFIGS)}, got {unknown}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    try:
        import diffusers

        versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    except ImportError:
        versions = f"torch {torch.__version__}, no diffusers"
    print(f"device: {name} ({versions})")
    peak = matmul_peak(device, dtype, args.matmul)
    print(f"{args.matmul}³ {args.dtype} matmul: {peak / 1e12:.3g} TFLOP/s (the MFU peak)")
    rows: list[dict] = [{"model": "-", "impl": "matmul", "tflops": peak / 1e12, "device": name}]
    for model in args.models:
        rows += bench_model(model, args, peak)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
