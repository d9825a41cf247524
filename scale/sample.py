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
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvx_mini.checks import (
    cli_type,
    finite_float,
    integer,
    output_file,
    positive_int,
    prompt_list,
)
from cogvx_mini.checks import seed as check_seed
from cogvx_mini.data.text_encoder import T5TextEncoder
from cogvx_mini.data.video_io import save_video
from cogvx_mini.diffusion import ddim_sample
from cogvx_mini.shapes import check_frame_count
from cogvx_mini.vae import VAEConfig
from cogvx_mini.weights import (
    schedule_from_diffusers,
    transformer_from_diffusers,
    vae_from_diffusers,
)
from cogvx_mini.weights.diffusers import read_config, vae_config_from_diffusers

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# What each component folder of a diffusers CogVideoX folder must hold (any one of the files).
COMPONENT_FILES = {
    "transformer": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "spiece.model", "tokenizer.json"),
    "scheduler": ("scheduler_config.json",),
}
VIDEO_SUFFIXES = (".mp4", ".gif")


@dataclass(frozen=True)
class ModelFolder:
    """The configs of a checked CogVideoX folder, read before any weights load."""

    path: Path
    vae: VAEConfig
    patch_size: int
    latent_channels: int
    num_train_timesteps: int


def check_model_folder(model: str | Path) -> ModelFolder:
    """Raise unless ``model`` is a folder with every component folder and its config; returns
    the configs sampling needs to check its arguments (VAE compression, patch size, ...)."""
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"--model: expected a local CogVideoX folder, got {path}")
    for component, files in COMPONENT_FILES.items():
        if not any((path / component / f).is_file() for f in files):
            raise FileNotFoundError(
                f"--model: expected {path / component}/ with {' or '.join(files)} (a CogVideoX "
                f"folder in the diffusers layout: {', '.join(COMPONENT_FILES)}), got none"
            )
    transformer = read_config(path / "transformer")
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    return ModelFolder(
        path,
        vae_config_from_diffusers(read_config(path / "vae")),
        int(transformer.get("patch_size", 2)),
        int(transformer.get("in_channels", 16)),
        int(scheduler.get("num_train_timesteps", 1000)),
    )


