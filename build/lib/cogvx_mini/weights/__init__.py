"""Weights on disk: atomic checkpoints, the shipped mini weights, and released diffusers models.

- ``checkpoint``: atomic, integrity-checked saving and loading (safetensors + JSON).
- ``assets/``: the small trained weights the chapters use.
- ``diffusers``: every key map and config translation to and from the diffusers layout.
- ``loading``: weights to fine-tune from (a cogvx_mini state dict or a diffusers folder).
"""

from cogvx_mini.weights.diffusers import (
    schedule_from_diffusers,
    transformer_from_diffusers,
    vae_from_diffusers,
)

__all__ = ["schedule_from_diffusers", "transformer_from_diffusers", "vae_from_diffusers"]
