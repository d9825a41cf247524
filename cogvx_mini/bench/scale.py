"""Training-step benchmark of scale/: time per step, MFU and peak memory, on one GPU or many.

    python -m cogvx_mini.bench scale --device cuda                            # 2B, full step
    python -m cogvx_mini.bench scale --config cogvideox_5b --mode fwdbwd
    python -m cogvx_mini.bench scale --config cogvideox_5b --set parallel.cpu_offload=true
    torchrun --nproc_per_node=8 -m cogvx_mini.bench scale --config cogvideox_5b \
        --set train.global_batch=8
    torchrun --nproc_per_node=4 -m cogvx_mini.bench scale --config cogvideox_5b \
        --set parallel.cp=4 --frames 97                                      # context parallel
    python -m cogvx_mini.bench scale --device cpu                        # CPU smoke, tiny

The model is the same FSDP2-sharded, checkpointed, (optionally compiled) ``ParallelTransformer``
that ``scale/train.py`` trains, built on the ``meta`` device and initialised shard by shard on the
GPU, with random latents and text of the config's first bucket. Modes: ``step`` (forward,
backward, gradient clipping, AdamW step), ``fwdbwd`` (forward and backward), ``fwd`` (no grad).
MFU counts the model's matmul FLOPs (3x the forward for a training step; recomputation under
activation checkpointing is not counted) against ``train.peak_tflops`` per GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cogvx_mini.bench.transformer import matmul_peak
from cogvx_mini.parallel.scale_parallel import init_distributed
from cogvx_mini.training.scale_config import CONFIGS, check_world, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=None, help="default: 2B on CUDA, tiny on CPU"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--mode", choices=("step", "fwdbwd", "fwd"), default="step")
    parser.add_argument("--frames", type=int, default=None, help="pixel frames (4k+1)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (at least 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    default = "cogvideox_2b" if device == "cuda" else "tiny"
    path = args.config or CONFIGS / f"{default}.yaml"
    config = load_config(path, args.set)
    frames, height, width = config.data.buckets[0]
    frames, height, width = args.frames or frames, args.height or height, args.width or width
    config.data.buckets = [[frames, height, width]]
    d = init_distributed(config.parallel.cp, device)
    try:
        return run(config, d, args, path)
    finally:
        dist.destroy_process_group()


def run(config, d, args, path) -> dict:
    from cogvx_mini.transformer import count_parameters, forward_flops
    from scale.train import build

    wrapper, tcfg = build(config, d, on_meta=True, independent_init=True)
    dp = check_world(config, d.world, tcfg.num_heads, tcfg.patch_size)
    micro = config.train.micro_batch
    frames, height, width = config.data.buckets[0]
    lat = (tcfg.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    text_len = config.data.text_length
    g = torch.Generator().manual_seed(d.dp_rank)
    latents = torch.randn(micro, *lat, generator=g).to(d.device)
    text = torch.randn(micro, text_len, tcfg.text_dim, generator=g).to(d.device)
    timesteps = torch.randint(0, 1000, (micro,), generator=g).to(d.device)
    target = torch.randn_like(latents)
    o = config.optim
    optimizer = torch.optim.AdamW(
        wrapper.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
    )
    cuda = d.device.type == "cuda"

    def one_step() -> torch.Tensor:
        if args.mode == "fwd":
            with torch.no_grad():
                return (wrapper(latents, text, timesteps).float() - target).pow(2).mean()
        loss = (wrapper(latents, text, timesteps).float() - target).pow(2).mean()
        loss.backward()
        if args.mode == "step":
            torch.nn.utils.clip_grad_norm_(wrapper.parameters(), o.grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # The loss before any update, averaged over ranks: the same for every parallel layout with
    # the same data-parallel degree (the weights and each dp rank's inputs do not depend on it).
    first_loss = one_step().reshape(1)
    dist.all_reduce(first_loss)
    first_loss = first_loss.item() / d.world
    for _ in range(args.warmup - 1):
        one_step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        dist.barrier()
        tick = time.perf_counter()
        one_step()
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        times.append(time.perf_counter() - tick)
    peak = torch.tensor(torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0, device=d.device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    per_step = statistics.median(times)
    flops = forward_flops(tcfg, *lat[1:], text_len, micro)["total"] * dp  # samples of one step
    flops *= 1 if args.mode == "fwd" else 3
    tflops_per_gpu = flops / per_step / d.world / 1e12
    peak_tflops = config.train.peak_tflops
    # The practical peak of this very GPU, measured now (the datasheet's is rarely reached).
    matmul_tflops = matmul_peak(d.device, torch.bfloat16, 8192) / 1e12 if cuda else None
    n_video = lat[1] * (lat[2] // tcfg.patch_size) * (lat[3] // tcfg.patch_size)
    result = {
        "config": str(path),
        "mode": args.mode,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "world": d.world,
        "dp": dp,
        "cp": d.cp,
        "parameters": count_parameters(tcfg),
        "video": [frames, height, width],
        "tokens_per_sample": n_video + text_len,
        "micro_batch": micro,
        "activation_checkpointing": config.parallel.activation_checkpointing,
        "compile": config.parallel.compile,
        "cpu_offload": config.parallel.cpu_offload,
        "first_loss": first_loss,
        "time_per_step_s": per_step,
        "times_s": times,
        "samples_per_s": dp * micro / per_step,
        "tflops_per_gpu": tflops_per_gpu,
        "mfu": tflops_per_gpu / peak_tflops if peak_tflops and cuda else None,
        "matmul_peak_tflops": matmul_tflops,
        "mfu_vs_measured_matmul": tflops_per_gpu / matmul_tflops if cuda else None,
        "peak_memory_gib": float(peak) if cuda else None,
    }
    if d.is_main:
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (CPU)"
        if cuda:
            mfu += (
                f" of {peak_tflops:.0f} (datasheet), {result['mfu_vs_measured_matmul']:.1%} "
                f"of the {matmul_tflops:.0f} TFLOP/s measured for an 8192³ bf16 matmul"
            )
        mem = f"{result['peak_memory_gib']:.1f} GiB" if cuda else "n/a (CPU)"
        print(
            f"{Path(path).stem} {args.mode} {frames}x{height}x{width} "
            f"({result['tokens_per_sample']} tokens) on {d.world} x {result['device']} "
            f"(dp {dp} x cp {d.cp}, micro-batch {micro}, "
            f"ckpt {config.parallel.activation_checkpointing}, compile {config.parallel.compile}, "
            f"offload {config.parallel.cpu_offload}): {per_step:.3f} s/step, "
            f"{tflops_per_gpu:.1f} TFLOP/s per GPU, MFU {mfu}, peak memory {mem}, "
            f"first loss {first_loss:.6f}",
            flush=True,
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