def check_sample_args(folder: ModelFolder, prompts, negative_prompt, steps, guidance, seed,
                      frames, height, width) -> list[str]:  # fmt: skip
    """Every argument of :func:`sample` against the model's configs, before anything loads."""
    prompts = prompt_list("prompts", prompts)
    if not isinstance(negative_prompt, str):
        raise TypeError(f"negative_prompt: expected a string, got {type(negative_prompt).__name__}")
    integer("steps", steps, 1, folder.num_train_timesteps)
    finite_float("guidance", guidance, low=0.0)
    check_seed("seed", seed)
    positive_int("frames", frames)
    check_frame_count(frames, folder.vae.temporal_compression)
    multiple = folder.vae.spatial_compression * folder.patch_size
    for name, size in (("height", height), ("width", width)):
        if positive_int(name, size) % multiple:
            raise ValueError(
                f"{name}: expected a multiple of {multiple} (VAE {folder.vae.spatial_compression}"
                f" x patch {folder.patch_size}), got {size}"
            )
    return prompts


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def initial_noise(
    latent_shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Pure noise of ``latent_shape`` ``[B, C, T', h, w]`` (``VAEConfig.latent_shape``), drawn
    exactly as diffusers' CogVideoX pipeline draws it for the same seed (in its
    ``[B, T', C, h, w]`` order, on the CPU generator, then moved), so the two can be compared
    sample for sample."""
    b, c, t, h, w = latent_shape
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((b, t, c, h, w), generator=generator, dtype=dtype)
    return noise.to(device).permute(0, 2, 1, 3, 4)


def denoise(
    model: str | Path,
    text: torch.Tensor,
    negative: torch.Tensor | None,
    steps: int,
    guidance: float,
    dynamic_cfg: bool,
    seed: int,
    latent_shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM with CFG from the transformer of ``model``: latents of ``latent_shape``
    ``[B, C, T', h, w]``.

    ``text`` and ``negative`` are T5 embeddings ``[B, L, 4096]``; no negative, no guidance.
    """
    transformer = transformer_from_diffusers(model, dtype=dtype, device=device)
    noise = initial_noise(latent_shape, seed, device, dtype)

    def predict(embeddings: torch.Tensor):
        return lambda x, t: transformer(x, embeddings, t).float()

    latents = ddim_sample(
        predict(text),
        noise,
        steps,
        guidance,
        uncond_fn=predict(negative) if negative is not None else None,
        schedule=schedule_from_diffusers(model),
        dynamic_cfg=dynamic_cfg,
        progress=progress,
    )
    if not torch.isfinite(latents).all():  # one scan of the result, before the VAE decodes it
        raise RuntimeError(f"sampling produced non-finite latents (NaN or inf) in {dtype}")
    return latents


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
    """Generate videos ``[B, 3, frames, height, width]`` in [-1, 1] (float32, on the CPU).

    Every argument and the model folder are checked before T5 loads."""
    folder = check_model_folder(model)
    prompts = check_sample_args(folder, prompts, negative_prompt, steps, guidance, seed, frames,
                                height, width)  # fmt: skip
    device = torch.device(device)
    shape = folder.vae.latent_shape((len(prompts), 3, frames, height, width))
    shape = (shape[0], folder.latent_channels, *shape[2:])  # the transformer's channels

    t5_device = torch.device("cpu") if offload_text_encoder else device
    t5 = T5TextEncoder(model, device=t5_device, dtype=dtype)
    text = t5.encode(prompts).to(device)
    negative = t5.encode([negative_prompt] * len(prompts)).to(device) if guidance > 1 else None
    del t5
    _free(device)

    latents = denoise(model, text, negative, steps, guidance, dynamic_cfg, seed, shape, dtype,
                      device, progress)  # fmt: skip
    _free(device)

    vae = vae_from_diffusers(model, dtype=dtype, device=device)
    if tiled:
        # Whole-width row tiles, 2 frames at a time: at 480x720 faster than diffusers' untiled
        # decode in less memory than its tiled decode (book/benchmarks.md).
        vae.config, vae.time_slice = vae.config.row_tiles(height, width), 2
    video = vae.decode(latents.to(dtype) / vae.config.scaling_factor, tiled=tiled)
    return video.float().clamp(-1, 1).cpu()


def _device(text: str) -> torch.device:
    """An ``argparse`` type: a device this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(
            f"expected a device like cuda, cuda:1 or cpu, got {text!r}"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"expected an available device, got {text!r} (no CUDA)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"expected a device index below {torch.cuda.device_count()}, got {text!r}"
        )
    return device


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="local CogVideoX folder, diffusers layout")
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--out", default="outputs/sample.mp4", help="MP4 or GIF; _i added for a batch")
    p.add_argument("--steps", type=cli_type(positive_int), default=50)
    p.add_argument("--guidance", type=cli_type(finite_float, float, low=0.0), default=6.0)
    p.add_argument("--dynamic-cfg", action="store_true")
    p.add_argument("--seed", type=cli_type(check_seed), default=42)
    p.add_argument("--frames", type=cli_type(positive_int), default=49)
    p.add_argument("--height", type=cli_type(positive_int), default=480)
    p.add_argument("--width", type=cli_type(positive_int), default=720)
    p.add_argument("--fps", type=cli_type(positive_int), default=8)
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--offload-text-encoder", action="store_true", help="run T5 on the CPU")
    p.add_argument("--no-tiling", action="store_true", help="decode whole frames (more memory)")
    args = p.parse_args(argv)
    try:  # the output path and the model folder too, before minutes of loading
        output_file("--out", args.out, VIDEO_SUFFIXES)
        folder = check_model_folder(args.model)
        check_sample_args(folder, args.prompt, args.negative_prompt, args.steps, args.guidance,
                          args.seed, args.frames, args.height, args.width)  # fmt: skip
    except (TypeError, ValueError, FileNotFoundError) as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> list[Path]:
    args = _parse_args(argv)
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
