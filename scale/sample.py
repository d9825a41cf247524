"""Text (and image) -> video at full size with the released CogVideoX weights and cogvx_mini's
own modules.

    python scale/sample.py --model /weights/CogVideoX-2b --prompt "a red fox runs through snow" \
        --out fox.mp4 [--steps 50 --guidance 6 --seed 42 --frames 49 --height 480 --width 720]
    python scale/sample.py --model /weights/CogVideoX-5b-I2V --image fox.png --prompt "..."
    python scale/sample.py --model /weights/CogVideoX1.5-5B --frames 81 --height 768 --width 1360 \
        --fps 16 --prompt "..."

Image-to-video folders (5B-I2V, 1.5-I2V: the transformer reads twice the VAE's channels) need
``--image``; it is resized to ``--height`` x ``--width`` as diffusers resizes it. 5B-I2V's learned
positions exist for 49 x 480 x 720 only.

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
from cogvx_mini.data.video_io import read_image, save_video
from cogvx_mini.diffusion import cfg_predictor, ddim_sample
from cogvx_mini.image_to_video import ImageConditioned, encode_image, image_condition
from cogvx_mini.inference.memory import QUANTIZE_MODES, quantize_weights, stream_blocks
from cogvx_mini.inference.step_cache import FAST_CACHE_THRESHOLD, StepCache
from cogvx_mini.parallel.runtime import apply_compile
from cogvx_mini.parallel.sampling import (
    SamplingLayout,
    SamplingRanks,
    cfg_parallel_predictor,
    init_sampling,
    parallelize_for_sampling,
)
from cogvx_mini.shapes import check_frame_count, pixel_frames, temporal_patch_padding
from cogvx_mini.training.lora import load_lora_diffusers, lora_file, unload_lora
from cogvx_mini.transformer import TransformerConfig
from cogvx_mini.vae import VAEConfig
from cogvx_mini.weights import (
    schedule_from_diffusers,
    transformer_from_diffusers,
    vae_from_diffusers,
)
from cogvx_mini.weights.checkpoint import save_tensors_atomic
from cogvx_mini.weights.diffusers import (
    read_config,
    transformer_config_from_diffusers,
    vae_config_from_diffusers,
)

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
OFFLOAD_MODES = ("model", "sequential")


@dataclass(frozen=True)
class ModelFolder:
    """The configs of a checked CogVideoX folder, read before any weights load."""

    path: Path
    vae: VAEConfig
    transformer: TransformerConfig
    num_train_timesteps: int

    @property
    def image_to_video(self) -> bool:
        """The transformer reads the image's latents beside the noisy ones (5B-I2V, 1.5-I2V)."""
        return self.transformer.in_channels == 2 * self.vae.latent_channels


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
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    return ModelFolder(
        path,
        vae_config_from_diffusers(read_config(path / "vae")),
        transformer_config_from_diffusers(read_config(path / "transformer")),
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
    multiple = folder.vae.spatial_compression * folder.transformer.patch_size
    for name, size in (("height", height), ("width", width)):
        if positive_int(name, size) % multiple:
            raise ValueError(
                f"{name}: expected a multiple of {multiple} (VAE {folder.vae.spatial_compression}"
                f" x patch {folder.transformer.patch_size}), got {size}"
            )
    if folder.transformer.learned_positions:
        _check_learned_grid(folder, frames, height, width)
    return prompts


def _check_learned_grid(folder: ModelFolder, frames: int, height: int, width: int) -> None:
    """A model with learned positions (5B-I2V) has them for its training size only."""
    c, vae = folder.transformer, folder.vae
    pixels = c.patch_size * vae.spatial_compression
    size = (pixel_frames(c.base_latent_frames, vae.temporal_compression),
            c.rope_base_grid[0] * pixels, c.rope_base_grid[1] * pixels)  # fmt: skip
    if (frames, height, width) != size:
        raise ValueError(
            "frames, height, width: this model's learned positions exist for {} x {} x {} only, "
            "got {} x {} x {}".format(*size, frames, height, width)
        )


def check_image(folder: ModelFolder, image, batch: int, height: int, width: int):
    """``image`` (a path, or ``[1 or B, 3, height, width]`` in [-1, 1]) against the model: an
    image-to-video model needs one, a text-to-video model takes none. Returns ``[B, 3, H, W]``
    (float32) or ``None``; a path is read and resized here (before T5 loads)."""
    c, latent = folder.transformer, folder.vae.latent_channels
    if image is None:
        if folder.image_to_video:
            raise ValueError(
                f"image: this model is image-to-video ({c.in_channels} input channels = 2 x "
                f"{latent} latent channels); pass --image"
            )
        return None
    if not folder.image_to_video:
        raise ValueError(
            f"image: the model's transformer reads {c.in_channels} channels (text to video); "
            f"image to video needs {2 * latent}"
        )
    if isinstance(image, (str, Path)):
        image = read_image(image, height, width)[None]
    if image.ndim != 4 or image.shape[0] not in (1, batch) or image.shape[1:] != (3, height, width):
        raise ValueError(
            f"image: expected [1 or {batch}, 3, {height}, {width}], got {tuple(image.shape)}"
        )
    return image.float().expand(batch, -1, -1, -1)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def initial_noise(
    latent_shape: tuple[int, ...], generator: torch.Generator, device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """Pure noise of ``latent_shape`` ``[B, C, T', h, w]`` (``VAEConfig.latent_shape``), drawn
    exactly as diffusers' CogVideoX pipelines draw it (in their ``[B, T', C, h, w]`` order, from
    the CPU ``generator`` seeded with the sampler's seed, after any image latent), so the two can
    be compared sample for sample."""
    b, c, t, h, w = latent_shape
    noise = torch.randn((b, t, c, h, w), generator=generator, dtype=dtype)
    return noise.to(device).permute(0, 2, 1, 3, 4)


def sampling_latent_shape(folder: ModelFolder, batch: int, frames: int, height: int,
                          width: int) -> tuple[tuple[int, ...], int]:  # fmt: skip
    """``([B, C_lat, T' + pad, h, w], pad)``: the latents the loop runs on, with ``pad`` frames
    in front so that the temporal patch (1.5) divides them; they are dropped before decoding."""
    b, c, t, h, w = folder.vae.latent_shape((batch, 3, frames, height, width))
    pad = temporal_patch_padding(t, folder.transformer.temporal_patch_size)
    return (b, c, t + pad, h, w), pad


def encode_condition(model: str | Path, image: torch.Tensor, generator: torch.Generator,
                     latent_frames: int, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:  # fmt: skip
    """The conditioning video ``[B, C_lat, latent_frames, h, w]`` of ``image`` ``[B, 3, H, W]``:
    its posterior sample (drawn from ``generator``) scaled and zero-padded, as
    ``CogVideoXImageToVideoPipeline`` makes it."""
    vae = vae_from_diffusers(model, dtype=dtype, device=device)
    first = encode_image(vae, image.to(device), generator, vae.config.image_latent_scale)
    del vae
    _free(device)
    return image_condition(first, latent_frames)


@dataclass(frozen=True)
class SampleRuntime:
    """How :func:`sample` runs the model; none of it changes the model's configs.

    ``batched_cfg``: the two CFG predictions as one batch-2 forward (else two forwards, as
    diffusers' pipeline did before batching). ``compile``: ``torch.compile`` each block.
    ``cache_threshold`` > 0: step caching (:class:`~cogvx_mini.inference.step_cache.StepCache`,
    lossy). ``offload``: ``"model"`` puts each component whole on the GPU in turn; ``"sequential"``
    streams T5's and the transformer's blocks from the CPU. ``quantize``: ``"int8"``/``"fp8"``
    weight-only (torchao, lossy). ``layout``: the ranks (``torchrun``; see
    :mod:`cogvx_mini.parallel.sampling`). ``lora``: a diffusers/finetrainers LoRA folder merged
    into the weights at ``lora_scale`` (:mod:`cogvx_mini.training.lora`).
    """

    batched_cfg: bool = True
    compile: bool = False
    cache_threshold: float = 0.0
    offload: str = "model"
    quantize: str | None = None
    layout: SamplingLayout = SamplingLayout()
    lora: str | Path | None = None
    lora_scale: float = 1.0

    def check(self, folder: ModelFolder, guidance: float) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload: expected one of {OFFLOAD_MODES}, got {self.offload!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize: expected one of {QUANTIZE_MODES}, got {self.quantize!r}")
        finite_float("cache_threshold", self.cache_threshold, low=0.0)
        finite_float("lora_scale", self.lora_scale)
        if self.lora is not None:
            lora_file(self.lora)  # a missing or pickled file fails before anything loads
        self.layout.check(folder.transformer.num_heads, guidance)
        if self.cache_threshold > 0 and self.layout.ulysses > 1:
            raise ValueError("cache_threshold: step caching does not combine with ulysses > 1")
        if self.offload == "sequential" and (self.compile or self.quantize):
            raise ValueError("offload: sequential streams plain weights; no compile or quantize")


def build_denoiser(model: str | Path, runtime: SampleRuntime, ranks: SamplingRanks,
                   dtype: torch.dtype) -> torch.nn.Module:  # fmt: skip
    """The transformer of ``model`` with ``runtime``'s choices applied, on ``ranks.device``."""
    device = ranks.device
    sequential = runtime.offload == "sequential"
    transformer = transformer_from_diffusers(
        model, dtype=dtype, device="cpu" if sequential else device
    )
    if runtime.lora is not None:
        # Merged into the weights: no cost per step, and every choice below sees plain linears.
        load_lora_diffusers(transformer, runtime.lora, runtime.lora_scale)
        unload_lora(transformer, merge=True)
    if sequential:
        stream_blocks(transformer, transformer.blocks, device)
    if runtime.quantize:
        quantize_weights(transformer, runtime.quantize)
    transformer = parallelize_for_sampling(transformer, ranks)
    if runtime.compile:
        apply_compile(transformer)
    if runtime.cache_threshold > 0:
        transformer = StepCache(transformer, runtime.cache_threshold)
    return transformer


def predictor(transformer, text: torch.Tensor, negative: torch.Tensor | None,
              runtime: SampleRuntime, ranks: SamplingRanks):  # fmt: skip
    """``(model_fn, uncond_fn)`` for :func:`ddim_sample`: CFG on two ranks, batched in one
    forward, or two forwards (no negative: the conditional prediction alone)."""

    def forward(embeddings: torch.Tensor):
        return lambda x, t: transformer(x, embeddings, t).float()

    if negative is None:
        return forward(text), None
    if runtime.layout.cfg == 2:
        return cfg_parallel_predictor(transformer, text, negative, ranks), None
    if runtime.batched_cfg:
        return cfg_predictor(transformer, text, negative), None
    return forward(text), forward(negative)


def denoise(
    model: str | Path,
    text: torch.Tensor,
    negative: torch.Tensor | None,
    steps: int,
    guidance: float,
    dynamic_cfg: bool,
    noise: torch.Tensor,
    dtype: torch.dtype,
    ranks: SamplingRanks,
    runtime: SampleRuntime = SampleRuntime(),
    progress: bool = True,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM with CFG from the transformer of ``model``, starting at ``noise`` ``[B, C, T', h, w]``:
    latents of that shape.

    ``text`` and ``negative`` are T5 embeddings ``[B, L, 4096]``; no negative, no guidance.
    ``condition`` (image to video): the conditioning video ``[B, C, T', h, w]`` read beside the
    latents (:class:`~cogvx_mini.image_to_video.ImageConditioned`).
    """
    transformer = build_denoiser(model, runtime, ranks, dtype)
    cached = transformer
    if condition is not None:
        transformer = ImageConditioned(transformer, condition.to(ranks.device, dtype))
    model_fn, uncond_fn = predictor(transformer, text, negative, runtime, ranks)
    latents = ddim_sample(
        model_fn,
        noise,
        steps,
        guidance,
        uncond_fn=uncond_fn,
        schedule=schedule_from_diffusers(model),
        dynamic_cfg=dynamic_cfg,
        progress=progress and ranks.rank == 0,
    )
    if isinstance(cached, StepCache):
        skipped = sum(cached.skipped)
        print(f"step cache: skipped the later blocks on {skipped} of {steps} steps")
    if not torch.isfinite(latents).all():  # one scan of the result, before the VAE decodes it
        raise RuntimeError(f"sampling produced non-finite latents (NaN or inf) in {dtype}")
    return latents


def encode_prompts(model, prompts: list[str], negative_prompt: str, guidance: float,
                   dtype: torch.dtype, device: torch.device, placement: str):  # fmt: skip
    """T5 embeddings ``[B, 226, 4096]`` of the prompts and (guidance > 1) of the negative.
    ``placement``: ``"cpu"``, ``"device"`` or ``"sequential"`` (blocks streamed)."""
    t5 = T5TextEncoder(model, device=device if placement == "device" else "cpu", dtype=dtype)
    if placement == "sequential":
        stream_blocks(t5.model, t5.model.encoder.block, device)
        t5.device = device
    text = t5.encode(prompts).to(device)
    negative = t5.encode([negative_prompt] * len(prompts)).to(device) if guidance > 1 else None
    del t5
    _free(device)
    return text, negative


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
    runtime: SampleRuntime = SampleRuntime(),
    return_latents: bool = False,
    image: str | Path | torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor | None, torch.Tensor]:
    """Generate videos ``[B, 3, frames, height, width]`` in [-1, 1] (float32, on the CPU); with
    ``return_latents`` also the final latents ``[B, C, T', h, w]`` (float32, CPU). Under a
    parallel ``runtime.layout`` every rank samples; rank 0 alone decodes (the others return
    ``None`` for the videos). ``image`` (an image-to-video model only): the first frame, a path
    or ``[1 or B, 3, height, width]`` in [-1, 1] (:func:`check_image`).

    Every argument and the model folder are checked before T5 loads."""
    folder = check_model_folder(model)
    prompts = check_sample_args(folder, prompts, negative_prompt, steps, guidance, seed, frames,
                                height, width)  # fmt: skip
    image = check_image(folder, image, len(prompts), height, width)
    runtime.check(folder, guidance)
    ranks = init_sampling(runtime.layout, torch.device(device))
    device = ranks.device
    shape, pad = sampling_latent_shape(folder, len(prompts), frames, height, width)
    placement = "cpu" if offload_text_encoder else "device"
    placement = "sequential" if runtime.offload == "sequential" else placement
    text, negative = encode_prompts(model, prompts, negative_prompt, guidance, dtype, device,
                                    placement)  # fmt: skip
    generator = torch.Generator("cpu").manual_seed(seed)  # the image's sample, then the noise
    condition = None
    if image is not None:
        condition = encode_condition(model, image, generator, shape[2], dtype, device)
    noise = initial_noise(shape, generator, device, dtype)
    latents = denoise(model, text, negative, steps, guidance, dynamic_cfg, noise, dtype, ranks,
                      runtime, progress, condition)[:, :, pad:]  # fmt: skip
    _free(device)
    video = decode(model, latents, height, width, dtype, device, tiled) if ranks.rank == 0 else None
    return (video, latents.float().cpu()) if return_latents else video


def decode(model, latents: torch.Tensor, height: int, width: int, dtype: torch.dtype,
           device: torch.device, tiled: bool) -> torch.Tensor:  # fmt: skip
    """The VAE's video ``[B, 3, T, H, W]`` in [-1, 1] (float32, CPU) of ``latents``
    ``[B, C, T', h, w]``."""
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
    p.add_argument("--image", default=None, metavar="PATH",
                   help="first frame of an image-to-video model (resized)")  # fmt: skip
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
    _add_runtime_args(p)
    args = p.parse_args(argv)
    try:  # the output path and the model folder too, before minutes of loading
        output_file("--out", args.out, VIDEO_SUFFIXES)
        if args.save_latents is not None:
            output_file("--save-latents", args.save_latents, (".safetensors",))
        folder = check_model_folder(args.model)
        check_sample_args(folder, args.prompt, args.negative_prompt, args.steps, args.guidance,
                          args.seed, args.frames, args.height, args.width)  # fmt: skip
        if args.image is not None and not Path(args.image).is_file():
            raise FileNotFoundError(f"--image: expected an image file, got {args.image}")
        check_image(folder, args.image, len(args.prompt), args.height, args.width)
        args.runtime = _runtime(args)
        args.runtime.check(folder, args.guidance)
    except (TypeError, ValueError, FileNotFoundError) as err:
        p.error(str(err))
    return args


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", choices=["batched", "separate"], default="batched",
                   help="CFG's predictions as one batch-2 forward or two")  # fmt: skip
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each block (default: on for CUDA)")  # fmt: skip
    p.add_argument("--cache", type=cli_type(finite_float, float, low=0.0), default=0.0,
                   help="step-cache threshold (lossy; 0 = off)")  # fmt: skip
    p.add_argument("--fast", action="store_true",
                   help=f"the fast, lossy preset: --cache {FAST_CACHE_THRESHOLD}")  # fmt: skip
    p.add_argument("--offload", choices=OFFLOAD_MODES, default="model",
                   help="model: components in turn; sequential: blocks streamed")  # fmt: skip
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default=None,
                   help="weight-only int8/fp8 transformer (torchao; lossy)")  # fmt: skip
    p.add_argument("--parallel", type=_layout, default=SamplingLayout(),
                   help="none, cfg, ulysses=K or cfg,ulysses=K (under torchrun)")  # fmt: skip
    p.add_argument("--save-latents", default=None, help="write the final latents (.safetensors)")
    p.add_argument("--lora", default=None, metavar="FOLDER",
                   help="a diffusers LoRA (pytorch_lora_weights.safetensors), merged")  # fmt: skip
    p.add_argument("--lora-scale", type=cli_type(finite_float, float), default=1.0,
                   help="strength of --lora (diffusers' adapter weight)")  # fmt: skip


def _layout(text: str) -> SamplingLayout:
    """An ``argparse`` type: a :class:`SamplingLayout`."""
    try:
        return SamplingLayout.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("parallel: ")) from None


def _runtime(args: argparse.Namespace) -> SampleRuntime:
    compile_ = args.compile if args.compile is not None else args.device.type == "cuda"
    compile_ = compile_ and args.offload != "sequential"
    return SampleRuntime(
        batched_cfg=args.cfg == "batched",
        compile=compile_,
        cache_threshold=FAST_CACHE_THRESHOLD if args.fast and not args.cache else args.cache,
        offload=args.offload,
        quantize=args.quantize,
        layout=args.parallel,
        lora=args.lora,
        lora_scale=args.lora_scale,
    )


def main(argv: list[str] | None = None) -> list[Path]:
    args = _parse_args(argv)
    videos, latents = sample(
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
        runtime=args.runtime,
        return_latents=True,
        image=args.image,
    )
    if videos is None:  # not rank 0 of a parallel run
        return []
    if args.save_latents is not None:
        save_tensors_atomic({"latents": latents.contiguous()}, args.save_latents)
        print(f"wrote {args.save_latents}")
    out = Path(args.out)
    paths = []
    for i, video in enumerate(videos):
        path = out if len(videos) == 1 else out.with_stem(f"{out.stem}_{i}")
        paths.append(save_video(video, path, fps=args.fps))
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
