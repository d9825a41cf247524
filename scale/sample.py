"""Text -> video at full size with the released CogVideoX weights and cogvx_mini's own modules.

    python scale/sample.py --model /weights/CogVideoX-2b --prompt "a red fox runs through snow" \
        --out fox.mp4 [--steps 50 --guidance 6 --seed 42 --frames 49 --height 480 --width 720]

``--model`` is a local folder in the diffusers layout (``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``); nothing is downloaded. The components run
one after the other and each is freed before the next loads: T5 (on the CPU with
``--offload-text-encoder``), the transformer for the DDIM loop, then the VAE, which decodes in
temporal chunks, two frames at a time, in whole-width row tiles (``--no-tiling`` to decode whole
frames).
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch

from cogvx_mini.data.text_encoder import T5TextEncoder
from cogvx_mini.data.video_io import save_video
from cogvx_mini.diffusion import ddim_sample
from cogvx_mini.shapes import check_frame_count
from cogvx_mini.weights import (
    schedule_from_diffusers,
    transformer_from_diffusers,
    vae_from_diffusers,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def initial_noise(
    batch: int,
    channels: int,
    frames: int,
    height: int,
    width: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Pure noise ``[B, C, T', H/8, W/8]`` for 4k+1 ``frames``, drawn exactly as diffusers'
    CogVideoX pipeline draws it for the same seed (in its ``[B, T', C, h, w]`` order, on the
    CPU generator, then moved), so the two can be compared sample for sample."""
    check_frame_count(frames)
    shape = (batch, (frames - 1) // 4 + 1, channels, height // 8, width // 8)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=generator, dtype=dtype)
    return noise.to(device).permute(0, 2, 1, 3, 4)


def denoise(
    model: str | Path,
    text: torch.Tensor,
    negative: torch.Tensor | None,
    steps: int,
    guidance: float,
    dynamic_cfg: bool,
    seed: int,
    frames: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    device: torch.device,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM with CFG from the transformer of ``model``: latents ``[B, 16, T', H/8, W/8]``.

    ``text`` and ``negative`` are T5 embeddings ``[B, L, 4096]``; no negative, no guidance.
    """
    transformer = transformer_from_diffusers(model, dtype=dtype, device=device)
    c = transformer.config
    noise = initial_noise(len(text), c.in_channels, frames, height, width, seed, device, dtype)

    def predict(embeddings: torch.Tensor):
        return lambda x, t: transformer(x, embeddings, t).float()

    return ddim_sample(
        predict(text),
        noise,
        steps,
        guidance,
        uncond_fn=predict(negative) if negative is not None else None,
        schedule=schedule_from_diffusers(model),
        dynamic_cfg=dynamic_cfg,
        progress=progress,
    )


@torch.no_grad()
def sample(
    model: str | Path,
    prompts: list[str],
    negative_prompt: str = "",
    steps: int = 50,
    guidance: float = 6.0,
    dynamic_cfg: bool = False,
    seed: int = 42,
    frames: int = 49,
    height: int = 480,
    width: int = 720,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cuda",
    offload_text_encoder: bool = False,
    tiled: bool = True,
    progress: bool = True,
) -> torch.Tensor:
    """Generate videos ``[B, 3, frames, height, width]`` in [-1, 1] (float32, on the CPU)."""
    device = torch.device(device)
    if height % 16 or width % 16:
        raise ValueError(f"height and width must be multiples of 16, got {height}x{width}")

    t5_device = torch.device("cpu") if offload_text_encoder else device
    t5 = T5TextEncoder(model, device=t5_device, dtype=dtype)
    text = t5.encode(prompts).to(device)
    negative = t5.encode([negative_prompt] * len(prompts)).to(device) if guidance > 1 else None
    del t5
    _free(device)

    latents = denoise(model, text, negative, steps, guidance, dynamic_cfg, seed, frames, height,
                      width, dtype, device, progress)  # fmt: skip
    _free(device)

    vae = vae_from_diffusers(model, dtype=dtype, device=device)
    if tiled:
        # Whole-width row tiles, 2 frames at a time: at 480x720 faster than diffusers' untiled
        # decode in less memory than its tiled decode (book/benchmarks.md).
        vae.config, vae.time_slice = vae.config.row_tiles(height, width), 2
    video = vae.decode(latents.to(dtype) / vae.config.scaling_factor, tiled=tiled)
    return video.float().clamp(-1, 1).cpu()


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="local CogVideoX folder, diffusers layout")
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--out", default="outputs/sample.mp4", help="MP4 or GIF; _i added for a batch")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--dynamic-cfg", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=720)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--offload-text-encoder", action="store_true", help="run T5 on the CPU")
    p.add_argument("--no-tiling", action="store_true", help="decode whole frames (more memory)")
    args = p.parse_args(argv)

    videos = sample(
        args.model,
        args.prompt,
        args.negative_prompt,
        args.steps,
        args.guidance,
        args.dynamic_cfg,
        args.seed,
        args.frames,
        args.height,
        args.width,
        DTYPES[args.dtype],
        args.device,
        args.offload_text_encoder,
        tiled=not args.no_tiling,
    )
    out = Path(args.out)
    paths = []
    for i, video in enumerate(videos):
        path = out if len(videos) == 1 else out.with_stem(f"{out.stem}_{i}")
        paths.append(save_video(video, path, fps=args.fps))
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
