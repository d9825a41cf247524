"""Benchmark: one denoising step of full-size sampling in every mode of scale/sample.py, beside
diffusers' transformer, in one run.

    python -m cogvx_mini.bench sampling --device cuda [--models 5b 2b] [--out FILE.json]
    python -m cogvx_mini.bench sampling --device cpu --models mini   # smoke test
    python -m cogvx_mini.bench sampling --device cuda --models 1.5-5b --backends auto --parts

Random weights made by diffusers and converted (the same function for both), bf16, 49x480x720
(13x60x90 latents + 226 text tokens; 1.5-5b: 81x768x1360, 22x96x170), CFG 6 (two predictions
per step). A step is timed as the median of ``--repeats`` after ``--warmup``, CUDA
synchronised; 50 steps = 50 x that (the DDIM update itself is a few element-wise ops). Peak
memory is allocated memory during the step, weights included. Modes: ``diffusers`` (their
transformer, the batch-2 forward their pipeline runs), ``separate`` (two batch-1 forwards:
scale/sample.py before batching), ``batched`` (one batch-2 forward), ``compiled <backend>``
(batched, blocks compiled: the lossless default, per SDPA backend), ``cached step`` (a step whose
later blocks the step cache skips), ``fp8`` / ``int8`` (torchao, compiled), ``sequential`` (blocks
streamed from the CPU). ``--parts`` adds (default: all) the memory modes, a profiled
``breakdown`` of a compiled step, measured 50-step ``loop`` runs (lossless; fast, with the mini
model's skip pattern) and a streamed ``t5`` encoder (:mod:`cogvx_mini.bench.sampling_parts`).
VAE decoding is timed by ``python -m cogvx_mini.bench vae``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cogvx_mini.bench.sampling_parts import (
    breakdown,
    loop_rows,
    mini_skip_pattern,
    t5_streamed_row,
)
from cogvx_mini.bench.transformer import CONFIGS, _free, _peak_memory, _sdpa_backend, timed
from cogvx_mini.inference.memory import quantize_weights, stream_blocks
from cogvx_mini.inference.step_cache import StepCache
from cogvx_mini.parallel.runtime import apply_compile, use_attention_backend
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig, forward_flops
from cogvx_mini.weights.diffusers import transformer_state_dict_from_diffusers

STEPS = 50
PARTS = ("memory", "breakdown", "loop", "t5")


MODELS = {**CONFIGS, "1.5-5b": TransformerConfig.cogvideox1_5_5b}
# Latent frames, height, width and text tokens of each model's default video: 49x480x720, and
# 1.5's 81x768x1360 (21 latent frames, padded to 22 for its temporal patch, as its pipeline does).
SIZES = {"mini": (3, 8, 8, 16), "2b": (13, 60, 90, 226), "5b": (13, 60, 90, 226)}
SIZES["1.5-5b"] = (22, 96, 170, 226)


class Inputs:
    """A CFG step's inputs: latents ``[2, C, T, H, W]`` (the same twice), text ``[2, L, D]``
    (prompt, negative), timesteps ``[2]``."""

    def __init__(self, name: str, config, args: argparse.Namespace) -> None:
        frames, height, width, text_len = SIZES[name]
        self.shape = (frames, height, width, text_len)
        g = torch.Generator().manual_seed(0)
        device, dtype = torch.device(args.device), getattr(torch, args.dtype)
        x = torch.randn(1, config.in_channels, frames, height, width, generator=g)
        text = torch.randn(2, text_len, config.text_dim, generator=g)
        self.x = torch.cat([x, x]).to(device, dtype)
        self.text = text.to(device, dtype)
        self.t = torch.tensor([999.0, 999.0], device=device)
        self.flops = 2 * forward_flops(config, frames, height, width, text_len)["total"]


def _row(name: str, step, args, inputs: Inputs) -> dict:
    """Time ``step()`` (one CFG step) and record its peak memory; errors become a row too."""
    device = torch.device(args.device)
    row: dict = {"mode": name}
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            row["step_s"] = timed(step, device, args.warmup, args.repeats)
        row["steps_50_s"] = STEPS * row["step_s"]
        row["peak_gb"] = _peak_memory(device)
        row["tflops"] = inputs.flops / row["step_s"] / 1e12
        print(f"  {name:<28} step {row['step_s']:.3f} s  x50 {row['steps_50_s']:6.1f} s  "
              f"peak {row['peak_gb']:5.1f} GB  {row['tflops']:.0f} TFLOP/s")  # fmt: skip
    except Exception as error:  # keep the other rows (e.g. an unsupported kernel)
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        print(f"  {name:<28} failed: {row['error']}", flush=True)
    _free(device)
    return row


def _diffusers_rows(config, inputs: Inputs, args) -> tuple[list[dict], dict]:
    """diffusers' batch-2 forward; returns its rows and the converted state dict (CPU)."""
    from diffusers import CogVideoXTransformer3DModel

    from cogvx_mini.bench.transformer import _diffusers_rope

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(device):
        theirs = CogVideoXTransformer3DModel(**config.to_diffusers_config()).to(dtype).eval()
    frames, height, width, _ = inputs.shape
    rope = _diffusers_rope(theirs, frames, height, width, device)
    x = inputs.x.transpose(1, 2).contiguous()

    def step():
        return theirs(x, inputs.text, inputs.t, image_rotary_emb=rope, return_dict=False)[0]

    rows = [_row("diffusers", step, args, inputs)]
    state = transformer_state_dict_from_diffusers(theirs.state_dict(), config)
    state = {k: v.cpu() for k, v in state.items()}
    theirs = None  # frees the GPU copy (the closure holds the name, not the model)
    _free(device)
    return rows, state


