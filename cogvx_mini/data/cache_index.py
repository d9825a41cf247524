"""Identity and integrity of cached latents: what a cache entry was made from, and its digest.

``scale/precompute.py`` writes one index line per cached video, keyed by the video's identity
(its path inside the data folder, size and modification time), with a SHA-256 digest of the
tensors it stored; readers check the digest when they load the entry, so a shard with flipped
bytes is refused instead of training on noise. The cache's ``manifest.json`` records the
fingerprint of the configuration that made it (VAE weights and scaling factor, buckets, text
encoder and length), so a rerun with another configuration is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from cogvx_mini.weights.checkpoint import hash_file_into

MANIFEST = "manifest.json"
SMALL_FILE = 1 << 20  # files up to 1 MiB (configs, tokenizers) are fingerprinted by content


def file_identity(path: Path, root: Path) -> dict:
    """``{"file", "size", "mtime_ns"}`` of ``path`` (``file`` relative to ``root``)."""
    stat = path.stat()
    return {"file": path.relative_to(root).as_posix(), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}  # fmt: skip


def identity_key(entry: dict) -> str:
    """The string that names one video version: ``file|size|mtime_ns``."""
    return f"{entry.get('file')}|{entry.get('size')}|{entry.get('mtime_ns')}"


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a weights file's content, or of a folder's file list (names and sizes) plus
    the content of its small files: the same on every machine for the same download."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(f"{file.relative_to(path.parent).as_posix()}:{file.stat().st_size};".encode())
        if path.is_file() or file.stat().st_size <= SMALL_FILE:
            hash_file_into(digest, file)
    return digest.hexdigest()


def tensors_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the bytes of ``tensors`` (as stored: contiguous, on the CPU)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_entry(entry: dict, shard: Path, *tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``tensors`` read for ``entry`` do not match its stored digest."""
    expected = entry.get("sha256")
    if expected is not None and tensors_digest(*tensors) != expected:
        raise ValueError(
            f"{shard}: entry {entry.get('key')} ({entry.get('file')}): expected tensors with "
            f"SHA-256 {expected[:16]}..., got other bytes: the shard is corrupt; delete it and "
            "its .jsonl index, and rerun precompute to encode those videos again"
        )


def check_manifest(folder: Path, config: dict) -> None:
    """Write ``folder/manifest.json`` with ``config``, or check the one there matches it.

    Raises ``ValueError`` naming the differing keys for a cache made with another configuration,
    and for a folder holding shards but no manifest (a foreign or older cache).
    """
    path = folder / MANIFEST
    if path.is_file():
        recorded = json.loads(path.read_text()).get("config", {})
        differ = sorted(
            k for k in recorded.keys() | config.keys() if recorded.get(k) != config.get(k)
        )
        if differ:
            changes = "; ".join(
                f"{k}: cache {recorded.get(k)!r}, now {config.get(k)!r}" for k in differ
            )
            raise ValueError(
                f"--out {folder}: expected a cache made with this configuration, got one made "
                f"with another ({changes}); use a new --out folder or delete this one"
            )
        return
    if any(folder.glob("shard_*")):
        raise ValueError(
            f"--out {folder}: expected an empty folder or a cache with a {MANIFEST}, got shards "
            "without one (an older or foreign cache); use a new --out folder"
        )
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")  # ranks write the same text
    tmp.write_text(json.dumps({"config": config}, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
