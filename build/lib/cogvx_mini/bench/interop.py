"""Benchmark: released-size models through ``cogvx_mini.weights`` against diffusers.

    python -m cogvx_mini.bench interop --device cuda          # 2B and 5B, bf16, 49x480x720
    python -m cogvx_mini.bench interop --device cpu --models mini   # smoke test

For each model a diffusers ``CogVideoXTransformer3DModel`` with random weights is converted with
:func:`cogvx_mini.weights.transformer_from_diffusers`; the two predict v for the same latents,
text and timestep (relative error, within bf16 rounding), then one denoising step of each
sampler is timed: cogvx_mini's (conditional and unconditional forward, CFG, DDIM step, as
``scale/sample.py`` runs it) and diffusers' ``CogVideoXPipeline`` step (one forward on the
batch-2 [uncond; cond] input, CFG, ``CogVideoXDDIMScheduler.step``).
"""

from __future__ import annotations

import argparse
import gc

import torch

from cogvx_mini.bench.transformer import CONFIGS, timed
from cogvx_mini.diffusion import NoiseSchedule, ddim_step
from cogvx_mini.weights import transformer_from_diffusers


def run_model(name: str, args: argparse.Namespace, device: torch.device, dtype) -> dict:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    config = CONFIGS[name]()
    torch.manual_seed(0)
    with torch.device(device):
        theirs = CogVideoXTransformer3DModel(**config.to_diffusers_config()).to(dtype).eval()
    ours = transformer_from_diffusers(theirs, dtype=dtype, device=device)
    t, h, w = args.frames, args.height, args.width
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, config.in_channels, t, h, w, generator=g, device=device, dtype=dtype)
    text = torch.randn(2, args.text_len, config.text_dim, generator=g, device=device, dtype=dtype)
    step = torch.tensor([999], device=device)
    rope = None
    if config.positions == "rope":
        rope = tuple(r.to(dtype) for r in ours.position_tables(ours.grid(x.shape), device, dtype))

    @torch.no_grad()
    def diffusers_v(batch_x, batch_text, steps):
        out = theirs(
            batch_x.transpose(1, 2), batch_text, steps, image_rotary_emb=rope, return_dict=False
        )[0]
        return out.transpose(1, 2)

    with torch.no_grad():
        ref = diffusers_v(x, text[1:], step).float()
        out = ours(x, text[1:], step).float()
    error = ((out - ref).norm() / ref.norm()).item()

    schedule = NoiseSchedule.cogvideox_2b()
    scheduler = CogVideoXDDIMScheduler(**schedule.to_diffusers_config())
    scheduler.set_timesteps(args.steps, device=device)
    guidance = 6.0

    @torch.no_grad()
    def ours_step():
        v_c = ours(x, text[1:], step).float()
        v_u = ours(x, text[:1], step).float()
        return ddim_step(schedule, v_u + guidance * (v_c - v_u), 999, x.float(), args.steps)[0]

    @torch.no_grad()
    def diffusers_step():
        v = diffusers_v(torch.cat([x, x]), text, step.expand(2)).float()
        v_u, v_c = v.chunk(2)
        v = v_u + guidance * (v_c - v_u)
        return scheduler.step(v.transpose(1, 2), 999, x.transpose(1, 2), return_dict=False)[0]

    step_error = (ours_step() - diffusers_step().transpose(1, 2)).norm() / diffusers_step().norm()
    row = {
        "model": name,
        "relative_error_v": error,
        "relative_error_step": step_error.item(),
        "cogvx_mini_step_s": timed(ours_step, device, args.warmup, args.repeats),
        "diffusers_step_s": timed(diffusers_step, device, args.warmup, args.repeats),
    }
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=None, help="comma list of mini,2b,5b")
    p.add_argument("--frames", type=int, default=None, help="latent frames (13 on CUDA)")
    p.add_argument("--height", type=int, default=None, help="latent height (60 on CUDA)")
    p.add_argument("--width", type=int, default=None, help="latent width (90 on CUDA)")
    p.add_argument("--text-len", type=int, default=226)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    full = device.type == "cuda"
    args.models = (args.models or ("2b,5b" if full else "mini")).split(",")
    args.frames = args.frames or (13 if full else 3)
    args.height = args.height or (60 if full else 8)
    args.width = args.width or (90 if full else 8)
    if not full:
        args.text_len = min(args.text_len, 16)
    dtype = torch.bfloat16 if full else torch.float32
    where = torch.cuda.get_device_name() if full else "cpu"
    shape = f"{args.frames}x{args.height}x{args.width}"
    print(f"device: {where}, {dtype}, latents {shape}, {args.text_len} text tokens")
    rows = []
    for name in args.models:
        row = run_model(name, args, device, dtype)
        rows.append(row)
        gc.collect()  # the models went out of scope with run_model
        if full:
            torch.cuda.empty_cache()
        print(
            f"{name}: v rel. error {row['relative_error_v']:.2e}, step rel. error "
            f"{row['relative_error_step']:.2e} | one CFG denoising step: cogvx_mini "
            f"{row['cogvx_mini_step_s']:.3f} s, diffusers {row['diffusers_step_s']:.3f} s"
        )
    return rows


if __name__ == "__main__":
    main()
