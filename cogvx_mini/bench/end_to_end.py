"""Benchmark: scale/sample.py end to end against diffusers' pipeline, on a random full-size folder.

    python -m cogvx_mini.bench end_to_end --device cuda --variant 1.5-5b [--steps 4]
    python -m cogvx_mini.bench end_to_end --device cpu --variant tiny     # smoke test

Writes a CogVideoX folder in the diffusers layout with random weights (the variant's transformer,
the released VAE's shape, and a one-layer T5 of the real width: the text encoder is not what is
measured), then samples one prompt with ``CogVideoXPipeline`` (VAE tiling on, diffusers' advice at
these sizes) and with ``scale.sample.sample`` (its CLI defaults: batched CFG, blocks compiled on
CUDA, tiled decode). Each is timed from its folder to the decoded video, weights loading
included; ours runs twice and the second (compiled code warm) is reported beside the first.
Peak GPU memory is allocated memory over the whole run. The videos' mean difference is printed
too; the two decoders tile differently (ours whole-width rows), so it is not zero even in
float32 (untiled, the two agree to 1e-5: tests/test_sample.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cogvx_mini.bench.transformer import _free, _peak_memory
from cogvx_mini.transformer import TransformerConfig

PROMPT = "a small red circle moves left while a large blue square moves up"
WORDS = "a small large red green blue circle square triangle moves left right up down while"
# Each variant: its transformer, video size (frames, height, width), the VAE's scaling factor.
VARIANTS = {
    "2b": (TransformerConfig.cogvideox_2b, (49, 480, 720), 1.15258426),
    "5b": (TransformerConfig.cogvideox_5b, (49, 480, 720), 0.7),
    "1.5-5b": (TransformerConfig.cogvideox1_5_5b, (81, 768, 1360), 0.7),
    "tiny": (
        lambda: TransformerConfig.mini(
            num_layers=2, text_dim=16, max_text_len=226, rope_base_grid=(4, 6)
        ),
        (9, 32, 48),
        0.7,
    ),
}


def word_t5(d_model: int, num_layers: int = 1, seed: int = 0):
    """A word-level T5 tokenizer over the toy world's words (appends ``</s>``) and a random T5
    encoder of width ``d_model``: ``(tokenizer, T5EncoderModel)``."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS.split())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    heads = max(d_model // 64, 4)
    config = transformers.T5Config(
        vocab_size=len(vocab), d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model,
        num_layers=num_layers, num_heads=heads,
    )  # fmt: skip
    torch.manual_seed(seed)
    return tokenizer, transformers.T5EncoderModel(config)


def write_random_folder(variant: str, folder: Path, device: torch.device) -> None:
    """A CogVideoX folder (transformer, vae, text_encoder, tokenizer, scheduler) of random
    weights shaped like ``variant``, in bf16 (float32 for ``tiny``)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    from cogvx_mini.diffusion import NoiseSchedule

    make, _, scaling = VARIANTS[variant]
    config = make()
    dtype = torch.float32 if variant == "tiny" else torch.bfloat16
    tokenizer, t5 = word_t5(config.text_dim)
    torch.manual_seed(0)
    with torch.device(device):
        transformer = CogVideoXTransformer3DModel(**config.to_diffusers_config()).to(dtype)
    small = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
    vae = AutoencoderKLCogVideoX(scaling_factor=scaling, **(small if variant == "tiny" else {}))
    scheduler = CogVideoXDDIMScheduler(**NoiseSchedule.cogvideox_2b().to_diffusers_config())
    pipe = CogVideoXPipeline(tokenizer, t5.to(dtype), vae.to(dtype), transformer, scheduler)
    pipe.save_pretrained(folder)
    del pipe, transformer
    _free(device)


def _timed(name: str, run, device: torch.device) -> dict:
    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    video = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row = {"mode": name, "seconds": time.perf_counter() - start, "peak_gb": _peak_memory(device)}
    print(f"  {name:<36} {row['seconds']:7.1f} s  peak {row['peak_gb']:5.1f} GB", flush=True)
    return row | {"video": video}


def run_diffusers(folder: Path, size, steps: int, device: torch.device, dtype) -> torch.Tensor:
    """``CogVideoXPipeline`` from ``folder``: video ``[1, 3, T, H, W]`` in [-1, 1] (CPU)."""
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    pipe.vae.enable_tiling()
    frames, height, width = size
    out = pipe(PROMPT, num_frames=frames, height=height, width=width, num_inference_steps=steps,
               guidance_scale=6.0, generator=torch.Generator().manual_seed(3),
               output_type="pt").frames  # fmt: skip
    return (out.float().cpu() * 2 - 1).transpose(1, 2)


def run_ours(folder: Path, size, steps: int, device: torch.device, dtype) -> torch.Tensor:
    """``scale.sample.sample`` from ``folder`` with its CLI's defaults: ``[1, 3, T, H, W]``."""
    from scale.sample import SampleRuntime, sample

    frames, height, width = size
    runtime = SampleRuntime(compile=device.type == "cuda")
    return sample(
        folder, [PROMPT], steps=steps, seed=3, frames=frames, height=height, width=width,
        dtype=dtype, device=device, progress=False, runtime=runtime,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", choices=list(VARIANTS), default="1.5-5b")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--workdir", default="outputs/bench_end_to_end_model")
    p.add_argument("--out", default="outputs/bench_end_to_end.json")
    args = p.parse_args(argv)
    device, folder = torch.device(args.device), Path(args.workdir)
    dtype = torch.float32 if args.variant == "tiny" else torch.bfloat16
    size = VARIANTS[args.variant][1]
    print(f"{args.variant}: {size[0]}x{size[1]}x{size[2]}, {args.steps} steps, CFG 6", flush=True)
    write_random_folder(args.variant, folder, device)
    work = (folder, size, args.steps, device, dtype)
    rows = [_timed("diffusers CogVideoXPipeline", lambda: run_diffusers(*work), device)]
    for label in ("scale/sample.py (first: compiles)", "scale/sample.py"):
        rows.append(_timed(label, lambda: run_ours(*work), device))
    reference = rows[0].pop("video")
    for row in rows[1:]:
        row["mean_abs_diff_vs_diffusers"] = (row.pop("video") - reference).abs().mean().item()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"variant": args.variant, "size": size, "steps": args.steps, "rows": rows}
    result["device"] = name
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(rows, indent=1))
    return rows
