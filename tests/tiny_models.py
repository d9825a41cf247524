"""Tiny randomly initialised reference models shared by the interop tests (no downloads)."""

from __future__ import annotations

import pytest
import torch

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

WORDS = "a small large red green blue circle square triangle moves left right up down while"


def tiny_t5(num_layers: int = 2, seed: int = 0):
    """A word-level T5 tokenizer (appends ``</s>``) and a random 16-d T5 encoder."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS.split())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    config = transformers.T5Config(
        vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=num_layers, num_heads=4
    )
    torch.manual_seed(seed)
    return tokenizer, transformers.T5EncoderModel(config)
