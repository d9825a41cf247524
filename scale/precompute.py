"""Videos + captions -> cached VAE latents and text embeddings, sharded and resumable.

    torchrun --nproc_per_node=8 scale/precompute.py --videos DIR --out CACHE \
        --config cogvideox_5b --vae-weights /weights/CogVideoX-5b \
        --t5 /weights/CogVideoX-5b              # a released model's diffusers folder
    python scale/precompute.py --videos DIR --out CACHE --config tiny \
        --vae-weights mini --text-encoder toy                        # the toy world on a CPU

``DIR`` holds video files (mp4, gif, webm, mov, avi, mkv) and a caption list: ``captions.jsonl``
(one ``{"file": ..., "caption": ...}`` per line) or ``captions.csv`` (columns ``file,caption``).
Every video is frame-packed with ``cogvx_mini.frame_pack`` to the config bucket nearest in
aspect ratio (the longest frame count it fills; a shorter clip repeats its last frame; a longer
one is subsampled with stride ``T // frames`` then truncated), resized and centre-cropped,
encoded by the VAE (the posterior mean times the scaling factor) and its caption by the text
encoder. Videos are cut into shards of ``--shard-size``;
rank ``r`` of ``w`` encodes shards ``r, r + w, ...``. A shard is written atomically (tensors
first, then its ``.jsonl`` index), so an interrupted run resumes by skipping finished shards.
Unreadable videos are skipped with a warning and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

VIDEO_SUFFIXES = {".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv"}
VideoEncoder = Callable[[torch.Tensor], torch.Tensor]  # [1, 3, T, H, W] -> [C, T', H', W']
TextEncoder = Callable[[list[str]], torch.Tensor]  # prompts -> [B, L, D]


@dataclass
class Item:
    """One video file and its caption."""

    path: Path
    caption: str


def read_captions(folder: str | Path) -> list[Item]:
    """The ``(video, caption)`` pairs listed in ``folder/captions.jsonl`` or ``captions.csv``.

    Raises ``ValueError`` if there is no caption list or it names no existing video file.
    """
    folder = Path(folder)
    rows: list[dict] = []
    if (folder / "captions.jsonl").is_file():
        lines = (folder / "captions.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    elif (folder / "captions.csv").is_file():
        with open(folder / "captions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"expected captions.jsonl or captions.csv in {folder}, found neither")
    items = []
    for row in rows:
        name = row.get("file") or row.get("video") or row.get("path")
        caption = row.get("caption") or row.get("text") or row.get("prompt")
        if not name or caption is None:
            raise ValueError(f"expected 'file' and 'caption' in every caption row, got {row}")
        path = folder / name
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            items.append(Item(path, caption))
    if not items:
        raise ValueError(
            f"no usable videos in {folder}: the caption list names {len(rows)} entries, none an "
            f"existing file with a suffix in {sorted(VIDEO_SUFFIXES)}"
        )
    return sorted(items, key=lambda it: it.path.name)


def frame_stride(frames_available: int, frames: int) -> int:
    """The subsampling stride that keeps a long clip's whole duration: ``T // frames`` (>= 1)."""
    return max(1, frames_available // frames)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def precompute(
    items: list[Item],
    out: str | Path,
    buckets: list[list[int]],
    encode_video: VideoEncoder,
    encode_text: TextEncoder,
    shard_size: int = 64,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> dict[str, int]:
    """Encode this rank's shards of ``items`` into ``out``; returns counts
    ``{"encoded", "skipped_shards", "unreadable"}`` for this rank."""
    from tqdm import tqdm

    from cogvx_mini.data.video_io import read_video
    from cogvx_mini.frame_pack import Bucket, assign_bucket, pack_to_bucket
    from cogvx_mini.weights.checkpoint import save_weights

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    counts = {"encoded": 0, "skipped_shards": 0, "unreadable": 0}
    mine = list(range(rank, len(shards), world))
    bar = tqdm(total=sum(len(shards[k]) for k in mine), disable=not progress, desc="precompute")
    for k in mine:
        index_path = out / f"shard_{k:05d}.jsonl"
        if index_path.is_file():  # finished by an earlier run
            counts["skipped_shards"] += 1
            bar.update(len(shards[k]))
            continue
        tensors, lines = {}, []
        for j, item in enumerate(shards[k]):
            bar.update(1)
            try:
                video = read_video(item.path)
            except ValueError as err:
                warnings.warn(f"skipping unreadable video {item.path}: {err}", stacklevel=2)
                counts["unreadable"] += 1
                continue
            bucket = assign_bucket(*video.shape[1:], [Bucket(*b) for b in buckets])
            stride = frame_stride(video.shape[1], bucket.frames)
            video = pack_to_bucket(video, bucket, stride).clamp(-1, 1)
            with torch.no_grad():
                latents = encode_video(video[None]).float().cpu().contiguous()
                text = encode_text([item.caption])[0].float().cpu().contiguous()
            key = f"{k:05d}_{j:04d}"
            tensors[f"latents/{key}"], tensors[f"text/{key}"] = latents, text
            entry = {"key": key, "file": item.path.name, "caption": item.caption}
            lines.append(json.dumps({**entry, "latent_shape": list(latents.shape)}))
            counts["encoded"] += 1
        if tensors:
            save_weights(tensors, out / f"shard_{k:05d}.safetensors")
        _atomic_text(index_path, "\n".join(lines) + ("\n" if lines else ""))
    bar.close()
    return counts


# ---------------------------------------------------------------------------------------------
# Encoders from the library


def build_video_encoder(weights: str, preset: str, device: torch.device) -> VideoEncoder:
    """The cogvx_mini VAE: ``weights`` is ``mini`` (the shipped mini VAE), a released model's
    diffusers folder (its ``vae/``, converted; the scaling factor is the model's own), or a
    safetensors path of a cogvx_mini VAE state dict of ``preset`` (``mini`` or ``cogvideox``).
    Returns ``encode(video [1, 3, T, H, W]) -> latents [16, T', H/8, W/8]`` (posterior mean x
    scaling factor)."""
    from cogvx_mini.vae import VAE3D, VAEConfig, load_mini_vae
    from cogvx_mini.weights.checkpoint import load_weights

    if weights == "mini":
        vae = load_mini_vae()
    elif Path(weights).is_dir():
        from cogvx_mini.weights import vae_from_diffusers

        vae = vae_from_diffusers(weights)
    else:
        vae = VAE3D(VAEConfig.mini() if preset == "mini" else VAEConfig.cogvideox())
        vae.load_state_dict(load_weights(weights))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = vae.to(device, dtype).eval().requires_grad_(False)
    scale = vae.config.scaling_factor

    def encode(video: torch.Tensor) -> torch.Tensor:
        return (vae.encode(video.to(device, dtype)).mean * scale)[0]

    return encode


def build_text_encoder(kind: str, length: int, dim: int, device: torch.device) -> TextEncoder:
    """``toy`` (``cogvx_mini.data.text_encoder.ToyTextEncoder``) or a local T5 folder
    (``T5TextEncoder``; nothing is downloaded)."""
    from cogvx_mini.data.text_encoder import T5TextEncoder, ToyTextEncoder

    if kind == "toy":
        return ToyTextEncoder(dim, length).encode
    return T5TextEncoder(kind, max_length=length, device=device).encode


def main(argv: list[str] | None = None) -> None:
    from cogvx_mini.training.scale_config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument(
        "--vae-weights", required=True, help="'mini', a diffusers folder or a safetensors path"
    )
    parser.add_argument("--vae-config", choices=("mini", "cogvideox"), default=None)
    parser.add_argument(
        "--t5", default=None, help="local T5 or diffusers folder (default: the toy encoder)"
    )
    parser.add_argument("--text-encoder", choices=("toy",), default=None)
    parser.add_argument("--shard-size", type=int, default=64)
    args = parser.parse_args(argv)

    config = load_config(args.config)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    tcfg = config.transformer_config()
    vae_preset = args.vae_config or ("mini" if config.model.preset == "mini" else "cogvideox")
    encode_video = build_video_encoder(args.vae_weights, vae_preset, device)
    text_kind = args.t5 or "toy"
    encode_text = build_text_encoder(text_kind, config.data.text_length, tcfg.text_dim, device)
    items = read_captions(args.videos)
    counts = precompute(
        items,
        args.out,
        config.data.buckets,
        encode_video,
        encode_text,
        args.shard_size,
        rank,
        world,
        progress=rank == 0,
    )
    print(f"rank {rank}/{world}: {counts} ({len(items)} videos listed)", flush=True)


if __name__ == "__main__":
    main()
