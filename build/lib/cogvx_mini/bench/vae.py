"""VAE benchmark: time and peak memory of encode and decode (prints numbers; not a test).

    python -m cogvx_mini.bench vae                      # CPU: the mini VAE, 17x64x64
    python -m cogvx_mini.bench vae --device cuda        # GPU: the full-size VAE in bf16,
                                                        # 13x60x90 latents <-> 49x480x720 video,
                                                        # against diffusers with the same weights

On CUDA every variant runs in the same process on the same random weights: diffusers'
``AutoencoderKLCogVideoX`` untiled and tiled, then ``VAE3D`` whole-chunk, streaming (``time_slice``
frames at a time inside each chunk), channels-last and tiled. Peak memory is
``torch.cuda.max_memory_allocated`` (weights included); on CPU it is the growth of the process's
peak resident memory. The relative difference to diffusers' output is printed as a check.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import time
from collections.abc import Callable

import torch

from cogvx_mini.vae import VAE3D, VAEConfig
from cogvx_mini.weights.diffusers import vae_state_dict_from_diffusers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> int:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), then reset the process's
    peak RSS (Linux: write 5 to clear_refs); returns the current RSS in KiB."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS")


def measure(
    fn: Callable[[], torch.Tensor], device: torch.device, repeats: int, weights_gb: float = 0.0
) -> dict:
    """Median wall time (s) over ``repeats`` runs after one warm-up, and peak memory (GB).

    On CUDA the peak is ``weights_gb`` plus what the runs allocate above the memory held before
    them (other models, inputs, reference outputs), so each model counts only its own weights.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out = fn()  # warm-up (cuDNN autotuning, oneDNN primitive creation)
    del out
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rss0 = _reset_peak_rss() if device.type == "cpu" else 0
    times, result = [], None
    for _ in range(repeats):
        result = None  # free the previous output before the next run
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        result = out
        del out
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 1e9 + weights_gb
    else:  # growth of the resident set's high-water mark over its level before the runs
        peak = (_status_kib("VmHWM") - rss0) * 1024 / 1e9
    return {"time_s": statistics.median(times), "peak_gb": peak, "out": result}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _to_channels_last(model: torch.nn.Module, undo: bool = False) -> None:
    """Conv weights in channels-last layout (5-D: ``channels_last_3d``, 4-D: ``channels_last``)."""
    for p in model.parameters():
        if p.dim() in (4, 5):
            fmt = (
                torch.contiguous_format
                if undo
                else (torch.channels_last_3d if p.dim() == 5 else torch.channels_last)
            )
            p.data = p.data.to(memory_format=fmt)


def run(args: argparse.Namespace) -> list[dict]:
    """Every decode and encode variant timed on one video; the printed rows as dicts."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if not cuda and dtype != torch.float32:
        raise SystemExit("CPU runs in fp32 only")
    cfg = VAEConfig.cogvideox() if (cuda and not args.mini) else VAEConfig.mini()
    frames, height, width = args.frames, args.height, args.width
    if frames is None:
        frames, height, width = (49, 480, 720) if cfg == VAEConfig.cogvideox() else (17, 64, 64)
    torch.manual_seed(0)
    if cuda:
        torch.backends.cudnn.benchmark = True
    ref = None if args.skip_diffusers else _diffusers_vae(cfg)
    ours = VAE3D(cfg).eval()
    if ref is not None:
        ours.load_state_dict(vae_state_dict_from_diffusers(ref.state_dict()))
        ref.to(device, dtype)
    ours.to(device, dtype)
    g = torch.Generator().manual_seed(1)
    video = (torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1).to(device, dtype)
    latents = torch.randn(cfg.latent_shape(tuple(video.shape)), generator=g).to(device, dtype)
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if cuda else 'CPU'}), {args.dtype}, "
        f"video {tuple(video.shape)}, latents {tuple(latents.shape)}"
    )
    bench = Recorder(ours, ref, device, args.repeats)
    variants = decode_variants(args, height, width, cuda)
    if not args.skip_decode:
        _bench_decode(bench, latents, variants, args, (height, width))
    if not args.skip_encode:
        _bench_encode(bench, video, variants, args)
    ours.time_slice = None
    return bench.rows


def _diffusers_vae(cfg: VAEConfig):
    """diffusers' ``AutoencoderKLCogVideoX`` of ``cfg``'s shape (random weights), or None."""
    try:
        from diffusers import AutoencoderKLCogVideoX
    except ImportError:
        print("diffusers is not installed: skipping the reference")
        return None
    return AutoencoderKLCogVideoX(
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        sample_height=2 * cfg.tile_sample_size[0],
        sample_width=2 * cfg.tile_sample_size[1],
    ).eval()


class Recorder:
    """Times ``fn()`` under inference mode, prints a row and keeps it in ``rows``."""

    def __init__(self, ours: VAE3D, ref, device: torch.device, repeats: int) -> None:
        self.ours, self.ref, self.device, self.repeats = ours, ref, device, repeats
        self.rows: list[dict] = []

    def _weights_gb(self, model) -> float:
        if self.device.type != "cuda":
            return 0.0
        return sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9

    def record(self, work: str, impl: str, fn: Callable[[], torch.Tensor], reference=None) -> None:
        model = self.ref if impl.startswith("diffusers") else self.ours
        try:
            with torch.inference_mode():
                m = measure(fn, self.device, self.repeats, self._weights_gb(model))
        except torch.OutOfMemoryError:
            print(f"{work:8s} {impl:34s} out of memory")
            return
        row = {"work": work, "impl": impl, "time_s": m["time_s"], "peak_gb": m["peak_gb"]}
        row["shape"] = list(m["out"].shape)
        extra = ""
        if reference is not None:
            row["rel_diff_vs_diffusers_untiled"] = _rel(m["out"], reference)
            extra = f"  rel. diff {row['rel_diff_vs_diffusers_untiled']:.2e}"
        self.rows.append(row)
        print(f"{work:8s} {impl:34s} {m['time_s']:8.3f} s  peak {m['peak_gb']:7.2f} GB{extra}")


# (name, time_slice, tiled, channels_last, row_tiles)
Variant = tuple[str, int | None, bool, bool, bool]


def decode_variants(args: argparse.Namespace, height: int, width: int, cuda: bool) -> list[Variant]:
    """VAE3D's variants: whole chunk, streaming, tiled, row tiles, channels-last (CUDA)."""
    variants: list[Variant] = [("VAE3D whole chunk", None, False, False, False)]
    for ts in args.time_slice:
        variants.append((f"VAE3D streaming time_slice={ts}", ts, False, False, False))
    variants.append(("VAE3D tiled", None, True, False, False))
    for ts in args.time_slice[:1]:
        variants.append((f"VAE3D tiled time_slice={ts}", ts, True, False, False))
    if args.row_tiles:
        for ts in [None, *args.time_slice]:
            name = f"VAE3D row tiles {height // 2}x{width}" + (f" time_slice={ts}" if ts else "")
            variants.append((name, ts, True, False, True))
    if cuda and args.channels_last:
        variants += [(n + " channels_last", ts, t, True, r) for n, ts, t, _, r in variants]
    return variants


