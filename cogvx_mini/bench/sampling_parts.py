"""The parts of ``python -m cogvx_mini.bench sampling`` beyond one timed step:

- ``breakdown``: where one compiled CFG step's time goes, from the profiler's kernel times grouped
  into attention, matmuls, fused element-wise work (norms, modulation, RoPE, GELU) and the rest;
  the gap between the step's wall time and the kernels' sum is time the GPU waited on the host.
- ``loop``: measured 50-step DDIM runs (not 50 x one step): lossless (compiled, batched CFG) and
  the fast preset replaying the skip pattern the step cache chooses on the shipped mini model.
- ``t5``: T5-XXL (random weights, bf16) encoding a prompt and the negative with its blocks
  streamed from the CPU, as ``scale/sample.py --offload sequential`` runs it: peak GPU memory.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from cogvx_mini.bench.transformer import _free, _peak_memory, _sync, timed
from cogvx_mini.diffusion import cfg_predictor, ddim_sample
from cogvx_mini.inference.step_cache import FAST_CACHE_THRESHOLD, StepCache

ELEMENTWISE = "element-wise (fused norm, modulation, RoPE, GELU)"

# Substrings of kernel (CUDA) or operator (CPU) names, checked in this order.
KERNEL_KINDS = {
    "attention": ("sdpa", "flash", "fmha", "attention", "scaled_dot_product"),
    "matmul": ("gemm", "nvjet", "xmma", "cutlass", "wgmma", "aten::mm", "aten::addmm", "aten::bmm"),
    ELEMENTWISE: (
        "triton", "elementwise", "vectorized", "reduce", "norm", "copy", "cat", "gelu", "mul",
        "add",
    ),
}  # fmt: skip

# Prefixes of the pointwise, reduction and persistent-reduction kernels Inductor generates. Their
# names list the aten operators fused into them, attention's included where a norm is fused with
# the reshape into attention's layout
# (``triton_per_fused__scaled_dot_product_cudnn_attention_native_layer_norm_...``), so they are
# recognised before the substrings. Inductor's templates (``triton_tem_``) are not among them.
INDUCTOR_FUSED = ("triton_poi_", "triton_red_", "triton_per_")

# Short names of the kinds, for tables and figures.
SHORT_KINDS = {"attention": "attention", "matmul": "matmul", ELEMENTWISE: "element-wise",
               "other": "other"}  # fmt: skip


def kernel_kind(name: str) -> str:
    """The category of a kernel or operator ``name``: an Inductor-generated fused kernel
    (:data:`INDUCTOR_FUSED`) is element-wise, else the first of :data:`KERNEL_KINDS` with a
    substring in the name, else ``"other"``."""
    lowered = name.lower()
    if lowered.startswith(INDUCTOR_FUSED):
        return ELEMENTWISE
    for kind, needles in KERNEL_KINDS.items():
        if any(needle in lowered for needle in needles):
            return kind
    return "other"


def breakdown(step, device: torch.device, top: int = 4) -> dict:
    """Profile one call of ``step()`` (after a warm-up call): seconds per :func:`kernel_kind`,
    the step's wall time, and the ``top`` kernels of each kind (to check the grouping)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with torch.no_grad():
        step()
        _sync(device)
        with profile(activities=[activity]) as prof:
            wall = timed(step, device, warmup=0, repeats=1)
    seconds: dict[str, float] = {}
    kernels: dict[str, list[tuple[float, str]]] = {}
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if cuda and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        spent = _self_time_us(event, cuda) / 1e6
        kind = kernel_kind(event.key)
        seconds[kind] = seconds.get(kind, 0.0) + spent
        kernels.setdefault(kind, []).append((spent, event.key[:120]))
        times[event.key] = times.get(event.key, 0.0) + spent
    busy = sum(seconds.values())
    return {
        "wall_s": wall,
        "kernel_s": seconds,
        "host_gap_s": max(wall - busy, 0.0) if cuda else None,
        "top_kernels": {k: [n for _, n in sorted(v)[::-1][:top]] for k, v in kernels.items()},
        "kernel_times_s": times,  # every kernel's seconds, so the grouping can be redone
    }


def regrouped(row: dict) -> tuple[dict[str, float], bool]:
    """Seconds per :data:`SHORT_KINDS` name of a ``breakdown`` row, and whether they were
    recomputed with today's :func:`kernel_kind` from the row's per-kernel times (rows written
    before those were recorded keep the grouping they were measured with)."""
    times = row.get("kernel_times_s")
    seconds = dict.fromkeys(SHORT_KINDS.values(), 0.0)
    if times is None:
        for kind, spent in row["kernel_s"].items():
            seconds[SHORT_KINDS[kind]] += spent
        return seconds, False
    for name, spent in times.items():
        seconds[SHORT_KINDS[kernel_kind(name)]] += spent
    return seconds, True