def _model(config, state: dict, device: str | torch.device) -> CogVideoXTransformer:
    with torch.device("meta"):
        model = CogVideoXTransformer(config)
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, assign=True)
    return model.eval().requires_grad_(False)


def _step(model, inputs: Inputs, separate: bool = False):
    """One CFG step's predictions: one batch-2 forward, or two batch-1 forwards."""
    if not separate:
        return lambda: model(inputs.x, inputs.text, inputs.t)
    x, t = inputs.x[:1], inputs.t[:1]
    return lambda: (model(x, inputs.text[:1], t), model(x, inputs.text[1:], t))


def _eager_rows(config, state, inputs: Inputs, args) -> list[dict]:
    model = _model(config, state, args.device)
    rows = [
        _row("separate", _step(model, inputs, separate=True), args, inputs),
        _row("batched", _step(model, inputs), args, inputs),
    ]
    apply_compile(model)
    for backend in args.backends:
        use_attention_backend(model, backend)
        with _sdpa_backend(backend, torch.device(args.device)):
            rows.append(_row(f"compiled {backend}", _step(model, inputs), args, inputs))
    use_attention_backend(model, args.backends[0])
    cache = StepCache(model, threshold=float("inf"))
    cache(inputs.x, inputs.text, inputs.t)  # a full step; every later call skips
    rows.append(_row("cached step (skipped)", _step(cache, inputs), args, inputs))
    if "breakdown" in args.parts:
        rows.append({"mode": "breakdown", **breakdown(_step(model, inputs), args.device_)})
        print(f"  breakdown {json.dumps(rows[-1]['kernel_s'])}", flush=True)
    if "loop" in args.parts:
        rows += loop_rows(model, inputs, args, args.skip_pattern, STEPS)
    return rows


def _memory_rows(config, state, inputs: Inputs, args) -> list[dict]:
    rows = []
    for mode in ("fp8", "int8"):
        try:
            model = quantize_weights(_model(config, state, args.device), mode)
            apply_compile(model)
            rows.append(_row(f"{mode} compiled", _step(model, inputs), args, inputs))
            step = _step(model, inputs, separate=True)
            rows.append(_row(f"{mode} compiled, separate", step, args, inputs))
        except Exception as error:
            rows.append({"mode": mode, "error": f"{type(error).__name__}: {error}"[:200]})
            print(f"  {mode:<28} failed: {rows[-1]['error']}")
        model = step = None
        _free(torch.device(args.device))
    model = _model(config, state, "cpu")
    stream_blocks(model, model.blocks, args.device)
    rows.append(_row("sequential, separate", _step(model, inputs, separate=True), args, inputs))
    rows.append(_row("sequential", _step(model, inputs), args, inputs))
    return rows


def bench(name: str, args: argparse.Namespace) -> list[dict]:
    config = MODELS[name]()
    inputs = Inputs(name, config, args)
    frames, height, width, text_len = inputs.shape
    print(f"\n{name}: CFG step on 2x{config.in_channels}x{frames}x{height}x{width} + {text_len} "
          f"text tokens, {inputs.flops / 1e12:.0f} TFLOP, {args.dtype}", flush=True)  # fmt: skip
    rows, state = _diffusers_rows(config, inputs, args)
    rows += _eager_rows(config, state, inputs, args)
    if "memory" in args.parts:
        rows += _memory_rows(config, state, inputs, args)
    base = rows[0].get("step_s")
    for row in rows:
        row["model"] = name
        if base and "step_s" in row:
            row["speedup_vs_diffusers"] = base / row["step_s"]
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="*", choices=list(MODELS), default=["5b", "2b"])
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--backends", nargs="+", default=["auto", "flash", "cudnn", "efficient"])
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS),
                   help="beyond one timed step per mode (module docstring)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="outputs/bench_sampling.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    args.device_ = torch.device(args.device)
    if "loop" in args.parts:
        args.skip_pattern = mini_skip_pattern(args.device_, STEPS)
        print(f"fast preset on the mini model: {sum(args.skip_pattern)} of {STEPS} steps skipped")
    rows = [_t5_row(args.device_)] if "t5" in args.parts else []
    _write(args, rows)
    for name in args.models:
        rows += bench(name, args)
        _write(args, rows)  # after each model: a later failure keeps the earlier rows
    print(f"wrote {args.out}")
    return rows


def _write(args: argparse.Namespace, rows: list[dict]) -> None:
    result = {"device": _device_name(args), "rows": rows}
    if "loop" in args.parts:
        result["mini_skip_pattern"] = args.skip_pattern
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


def _t5_row(device: torch.device) -> dict:
    try:
        return t5_streamed_row(device)
    except Exception as error:  # e.g. transformers missing: keep the transformer rows
        print(f"  T5 row failed: {type(error).__name__}: {error}", flush=True)
        return {"mode": "T5-XXL, sequential", "error": f"{type(error).__name__}: {error}"[:200]}


def _device_name(args) -> str:
    if torch.device(args.device).type == "cuda":
        return torch.cuda.get_device_name()
    return "cpu"
