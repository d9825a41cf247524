"""The shipped mini transformer's file format: safetensors whose metadata carries the config.

The mini training loop (``cogvx_mini.training.train``) writes it; ``cogvx_mini.pipeline.load_mini``
and ``--init-from`` read it.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_NAME = "transformer_mini.safetensors"
I2V_WEIGHTS_NAME = "transformer_i2v_mini.safetensors"  # the image-to-video one (training/i2v.py)
# Runtime choices that older files stored with the model config; a config now describes the
# model only (checkpointing, compile and attention kernels are applied from cogvx_mini.parallel).
RETIRED_CONFIG_KEYS = ("checkpointing", "checkpoint_every", "compile_blocks", "attention_backend")


def read_mini_weights(path: str | Path):
    """``(TransformerConfig, state dict, metadata)`` of a weights file the mini training loop
    wrote (the config, schedule and latent scale travel in its safetensors metadata)."""
    from safetensors import safe_open

    from cogvx_mini.transformer import TransformerConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no transformer weights at {path}: run `make train`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "transformer_config" not in meta:
        raise ValueError(f"{path} has no transformer_config metadata: not written by cogvx_mini")
    fields = json.loads(meta["transformer_config"])
    for key in RETIRED_CONFIG_KEYS:
        fields.pop(key, None)
    return TransformerConfig(**fields), state, meta
