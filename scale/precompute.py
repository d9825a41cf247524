"""Videos + captions -> cached VAE latents and text embeddings, sharded and resumable.

    torchrun --nproc_per_node=8 scale/precompute.py --videos DIR --out CACHE \
        --config scale/configs/cogvideox_5b.yaml --vae-weights vae.safetensors --t5 /path/to/t5
    python scale/precompute.py --videos DIR --out CACHE --config scale/configs/tiny.yaml \
        --vae-weights mini --text-encoder toy                        # the toy world on a CPU

``DIR`` holds video files (mp4, gif, webm, mov, avi, mkv) and a caption list: ``captions.jsonl``
(one ``{"file": ..., "caption": ...}`` per line) or ``captions.csv`` (columns ``file,caption``).
Every video is frame-packed to the config bucket nearest in aspect ratio (the largest frame
count it fills; a shorter clip repeats its last frame; a longer one is subsampled uniformly then
truncated), resized and centre-cropped, encoded by the VAE (the posterior mean times the scaling
factor) and its caption by the text encoder. Videos are cut into shards of ``--shard-size``;
rank ``r`` of ``w`` encodes shards ``r, r + w, ...``. A shard is written atomically (tensors
first, then its ``.jsonl`` index), so an interrupted run resumes by skipping finished shards.
Unreadable videos are skipped with a warning and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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


def read_video(path: Path) -> torch.Tensor:
    """``[3, T, H, W]`` float in [-1, 1] from a video file (imageio)."""
    import imageio.v3 as iio

    frames = iio.imread(path)  # [T, H, W, C] uint8 (a still image gives [H, W, C])
    if frames.ndim == 3:
        frames = frames[None]
    video = torch.from_numpy(frames[..., :3].copy()).permute(3, 0, 1, 2).float()
    return video / 127.5 - 1


def choose_bucket(frames: int, height: int, width: int, buckets: list[list[int]]) -> list[int]:
    """The bucket nearest in aspect ratio, then the largest frame count ``<= frames`` (or the
    smallest one if the clip is shorter than all)."""
    aspect = width / height
    best = min(abs(b[2] / b[1] - aspect) for b in buckets)
    same = [b for b in buckets if abs(abs(b[2] / b[1] - aspect) - best) < 1e-9]
    fitting = [b for b in same if b[0] <= frames]
    return max(fitting, key=lambda b: b[0]) if fitting else min(same, key=lambda b: b[0])


def pack_frames(video: torch.Tensor, frames: int) -> torch.Tensor:
    """``[C, T, H, W]`` -> ``[C, frames, H, W]``: repeat the last frame if too short, else
    subsample uniformly (keeping the clip's whole duration) then keep the first ``frames``."""
    t = video.shape[1]
    if t < frames:
        pad = video[:, -1:].expand(-1, frames - t, -1, -1)
        return torch.cat([video, pad], dim=1)
    stride = max(1, t // frames)
    return video[:, ::stride][:, :frames]


def resize_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale ``[C, T, H, W]`` so it covers ``height x width``, then crop the centre."""
    _, _, h, w = video.shape
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    video = F.interpolate(video.transpose(0, 1), size=(nh, nw), mode="bilinear", antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    return video[:, :, top : top + height, left : left + width].transpose(0, 1).clamp(-1, 1)


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

    from cogvx_mini.checkpoint import save_weights

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
            except Exception as err:  # noqa: BLE001 - any decoder error means "unusable"
                warnings.warn(f"skipping unreadable video {item.path}: {err}", stacklevel=2)
                counts["unreadable"] += 1
                continue
            frames, height, width = choose_bucket(*video.shape[1:], buckets)
            video = resize_crop(pack_frames(video, frames), height, width)
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
    """The cogvx_mini VAE: ``weights`` is ``mini`` (the shipped mini VAE) or a safetensors path
    of a cogvx_mini VAE state dict of ``preset`` (``mini`` or ``cogvideox``)."""
    from cogvx_mini import checkpoint
    from cogvx_mini import vae as vae_module

    load_weights = checkpoint.load_weights
    config_cls = vae_module.VAEConfig
    config = config_cls.mini() if preset == "mini" else config_cls.cogvideox()
    vae = vae_module.VAE3D(config)
    if weights == "mini":
        path = Path(__import__("cogvx_mini").__file__).parent / "assets" / "vae_mini.safetensors"
        vae.load_state_dict(load_weights(path))
    else:
        vae.load_state_dict(load_weights(weights))
    vae = vae.to(device).eval()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = vae.to(dtype)

    def encode(video: torch.Tensor) -> torch.Tensor:
        posterior = vae.encode(video.to(device, dtype))
        return (posterior.mean * config.scaling_factor)[0]

    return encode


def build_text_encoder(kind: str, length: int, dim: int, device: torch.device) -> TextEncoder:
    """``toy`` (fixed word vectors, :func:`scale.data.toy_text_embedding`) or a local T5 folder
    (``cogvx_mini.text_encoder``; nothing is downloaded)."""
    if kind == "toy":
        from scale.data import toy_text_embedding

        return lambda prompts: torch.stack([toy_text_embedding(p, length, dim) for p in prompts])
    from cogvx_mini import text_encoder

    encoder = text_encoder.T5TextEncoder(kind, max_length=length, device=device)
    return lambda prompts: encoder.encode(prompts)


def main(argv: list[str] | None = None) -> None:
    from scale.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--vae-weights", required=True, help="'mini' or a safetensors path")
    parser.add_argument("--vae-config", choices=("mini", "cogvideox"), default=None)
    parser.add_argument("--t5", default=None, help="local T5 folder (default: toy encoder)")
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
