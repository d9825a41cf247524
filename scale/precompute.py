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
encoder. Caption lists may name files inside ``DIR`` only (no absolute paths, no ``..``); a
malformed row fails naming its file and line.

The cache is keyed by file identity (path in ``DIR``, size, modification time): a rerun encodes
only new or changed videos, into new shards of ``--shard-size`` (rank ``r`` of ``w`` takes
shards ``r, r + w, ...`` of the pending videos), and drops the index lines of changed or
unlisted ones. ``CACHE/manifest.json`` records the VAE weights (fingerprint) and scaling factor,
buckets, text encoder and text length; a rerun with other settings is refused. A shard is written
atomically (tensors first, then its ``.jsonl`` index, one line per video with the SHA-256 of its
tensors, checked when the training loader reads them). Unreadable or truncated videos are
skipped with a warning, listed in ``unreadable_*.jsonl`` and not retried until they change.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvx_mini.checks import (
    cli_type,
    integer,
    path_inside,
    positive_int,
    read_jsonl,
    writable_folder,
)
from cogvx_mini.data.cache_index import (
    check_manifest,
    file_identity,
    fingerprint,
    identity_key,
    tensors_digest,
)
from cogvx_mini.weights.checkpoint import write_text_atomic

VIDEO_SUFFIXES = {".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv"}
VideoEncoder = Callable[[torch.Tensor], torch.Tensor]  # [1, 3, T, H, W] -> [C, T', H', W']
TextEncoder = Callable[[list[str]], torch.Tensor]  # prompts -> [B, L, D]


@dataclass
class Item:
    """One video file and its caption; ``identity`` is ``{"file", "size", "mtime_ns"}`` with
    ``file`` relative to the data folder (what the cache is keyed by)."""

    path: Path
    caption: str
    identity: dict


def _caption_rows(folder: Path) -> list[tuple[str, object]]:
    """``(where, row)`` for every row of the caption list; ``where`` is ``file:line``."""
    if (folder / "captions.jsonl").is_file():
        return read_jsonl(folder / "captions.jsonl")
    if (folder / "captions.csv").is_file():
        source = folder / "captions.csv"
        with open(source, newline="") as f:
            reader = csv.DictReader(f)
            return [(f"{source}:{reader.line_num}", row) for row in reader]
    raise ValueError(f"expected captions.jsonl or captions.csv in {folder}, found neither")


