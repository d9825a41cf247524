"""Expert AdaLN: one timestep, two modalities, separate modulation for text and video.

Text tokens (T5 features) and video tokens (VAE patches) play different roles and have different
feature statistics: other channels are active, with other means and spreads. A LayerNorm equalises
each token's scale but not these, so one shared modulation per channel would have to serve two
distributions. CogVideoX [@yang2024cogvideox] keeps them in one
sequence and one set of attention and feed-forward weights, and gives each modality its own
*expert* adaptive LayerNorm [@peebles2023dit]: the timestep embedding ``temb`` is mapped to a
shift, scale and gate for the video tokens and another shift, scale and gate for the text tokens,
around one shared LayerNorm. The gates scale the residual branches; they start at zero, so every
block is the identity at initialisation (AdaLN-zero).

Ablation variants with the same call signature:

* :class:`SharedAdaLN` — no expert: one shift/scale/gate for all tokens (half the modulation
  weights).
* :class:`MMDiTAdaLN` — the modulation half of an MMDiT block (SD3): a separate LayerNorm *and*
  modulation per modality. The full MMDiT variant also separates the attention projections and
  the feed-forward per modality (see ``cogvx_mini.transformer.MMDiTBlock``); its AdaLN weights
  equal the expert's.

Every variant maps ``(x [B, L+N, D] in [text; video] order, text_len L, temb [B, D_t])`` to
``(modulated x [B, L+N, D], text gate [B, 1, D], video gate [B, 1, D])``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def modulate(
    h: torch.Tensor,
    text_len: int,
    shift_text: torch.Tensor,
    scale_text: torch.Tensor,
    shift_video: torch.Tensor,
    scale_video: torch.Tensor,
) -> torch.Tensor:
    """``h·(1 + scale) + shift`` with text rows ``[:L]`` and video rows ``[L:]`` modulated apart.

    ``h [B, L+N, D]``; shifts and scales ``[B, 1, D]``.
    """
    return torch.cat(
        [
            torch.addcmul(shift_text, h[:, :text_len], 1 + scale_text),
            torch.addcmul(shift_video, h[:, text_len:], 1 + scale_video),
        ],
        dim=1,
    )


def gated_residual(
    x: torch.Tensor,
    y: torch.Tensor,
    text_len: int,
    gate_text: torch.Tensor,
    gate_video: torch.Tensor,
) -> torch.Tensor:
    """``x + gate·y`` on ``[B, L+N, D]``, separate gates ``[B, 1, D]`` for text and video rows."""
    return torch.cat(
        [
            torch.addcmul(x[:, :text_len], y[:, :text_len], gate_text),
            torch.addcmul(x[:, text_len:], y[:, text_len:], gate_video),
        ],
        dim=1,
    )


class ExpertAdaLN(nn.Module):
    """One LayerNorm, two experts: ``temb -> (shift, scale, gate)`` for video and for text.

    ``linear`` maps ``SiLU(temb) [B, D_t]`` to ``6·D`` values in the order video shift, scale, gate,
    text shift, scale, gate (the reference's order). Zero-initialised (AdaLN-zero).
    """

    chunks = 6

    def __init__(self, temb_dim: int, dim: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(temb_dim, self.chunks * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def modulation(self, temb: torch.Tensor) -> list[torch.Tensor]:
        """The ``chunks`` modulation vectors, each ``[B, 1, D]``."""
        return list(self.linear(F.silu(temb))[:, None, :].chunk(self.chunks, dim=-1))

    def forward(
        self, x: torch.Tensor, text_len: int, temb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shift_v, scale_v, gate_v, shift_t, scale_t, gate_t = self.modulation(temb)
        h = modulate(self.norm(x), text_len, shift_t, scale_t, shift_v, scale_v)
        return h, gate_t, gate_v


class SharedAdaLN(ExpertAdaLN):
    """No expert: the same shift, scale and gate for text and video tokens (``3·D`` outputs)."""

    chunks = 3

    def forward(
        self, x: torch.Tensor, text_len: int, temb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.modulation(temb)
        return torch.addcmul(shift, self.norm(x), 1 + scale), gate, gate


class MMDiTAdaLN(ExpertAdaLN):
    """MMDiT-style: separate LayerNorms as well as separate modulations for text and video."""

    def __init__(self, temb_dim: int, dim: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(temb_dim, dim, eps, affine)
        self.norm_text = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(
        self, x: torch.Tensor, text_len: int, temb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shift_v, scale_v, gate_v, shift_t, scale_t, gate_t = self.modulation(temb)
        h_text = torch.addcmul(shift_t, self.norm_text(x[:, :text_len]), 1 + scale_t)
        h_video = torch.addcmul(shift_v, self.norm(x[:, text_len:]), 1 + scale_v)
        return torch.cat([h_text, h_video], dim=1), gate_t, gate_v


ADALN_VARIANTS: dict[str, type[ExpertAdaLN]] = {
    "expert": ExpertAdaLN,
    "none": SharedAdaLN,
    "mmdit": MMDiTAdaLN,
}


class FinalAdaLN(nn.Module):
    """Output modulation: ``LayerNorm(x)·(1 + scale) + shift``, ``(shift, scale)`` from ``temb``.

    ``x [B, N, D]``, ``temb [B, D_t]`` -> ``[B, N, D]``. No gate: the output projection follows.
    """

    def __init__(self, temb_dim: int, dim: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(temb_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(temb))[:, None, :].chunk(2, dim=-1)
        return torch.addcmul(shift, self.norm(x), 1 + scale)
