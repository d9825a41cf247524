"""Text encoders behind one interface: ``encoder.encode(prompts) -> [B, L, D]``.

CogVideoX conditions on T5-XXL: each prompt is tokenised, padded (or truncated) to 226 tokens and
encoded to 4096-d vectors; padding tokens are encoded too and the transformer attends to them (no
mask). The empty prompt ``""`` gives the unconditional embedding of classifier-free guidance.

* :class:`ToyTextEncoder` is the mini model's: frozen, deterministic, with no weights to ship.
  Every word gets a fixed random vector derived from the word itself, plus the encoding of its
  position and of its clause (``"... while ..."`` separates objects), so "red" in the first clause
  and "red" in the second are different vectors that the transformer can bind to the right
  motion.
* :class:`T5TextEncoder` runs a real T5 encoder through ``transformers``, loaded only from a local
  folder (a diffusers model folder with ``tokenizer/`` and ``text_encoder/``, or one folder holding
  both); nothing is downloaded.
"""

from __future__ import annotations

import math
import re
import warnings
import zlib
from pathlib import Path
from typing import Protocol

import torch

from cogvx_mini.checks import positive_int, prompt_list


class TextEncoder(Protocol):
    """What the pipeline and the training loop need from a text encoder."""

    max_length: int
    dim: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings ``[B, max_length, dim]`` (float32) of ``B`` prompts."""
        ...


def _sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding ``[N, dim]`` of integer ``positions`` ``[N]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    angles = positions.double()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class ToyTextEncoder:
    """Frozen deterministic text encoder for the mini model: ``encode(prompts) -> [B, L, D]``.

    A token is a lower-cased word. Its vector is ``word + position + clause``: ``word`` is a
    Gaussian vector of norm ~1 seeded by the word's CRC32 (any word works; the same word is the
    same vector on every machine), ``position`` a sinusoidal encoding of its index (norm 0.5),
    ``clause`` a fixed random vector (norm ~1) for the clause number (split at "while"). Padding
    tokens are zero vectors, and the empty prompt is all padding: the unconditional embedding.
    """

    def __init__(self, dim: int = 64, max_length: int = 32):
        if positive_int("dim", dim) % 2:
            raise ValueError(f"dim: expected an even embedding dim, got {dim}")
        positive_int("max_length", max_length)
        self.dim, self.max_length = dim, max_length
        self._clauses = torch.randn(8, dim, generator=torch.Generator().manual_seed(1234))
        self._clauses /= dim**0.5
        # Scaled to norm 0.5: the word itself stays the largest part of each vector.
        self._positions = _sinusoid(torch.arange(max_length), dim) * (0.5 / (dim / 2) ** 0.5)

    def word_vector(self, word: str) -> torch.Tensor:
        """The fixed vector ``[dim]`` of one word (norm ~1)."""
        g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
        return torch.randn(self.dim, generator=g) / self.dim**0.5

    def tokens(self, prompt: str) -> list[str]:
        """The lower-cased ASCII words (``[a-z0-9]+``) of ``prompt``; anything else separates."""
        return re.findall(r"[a-z0-9]+", prompt.lower())

    def checked_tokens(self, prompt: str) -> list[str]:
        """:meth:`tokens`, saying what is lost: the toy vocabulary is ASCII (the toy world's
        captions), so letters of other scripts are dropped. A prompt with such letters and no
        ASCII word raises ``ValueError`` (it would silently be the empty, unconditional prompt);
        one with some ASCII words warns, naming the dropped characters."""
        words = self.tokens(prompt)
        dropped = "".join(sorted({c for c in prompt if c.isalnum() and not c.isascii()}))
        if dropped and not words:
            raise ValueError(
                f"prompts: the toy text encoder reads ASCII words (a-z, 0-9) only, got {prompt!r} "
                "with none: it would encode as the empty (unconditional) prompt; use a T5 "
                "encoder for other scripts"
            )
        if dropped:
            warnings.warn(
                f"the toy text encoder drops the non-ASCII characters {dropped!r} of {prompt!r}",
                stacklevel=3,
            )
        return words

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings ``[B, max_length, dim]``; words beyond ``max_length`` are truncated.

        ``""`` (or only punctuation) is the unconditional embedding; see :meth:`checked_tokens`
        for non-ASCII text."""
        prompts = prompt_list("prompts", prompts)
        out = torch.zeros(len(prompts), self.max_length, self.dim)
        for b, prompt in enumerate(prompts):
            clause = 0
            for i, word in enumerate(self.checked_tokens(prompt)[: self.max_length]):
                if word == "while":
                    clause += 1
                c = self._clauses[min(clause, len(self._clauses) - 1)]
                out[b, i] = self.word_vector(word) + self._positions[i] + c
        return out


def _find(folder: Path, name: str) -> Path:
    return folder / name if (folder / name).is_dir() else folder


class T5TextEncoder:
    """A T5 encoder from a local folder: ``encode(prompts) -> [B, max_length, d_model]``.

    ``folder`` is a diffusers model folder (``tokenizer/``, ``text_encoder/``) or one folder with
    the tokenizer and encoder files. Prompts are padded to ``max_length`` (226 in CogVideoX) and
    encoded without an attention mask, as diffusers' CogVideoX pipeline does, so the embeddings
    are the same.
    """

    def __init__(
        self,
        folder: str | Path,
        max_length: int = 226,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoTokenizer, T5EncoderModel

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"expected a local folder with a T5 tokenizer and encoder, got {folder}"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(
            _find(folder, "tokenizer"), local_files_only=True
        )
        self.model = T5EncoderModel.from_pretrained(
            _find(folder, "text_encoder"), local_files_only=True, torch_dtype=dtype
        )
        self.model.to(device).eval().requires_grad_(False)
        self.max_length, self.dim = max_length, self.model.config.d_model
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings ``[B, max_length, d_model]`` of any text (T5's tokenizer covers it)."""
        prompts = prompt_list("prompts", prompts)
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        return self.model(ids.to(self.device))[0]
