"""Training data for scale/: the latent cache, a toy-world stand-in, and the batch plan.

A dataset here is a list of ``(latents [C, T', H', W'], text [L, D_text], caption)`` samples
grouped in *buckets* of equal latent shape (a batch always comes from one bucket). Two kinds:

- :class:`LatentCache` reads what ``scale/precompute.py`` wrote: shards of safetensors (VAE
  latents and text embeddings) with one ``.jsonl`` index per shard.
- :class:`ToyLatents` makes samples from ``cogvx_mini.data.toyworld`` without a VAE or T5: the
  video is average-pooled to the latent grid (first frame alone, then groups of 4 frames, 8x8
  pixels) and its RGB mapped to ``C`` channels by a fixed matrix; the caption goes through the
  library's ``ToyTextEncoder``. Enough structure to learn from, cheap enough for tests on 2 CPU
  cores.

:class:`BatchPlan` decides everything random about a step from ``(seed, step)`` alone: the bucket,
the global batch's sample indices, their timesteps (explicit uniform sampling: the timestep range
cut into one interval per sample of the global batch) and their noise. The same step therefore
trains on the same data whatever the number of GPUs, and a resumed run continues exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from cogvx_mini.timestep_sampling import batch_timesteps

# ---------------------------------------------------------------------------------------------
# Datasets


class LatentSource:
    """Fixed latents grouped by latent shape, served by index. Subclasses fill ``self.buckets``
    and implement ``get``.

    Not the mini loop's :class:`cogvx_mini.training.train.LatentDataset`, which keeps each
    clip's VAE posterior (mean and std) in memory and samples a new latent every step."""

    buckets: dict[tuple[int, ...], list[int]]

    def __len__(self) -> int:
        return sum(len(v) for v in self.buckets.values())

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latents [C, T', H', W'], text [L, D_text])`` of sample ``index`` (float32)."""
        raise NotImplementedError

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latents [B, C, T', H', W'], text [B, L, D_text])`` of samples of one bucket."""
        pairs = [self.get(i) for i in indices]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def pseudo_latents(video: torch.Tensor, channels: int) -> torch.Tensor:
    """Toy stand-in for VAE latents: ``[3, 4k+1, H, W]`` -> ``[channels, k+1, H/8, W/8]``.

    Average pools like the VAE compresses (first frame alone, then 4 frames; 8x8 pixels) and mixes
    RGB into ``channels`` with a fixed matrix, so the result moves with the objects of the scene.
    """
    first, rest = video[:, :1], video[:, 1:]
    rest = rearrange(rest, "c (t f) h w -> c t f h w", f=4).mean(2)
    pooled = torch.cat([first, rest], dim=1)
    pooled = F.avg_pool2d(rearrange(pooled, "c t h w -> t c h w"), 8)
    mix = torch.randn(channels, 3, generator=torch.Generator().manual_seed(0)) / 3**0.5
    return torch.einsum("kc,tchw->kthw", mix, pooled)


class ToyLatents(LatentSource):
    """``samples`` toy-world scenes per bucket as pseudo-latents and ``ToyTextEncoder`` embeddings.

    ``buckets``: pixel shapes ``(frames, height, width)``; scene seeds differ between buckets.
    """

    def __init__(
        self,
        buckets: list[list[int]],
        samples: int,
        channels: int,
        text_length: int,
        text_dim: int,
    ):
        from cogvx_mini.data.text_encoder import ToyTextEncoder
        from cogvx_mini.data.toyworld import sample_video

        encoder = ToyTextEncoder(text_dim, text_length)
        self.items: list[tuple[torch.Tensor, torch.Tensor, str]] = []
        self.buckets = {}
        for b, (frames, height, width) in enumerate(buckets):
            for i in range(samples):
                video, caption = sample_video(b * 100_003 + i, frames, height, width)
                lat = pseudo_latents(video, channels)
                text = encoder.encode([caption])[0]
                self.buckets.setdefault(tuple(lat.shape), []).append(len(self.items))
                self.items.append((lat, text, caption))

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        lat, text, _ = self.items[index]
        return lat, text


class LatentCache(LatentSource):
    """The cache written by ``scale/precompute.py``: ``DIR/shard_*.safetensors`` + ``.jsonl``.

    Each index line is ``{"key", "caption", "latent_shape"}``; the shard holds ``latents/<key>``
    ``[C, T', H', W']`` and ``text/<key>`` ``[L, D]``. Shards are opened memory-mapped on demand.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no latent cache folder at {self.root}")
        self.entries: list[tuple[Path, str]] = []
        self.buckets = {}
        for index in sorted(self.root.glob("shard_*.jsonl")):
            shard = index.with_suffix(".safetensors")
            if not shard.is_file():
                continue  # an interrupted precompute: the index is written after the shard
            for line in index.read_text().splitlines():
                entry = json.loads(line)
                key = tuple(entry["latent_shape"])
                self.buckets.setdefault(key, []).append(len(self.entries))
                self.entries.append((shard, entry))
        if not self.entries:
            raise ValueError(
                f"no cached samples in {self.root}: expected shard_*.safetensors with "
                "shard_*.jsonl indexes written by scale/precompute.py"
            )
        self._open: dict[Path, object] = {}

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors import safe_open

        from cogvx_mini.data.cache_index import check_entry

        shard, entry = self.entries[index]
        if shard not in self._open:
            self._open[shard] = safe_open(str(shard), framework="pt")
        f = self._open[shard]
        key = entry["key"]
        latents, text = f.get_tensor(f"latents/{key}"), f.get_tensor(f"text/{key}")
        check_entry(entry, shard, latents, text)  # the digest precompute stored in the index
        return latents.float(), text.float()


# ---------------------------------------------------------------------------------------------
# The batch plan: everything random about a step, from (seed, step)


@dataclass
class StepPlan:
    """What one optimiser step trains on: a bucket, and per sample of the global batch its index
    in the dataset, its timestep and the seed of its noise."""

    bucket: tuple[int, ...]
    indices: list[int]
    timesteps: list[int]
    noise_seeds: list[int]


class BatchPlan:
    """Deterministic global batches for ``dataset``: ``plan(step)`` -> :class:`StepPlan`.

    The bucket is drawn with probability proportional to its size; samples are drawn without
    replacement within the bucket (with replacement if it is smaller than the global batch).
    Timesteps follow explicit uniform sampling over the *global* batch
    (``cogvx_mini.timestep_sampling.batch_timesteps`` with one interval per sample): ``[0, T)`` is
    cut into ``global_batch`` equal intervals and sample ``j`` draws uniformly from interval
    ``j``, so the ranks together cover the whole range every step (with one sample per rank this
    is exactly the paper's one interval per data-parallel rank), whatever the number of GPUs.
    """

    def __init__(
        self, dataset: LatentSource, global_batch: int, seed: int, num_timesteps: int = 1000
    ):
        if global_batch > num_timesteps:
            raise ValueError(
                f"expected a global batch of at most {num_timesteps}, got {global_batch}"
            )
        self.dataset, self.global_batch, self.seed = dataset, global_batch, seed
        self.num_timesteps = num_timesteps
        self.keys = sorted(dataset.buckets)
        sizes = np.array([len(dataset.buckets[k]) for k in self.keys], dtype=float)
        self.weights = sizes / sizes.sum()

    def plan(self, step: int) -> StepPlan:
        rng = np.random.default_rng([self.seed, step])
        key = self.keys[rng.choice(len(self.keys), p=self.weights)]
        members = self.dataset.buckets[key]
        g = self.global_batch
        picks = rng.choice(len(members), size=g, replace=len(members) < g)
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        timesteps = batch_timesteps(g, g, self.num_timesteps, generator).tolist()
        noise_seeds = [int(s) for s in rng.integers(0, 2**62, size=g)]
        return StepPlan(key, [members[int(p)] for p in picks], timesteps, noise_seeds)


def noise_like(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """``[B, *shape]`` standard normal noise, sample ``b`` drawn from its own ``seeds[b]``."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