def misgrouped(row: dict) -> list[tuple[str, str, str]]:
    """Kernels a ``breakdown`` row lists (``top_kernels``) under another kind than
    :func:`kernel_kind` gives them now: ``(name, listed kind, kind now)`` in short names."""
    return [(name, SHORT_KINDS[listed], SHORT_KINDS[kernel_kind(name)])
            for listed, names in row["top_kernels"].items() for name in names
            if kernel_kind(name) != listed]  # fmt: skip


def parts_by_model(path) -> dict[str, dict[str, dict]]:
    """The rows of a ``--parts breakdown loop`` JSON (``book/benchmarks/h200_sampling_parts.json``)
    by model and mode: ``{"5b": {"breakdown": row, "50 steps lossless": row, ...}, ...}``."""
    by_model: dict[str, dict[str, dict]] = {}
    for row in json.loads(Path(path).read_text())["rows"]:
        by_model.setdefault(row["model"], {})[row["mode"]] = row
    return by_model


def _self_time_us(event, cuda: bool) -> float:
    if not cuda:
        return event.self_cpu_time_total
    # renamed from self_cuda_time_total in newer torch; both exist on the versions we run
    return getattr(event, "self_device_time_total", None) or event.self_cuda_time_total


class ReplayCache(StepCache):
    """A :class:`StepCache` that skips on a given ``pattern`` (one bool per call) instead of
    measuring: the mini model's skip decisions replayed at full size, for timing."""

    def __init__(self, model: torch.nn.Module, pattern: list[bool]) -> None:
        super().__init__(model, threshold=float("inf"))
        self.pattern = list(pattern)

    def _skip(self, first_residual: torch.Tensor) -> bool:
        return self._rest_residual is not None and self.pattern[len(self.skipped)]


def mini_skip_pattern(device: torch.device, steps: int, prompts: int = 32) -> list[bool]:
    """The fast preset's per-step skip decisions on the shipped mini model (``prompts`` seen
    prompts in one batch, ``steps`` DDIM steps)."""
    from cogvx_mini.pipeline import evaluation_prompts, generate, load_mini

    pipe = load_mini()
    pipe.transformer.to(device)
    pipe.vae.to(device)
    cache = StepCache(pipe.transformer, FAST_CACHE_THRESHOLD)
    chosen = evaluation_prompts("train", prompts)
    generate(chosen, replace(pipe, transformer=cache), steps=steps, progress=False)
    return list(cache.skipped)


def loop_rows(model, inputs, args, pattern: list[bool], steps: int) -> list[dict]:
    """Measured ``steps``-step DDIM runs (CFG 6, one batch-2 forward per step) of ``model``
    (compiled already), lossless and with ``pattern`` replayed: seconds, peak memory."""
    device = torch.device(args.device)
    noise, text, negative = inputs.x[:1], inputs.text[:1], inputs.text[1:]
    rows = []
    for name, denoiser in (("50 steps lossless", model), ("50 steps fast", None)):
        denoiser = denoiser or ReplayCache(model, pattern)

        def run(count: int, denoiser=denoiser) -> None:
            if isinstance(denoiser, ReplayCache):
                denoiser.reset()
            predict = cfg_predictor(denoiser, text, negative)
            ddim_sample(predict, noise, count, 6.0, progress=False)

        run(2)  # compiles for the sampler's integer timesteps
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            seconds = timed(lambda run=run: run(steps), device, warmup=0, repeats=1)
        row = {"mode": name, "steps": steps, "seconds": seconds, "peak_gb": _peak_memory(device)}
        if isinstance(denoiser, ReplayCache):
            row["skipped"] = sum(pattern)
        print(f"  {name:<28} {seconds:6.1f} s  peak {row['peak_gb']:5.1f} GB", flush=True)
        rows.append(row)
    _free(device)
    return rows


def t5_streamed_row(device: torch.device, text_len: int = 226) -> dict:
    """T5-XXL's encoder (random weights, bf16, CPU) with its blocks streamed to ``device``:
    seconds and peak GPU memory of encoding a prompt and the negative (``[2, text_len]`` ids)."""
    from transformers import T5Config, T5EncoderModel

    from cogvx_mini.inference.memory import stream_blocks

    config = T5Config(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                      feed_forward_proj="gated-gelu", vocab_size=32128)  # fmt: skip
    torch.manual_seed(0)
    model = T5EncoderModel(config).to(torch.bfloat16).eval().requires_grad_(False)
    stream_blocks(model, model.encoder.block, device)
    ids = torch.randint(0, config.vocab_size, (2, text_len), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    with torch.no_grad():
        seconds = timed(lambda: model(input_ids=ids).last_hidden_state, device, 1, 1)
    row = {"mode": "T5-XXL, sequential", "seconds": seconds, "peak_gb": _peak_memory(device),
           "params_b": params}  # fmt: skip
    print(f"  {row['mode']:<28} {seconds:6.2f} s  peak {row['peak_gb']:5.2f} GB", flush=True)
    model = None
    _free(device)
    return row
