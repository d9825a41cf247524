"""Tiny randomly initialised reference models shared by the interop tests (no downloads)."""

from __future__ import annotations

import pytest

# A diffusers CogVideoXTransformer3DModel shaped like the released ones, small enough for a CPU.
# Its training grid is 8 x 12 latents.
SMALL_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    time_embed_dim=24,
    text_embed_dim=20,
    num_layers=2,
    sample_height=8,
    sample_width=12,
    sample_frames=9,
    max_text_seq_length=7,
)


def tiny_t5(num_layers: int = 2, seed: int = 0):
    """A word-level T5 tokenizer (appends ``</s>``) and a random 16-d T5 encoder."""
    pytest.importorskip("transformers")
    from cogvx_mini.bench.end_to_end import word_t5

    return word_t5(16, num_layers, seed)
