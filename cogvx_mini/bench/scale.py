"""Training-step benchmark of scale/: time per step, MFU and peak memory, on one GPU or many.

    python -m cogvx_mini.bench scale --device cuda                            # 2B, full step
    python -m cogvx_mini.bench scale --config cogvideox_5b --mode fwdbwd
    python -m cogvx_mini.bench scale --config cogvideox_5b --set parallel.cpu_offload=true
    torchrun --nproc_per_node=8 -m cogvx_mini.bench scale --config cogvideox_5b \
        --set train.global_batch=8
    torchrun --nproc_per_node=4 -m cogvx_mini.bench scale --config cogvideox_5b \
        --set parallel.cp=4 --frames 97                                      # context parallel
    python -m cogvx_mini.bench scale --device cpu                        # CPU smoke, tiny

The model is the same FSDP2-sharded, checkpointed, (optionally compiled and context-parallel)
transformer that ``scale/train.py`` trains (``cogvx_mini.parallel.build_transformer``), built on
the ``meta`` device and initialised shard by shard on the GPU, with random latents and text of
the config's first bucket. Modes: ``step`` (forward, backward, gradient clipping, AdamW step),
``fwdbwd`` (forward and backward), ``fwd`` (no grad).
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
from cogvx_mini.parallel import build_transformer, init_distributed
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
    """Build the model, time ``args.steps`` steps after ``args.warmup``; the result as a dict."""
    model, tcfg = build_transformer(config, d, on_meta=True, independent_init=True)
    dp = check_world(config, d.world, tcfg.num_heads, tcfg.patch_size)
    inputs = _random_batch(config, tcfg, d)
    one_step = _step_function(model, config.optim, inputs, args.mode)
    first_loss, times, peak = _timed_steps(one_step, args, d)
    result = _result(config, tcfg, d, args, path, dp, first_loss, times, peak)
    if d.is_main:
        _report(result, config, args, path)
    return result


def _latent_shape(config, tcfg) -> tuple[int, int, int, int]:
    """``(C, T, H, W)`` latents of the config's (first) bucket."""
    from cogvx_mini.vae import VAEConfig

    _, _, t, h, w = VAEConfig.cogvideox().latent_shape((1, 3, *config.data.buckets[0]))
    return tcfg.in_channels, t, h, w


def _random_batch(config, tcfg, d) -> dict[str, torch.Tensor]:
    """One micro-batch: random latents, text, timesteps and target, different per dp rank."""
    micro, text_len = config.train.micro_batch, config.data.text_length
    g = torch.Generator().manual_seed(d.dp_rank)
    latents = torch.randn(micro, *_latent_shape(config, tcfg), generator=g)
    text = torch.randn(micro, text_len, tcfg.text_dim, generator=g)
    timesteps = torch.randint(0, 1000, (micro,), generator=g)
    batch = {"latents": latents, "text": text, "timesteps": timesteps}
    batch = {k: v.to(d.device) for k, v in batch.items()}
    batch["target"] = torch.randn_like(batch["latents"])
    return batch


def _step_function(model, o, batch: dict[str, torch.Tensor], mode: str):
    """``() -> loss``: the forward (``fwd``), forward and backward (``fwdbwd``) or whole
    training step (``step``: also gradient clipping and an AdamW step)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
    )
    inputs = (batch["latents"], batch["text"], batch["timesteps"])

    def one_step() -> torch.Tensor:
        if mode == "fwd":
            with torch.no_grad():
                return (model(*inputs).float() - batch["target"]).pow(2).mean()
        loss = (model(*inputs).float() - batch["target"]).pow(2).mean()
        loss.backward()
        if mode == "step":
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return one_step


def _timed_steps(one_step, args, d) -> tuple[float, list[float], float]:
    """``(first loss averaged over ranks, seconds per timed step, peak GiB over ranks)``."""
    cuda = d.device.type == "cuda"
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
    return first_loss, times, float(peak)


def _result(config, tcfg, d, args, path, dp, first_loss, times, peak) -> dict:
    from cogvx_mini.transformer import count_parameters, forward_flops

    cuda = d.device.type == "cuda"
    micro, text_len = config.train.micro_batch, config.data.text_length
    lat = _latent_shape(config, tcfg)
    per_step = statistics.median(times)
    flops = forward_flops(tcfg, *lat[1:], text_len, micro)["total"] * dp  # samples of one step
    flops *= 1 if args.mode == "fwd" else 3
    tflops_per_gpu = flops / per_step / d.world / 1e12
    peak_tflops = config.train.peak_tflops
    # The practical peak of this very GPU, measured now (the datasheet's is rarely reached).
    matmul_tflops = matmul_peak(d.device, torch.bfloat16, 8192) / 1e12 if cuda else None
    n_video = lat[1] * (lat[2] // tcfg.patch_size) * (lat[3] // tcfg.patch_size)
    p = config.parallel
    return {
        "config": str(path),
        "mode": args.mode,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "world": d.world,
        "dp": dp,
        "cp": d.cp,
        "parameters": count_parameters(tcfg),
        "video": list(config.data.buckets[0]),
        "tokens_per_sample": n_video + text_len,
        "micro_batch": micro,
        "activation_checkpointing": p.activation_checkpointing,
        "compile": p.compile,
        "cpu_offload": p.cpu_offload,
        "first_loss": first_loss,
        "time_per_step_s": per_step,
        "times_s": times,
        "samples_per_s": dp * micro / per_step,
        "tflops_per_gpu": tflops_per_gpu,
        "mfu": tflops_per_gpu / peak_tflops if peak_tflops and cuda else None,
        "matmul_peak_tflops": matmul_tflops,
        "mfu_vs_measured_matmul": tflops_per_gpu / matmul_tflops if cuda else None,
        "peak_memory_gib": peak if cuda else None,
    }


def _report(result: dict, config, args, path) -> None:
    """Print the result in one line (and write it to ``args.json``)."""
    cuda = result["device"] != "cpu"
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (CPU)"
    if cuda:
        mfu += (
            f" of {config.train.peak_tflops:.0f} (datasheet), "
            f"{result['mfu_vs_measured_matmul']:.1%} of the "
            f"{result['matmul_peak_tflops']:.0f} TFLOP/s measured for an 8192³ bf16 matmul"
        )
    mem = f"{result['peak_memory_gib']:.1f} GiB" if cuda else "n/a (CPU)"
    frames, height, width = result["video"]
    p = config.parallel
    print(
        f"{Path(path).stem} {args.mode} {frames}x{height}x{width} "
        f"({result['tokens_per_sample']} tokens) on {result['world']} x {result['device']} "
        f"(dp {result['dp']} x cp {result['cp']}, micro-batch {result['micro_batch']}, "
        f"ckpt {p.activation_checkpointing}, compile {p.compile}, "
        f"offload {p.cpu_offload}): {result['time_per_step_s']:.3f} s/step, "
        f"{result['tflops_per_gpu']:.1f} TFLOP/s per GPU, MFU {mfu}, peak memory {mem}, "
        f"first loss {result['first_loss']:.6f}",
        flush=True,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