def _ours_decode(ours: VAE3D, latents: torch.Tensor, variant: Variant, size: tuple[int, int]):
    _, time_slice, tiled, channels_last, row_tiles = variant

    def fn() -> torch.Tensor:
        ours.time_slice = time_slice
        z = latents.to(memory_format=torch.channels_last_3d) if channels_last else latents
        config = ours.config
        if row_tiles:
            ours.config = config.row_tiles(*size)
        try:
            return ours.decode(z, tiled=tiled)
        finally:
            ours.config = config

    return fn


def _bench_decode(bench: Recorder, latents, variants: list[Variant], args, size) -> None:
    """diffusers untiled and tiled (the reference output), then every VAE3D variant."""
    ref, ours, dec_ref = bench.ref, bench.ours, None
    if ref is not None:
        with torch.inference_mode():
            dec_ref = ref.decode(latents).sample if args.check else None
        if not args.skip_untiled_reference:
            ref.disable_tiling()
            bench.record("decode", "diffusers untiled", lambda: ref.decode(latents).sample)
        ref.enable_tiling()
        bench.record("decode", "diffusers tiled", lambda: ref.decode(latents).sample, dec_ref)
        ref.disable_tiling()
    for variant in variants:
        if variant[3]:
            _to_channels_last(ours)
        bench.record("decode", variant[0], _ours_decode(ours, latents, variant, size), dec_ref)
    _to_channels_last(ours, undo=True)


def _bench_encode(bench: Recorder, video, variants: list[Variant], args) -> None:
    """diffusers tiled (the reference output), then the VAE3D variants that also encode."""
    ref, ours, enc_ref = bench.ref, bench.ours, None
    if ref is not None:
        ref.enable_tiling()
        bench.record("encode", "diffusers tiled", lambda: ref.encode(video).latent_dist.mean)
        ref.disable_tiling()
        with torch.inference_mode():
            enc_ref = ref.encode(video).latent_dist.mean if args.check else None
    for name, ts, tiled, channels_last, row_tiles in variants:
        if channels_last or row_tiles:
            continue

        def fn(ts=ts, tiled=tiled):
            ours.time_slice = ts
            return ours.encode(video, tiled=tiled).mean

        bench.record("encode", name, fn, enc_ref)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="VAE encode/decode time and peak memory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="bf16 (CUDA default), fp16 or fp32 (CPU)")
    p.add_argument("--mini", action="store_true", help="the mini config even on CUDA")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--time-slice", type=int, nargs="*", default=None)
    p.add_argument("--channels-last", action="store_true", help="also try channels_last_3d")
    p.add_argument(
        "--row-tiles", action="store_true", help="also decode with VAEConfig.row_tiles (H/2 x W)"
    )
    p.add_argument("--check", action="store_true", help="compare outputs with diffusers")
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--skip-untiled-reference", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    if args.time_slice is None:
        args.time_slice = [1, 2] if cuda else [2]
    if (args.frames is None) != (args.height is None) or (args.frames is None) != (
        args.width is None
    ):
        raise SystemExit("give --frames, --height and --width together")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