def _item(folder: Path, where: str, row: object) -> Item | None:
    """The item a caption row names, or ``None`` for a missing file or another suffix."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with 'file' and 'caption', got {row!r}")
    name = row.get("file") or row.get("video") or row.get("path")
    caption = row.get("caption") or row.get("text") or row.get("prompt")
    if not isinstance(name, str) or not name or not isinstance(caption, str):
        raise ValueError(f"{where}: expected a 'file' and a 'caption' string, got {row}")
    path = path_inside(where, folder, name)
    if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
        return None
    return Item(path, caption, file_identity(path, folder))


def read_captions(folder: str | Path) -> list[Item]:
    """The ``(video, caption)`` pairs listed in ``folder/captions.jsonl`` or ``captions.csv``,
    sorted by file.

    Raises ``ValueError`` naming the file and line of a malformed row or of a path outside
    ``folder`` (absolute or with ``..``), and if the list names no existing video file. Missing
    files and repeats of a file are left out with one warning each.
    """
    folder = Path(folder)
    rows = _caption_rows(folder)
    items: dict[str, Item] = {}
    missing, repeated = [], []
    for where, row in rows:
        item = _item(folder, where, row)
        if item is None:
            missing.append(where)
        elif item.identity["file"] in items:
            repeated.append(where)
        else:
            items[item.identity["file"]] = item
    if not items:
        raise ValueError(
            f"no usable videos in {folder}: the caption list names {len(rows)} entries, none an "
            f"existing file with a suffix in {sorted(VIDEO_SUFFIXES)}"
        )
    for what, wheres in (("missing or not a video", missing), ("repeated (first kept)", repeated)):
        if wheres:
            warnings.warn(
                f"{len(wheres)} caption rows {what}: {', '.join(wheres[:5])}", stacklevel=2
            )
    return sorted(items.values(), key=lambda it: it.identity["file"])


def frame_stride(frames_available: int, frames: int) -> int:
    """The subsampling stride that keeps a long clip's whole duration: ``T // frames`` (>= 1)."""
    return max(1, frames_available // frames)


def _read_index(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cached_identities(out: Path, items: list[Item], prune: bool) -> set[str]:
    """The identity keys of ``items`` already in the cache (encoded or known unreadable).

    With ``prune`` (rank 0), index lines of videos no longer listed or changed since (another
    size or modification time) are dropped from their index, so readers never see a stale entry.
    """
    wanted = {identity_key(it.identity) for it in items}
    done: set[str] = set()
    stale = 0
    for index in sorted(out.glob("shard_*.jsonl")) + sorted(out.glob("unreadable_*.jsonl")):
        entries = _read_index(index)
        current = [e for e in entries if identity_key(e) in wanted]
        done.update(identity_key(e) for e in current)
        if prune and len(current) < len(entries):
            stale += len(entries) - len(current)
            write_text_atomic(index, "".join(json.dumps(e) + "\n" for e in current))
    if stale:
        warnings.warn(
            f"dropped {stale} stale cache entries (videos changed or unlisted)", stacklevel=2
        )
    return done


def shard_name(items: list[Item]) -> str:
    """``shard_<digest>``: named by the identities it holds, so reruns never reuse a name."""
    keys = "\n".join(identity_key(it.identity) for it in items)
    return f"shard_{hashlib.sha256(keys.encode()).hexdigest()[:16]}"


def _check_precompute_args(buckets, shard_size: int, rank: int, world: int) -> None:
    positive_int("shard_size", shard_size)
    positive_int("world", world)
    integer("rank", rank, 0, world - 1)
    if not buckets or any(len(b) != 3 for b in buckets):
        raise ValueError(f"buckets: expected a list of [frames, height, width], got {buckets}")


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
    """Encode this rank's share of the ``items`` not yet cached in ``out``; returns counts
    ``{"encoded", "already_done", "unreadable"}`` for this rank (``already_done``, of all
    ranks: encoded or known unreadable by earlier runs).

    Items are keyed by identity (path in the data folder, size, mtime): a rerun encodes new or
    changed videos only, into new shards ``r, r + w, ...`` of the pending ones for rank ``r``.
    """
    from tqdm import tqdm

    _check_precompute_args(buckets, shard_size, rank, world)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = cached_identities(out, items, prune=rank == 0)
    pending = [it for it in items if identity_key(it.identity) not in done]
    shards = [pending[i : i + shard_size] for i in range(0, len(pending), shard_size)]
    counts = {"encoded": 0, "already_done": len(items) - len(pending), "unreadable": 0}
    mine = shards[rank::world]
    bar = tqdm(total=sum(map(len, mine)), disable=not progress, desc="precompute")
    for shard in mine:
        name = shard_name(shard)
        tensors, lines, unreadable = {}, [], []
        for j, item in enumerate(shard):
            bar.update(1)
            try:
                latents, text = _encode_item(item, buckets, encode_video, encode_text)
            except ValueError as err:
                warnings.warn(f"skipping unreadable video {item.path}: {err}", stacklevel=2)
                unreadable.append(json.dumps({**item.identity, "error": str(err)[:500]}))
                continue
            key = f"{name[6:]}_{j:04d}"
            tensors[f"latents/{key}"], tensors[f"text/{key}"] = latents, text
            entry = {"key": key, **item.identity, "caption": item.caption}
            entry |= {"latent_shape": list(latents.shape), "sha256": tensors_digest(latents, text)}
            lines.append(json.dumps(entry))
        counts["encoded"] += len(lines)
        counts["unreadable"] += len(unreadable)
        _write_shard(out, name, tensors, lines, unreadable)
    bar.close()
    return counts


def _encode_item(item: Item, buckets, encode_video, encode_text):
    """``(latents [C, T', H', W'], text [L, D])`` of one item, float32 on the CPU."""
    from cogvx_mini.data.video_io import read_video
    from cogvx_mini.frame_pack import Bucket, assign_bucket, pack_to_bucket

    video = read_video(item.path)
    bucket = assign_bucket(*video.shape[1:], [Bucket(*b) for b in buckets])
    stride = frame_stride(video.shape[1], bucket.frames)
    video = pack_to_bucket(video, bucket, stride).clamp(-1, 1)
    with torch.no_grad():
        text = encode_text([item.caption])[0].float().cpu().contiguous()
        latents = encode_video(video[None]).float().cpu().contiguous()
    return latents, text


def _write_shard(out: Path, name: str, tensors: dict, lines: list[str], unreadable: list[str]):
    """Tensors first, then the index, each atomically: an index names a complete shard."""
    from cogvx_mini.weights.checkpoint import save_weights

    if tensors:
        save_weights(tensors, out / f"{name}.safetensors")
        write_text_atomic(out / f"{name}.jsonl", "\n".join(lines) + "\n")
    if unreadable:
        write_text_atomic(out / f"unreadable_{name[6:]}.jsonl", "\n".join(unreadable) + "\n")


# ---------------------------------------------------------------------------------------------
# Encoders from the library


def load_vae(weights: str, preset: str):
    """The cogvx_mini VAE: ``weights`` is ``mini`` (the shipped mini VAE), a released model's
    diffusers folder (its ``vae/``, converted; the scaling factor is the model's own), or a
    safetensors path of a cogvx_mini VAE state dict of ``preset`` (``mini`` or ``cogvideox``),
    whose ``scaling_factor`` metadata (written with the shipped VAEs) replaces the preset's."""
    from cogvx_mini.vae import VAE3D, VAEConfig, load_mini_vae

    if weights == "mini":
        return load_mini_vae()
    if Path(weights).is_dir():
        from cogvx_mini.weights import vae_from_diffusers

        return vae_from_diffusers(weights)
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"--vae-weights: expected 'mini', a diffusers folder or a safetensors file, got "
            f"{weights} (no such file or folder)"
        )
    config = VAEConfig.mini() if preset == "mini" else VAEConfig.cogvideox()
    return VAE3D.from_file(config, weights)  # reads the file's scaling_factor metadata


def video_encoder(vae, device: torch.device) -> VideoEncoder:
    """``encode(video [1, 3, T, H, W]) -> latents [C_lat, T', H', W']`` (the shape
    ``vae.config.latent_shape`` gives): the posterior mean times the VAE's scaling factor."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = vae.to(device, dtype).eval().requires_grad_(False)
    scale = vae.config.scaling_factor

    def encode(video: torch.Tensor) -> torch.Tensor:
        return (vae.encode(video.to(device, dtype)).mean * scale)[0]

    return encode


def build_video_encoder(weights: str, preset: str, device: torch.device) -> VideoEncoder:
    """:func:`video_encoder` of :func:`load_vae`."""
    return video_encoder(load_vae(weights, preset), device)


def build_text_encoder(kind: str, length: int, dim: int, device: torch.device) -> TextEncoder:
    """``toy`` (``cogvx_mini.data.text_encoder.ToyTextEncoder``) or a local T5 folder
    (``T5TextEncoder``; nothing is downloaded)."""
    from cogvx_mini.data.text_encoder import T5TextEncoder, ToyTextEncoder

    if kind == "toy":
        return ToyTextEncoder(dim, length).encode
    return T5TextEncoder(kind, max_length=length, device=device).encode


def cache_config(vae, vae_weights: str, text_kind: str, config) -> dict:
    """What the cached tensors depend on, for ``manifest.json``: VAE weights (fingerprint) and
    scaling factor, buckets, text encoder (fingerprint) and text length."""
    from cogvx_mini.weights.assets import asset_path

    vae_source = asset_path("vae_mini.safetensors") if vae_weights == "mini" else vae_weights
    return {
        "vae": fingerprint(vae_source),
        "vae_scaling_factor": vae.config.scaling_factor,
        "buckets": [list(b) for b in config.data.buckets],
        "text_encoder": "toy" if text_kind == "toy" else fingerprint(text_kind),
        "text_length": config.data.text_length,
        "text_dim": config.transformer_config().text_dim,
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    parser.add_argument("--shard-size", type=cli_type(positive_int), default=64)
    args = parser.parse_args(argv)
    if not args.videos.is_dir():
        parser.error(f"--videos: expected a folder of videos and captions, got {args.videos}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: expected a folder for the cache, got the file {args.out}")
    if args.vae_weights != "mini" and not Path(args.vae_weights).exists():
        parser.error(
            f"--vae-weights: expected 'mini', a diffusers folder or a safetensors file, got "
            f"{args.vae_weights} (no such file or folder)"
        )
    if args.t5 is not None and not Path(args.t5).is_dir():
        parser.error(f"--t5: expected a local T5 or diffusers folder, got {args.t5}")
    return args


def main(argv: list[str] | None = None) -> None:
    from cogvx_mini.training.scale_config import load_config, validate

    args = _parse_args(argv)
    config = load_config(args.config)
    validate(config)
    items = read_captions(args.videos)  # before any weights load: a bad list fails in a second
    writable_folder("--out", args.out)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    vae_preset = args.vae_config or ("mini" if config.model.preset == "mini" else "cogvideox")
    vae = load_vae(args.vae_weights, vae_preset)
    text_kind = args.t5 or "toy"
    args.out.mkdir(parents=True, exist_ok=True)
    check_manifest(args.out, cache_config(vae, args.vae_weights, text_kind, config))
    tcfg = config.transformer_config()
    encode_text = build_text_encoder(text_kind, config.data.text_length, tcfg.text_dim, device)
    counts = precompute(
        items,
        args.out,
        config.data.buckets,
        video_encoder(vae, device),
        encode_text,
        args.shard_size,
        rank,
        world,
        progress=rank == 0,
    )
    print(f"rank {rank}/{world}: {counts} ({len(items)} videos listed)", flush=True)


if __name__ == "__main__":
    main()
