"""The expert transformer of CogVideoX: latents + text + timestep -> v-prediction.

``CogVideoXTransformer(config)(latents [B, C, T, H, W], text [B, L, D_text], timesteps [B])``
returns ``[B, C, T, H, W]``. On the way [@yang2024cogvideox]:

1. ``embed``: patchify the latents into ``N = T/q · H/p · W/p`` video tokens and project them to
   the width ``D`` (plus the 3D sincos embedding for 2B-style models), project the text to ``D``,
   embed the timestep (sinusoid + MLP) into ``temb``, and build the 3D-RoPE tables (5B-style).
2. ``blocks``: expert blocks over the ``[text; video]`` sequence — expert AdaLN, full 3D attention
   with QK-norm, gated residual, expert AdaLN, one feed-forward for both modalities, gated
   residual. Each block is ``block(video, text, temb, rope) -> (video, text)``.
3. ``unembed``: LayerNorm, final AdaLN, linear to ``C·q·p·p`` per token, unpatchify.

``TransformerConfig`` builds the mini model, the released 2B and 5B shapes and the ablations
(positions ``rope``/``sincos``, attention ``full``/``2d1d``, AdaLN ``expert``/``none``/``mmdit``),
and describes the model only: how it runs (activation checkpointing, compiled blocks, attention
kernels, several GPUs) is applied to a built model from outside by :mod:`cogvx_mini.parallel`.
Weights in the diffusers layout convert with :mod:`cogvx_mini.weights.diffusers`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cogvx_mini.adaln import ADALN_VARIANTS, FinalAdaLN, MMDiTAdaLN, gated_residual
from cogvx_mini.attention import Attention, MMDiTAttention
from cogvx_mini.patchify import patch_grid, patchify, unpatchify
from cogvx_mini.rope import positions_extrapolated, positions_interpolated, rope_3d, sincos_3d

Rope = tuple[torch.Tensor, torch.Tensor] | None
# Timesteps index the training schedule's 1000 steps (``NoiseSchedule.num_train_timesteps``);
# samplers pass fractional ones too, so any value in [0, 1000) is valid.
TRAIN_TIMESTEPS = 1000
# The ``ofs`` value diffusers' CogVideoX 1.5-I2V pipeline passes at every step.
OFS_INFERENCE = 2.0


@dataclass
class TransformerConfig:
    """Every hyper-parameter of the transformer. ``dim = num_heads · head_dim``.

    Ablation switches: ``positions`` (``rope`` 3D-RoPE as 5B, ``sincos`` absolute as 2B, ``none``),
    ``attention`` (``full`` 3D, or ``2d1d``: layers alternate spatial and temporal attention),
    ``adaln`` (``expert``, ``none`` = one shared modulation, ``mmdit`` = separate weights per
    modality). A grid other than the training grid numbers its positions by ``rope_grid`` for
    RoPE (5B: squeezed into ``rope_base_grid``) and ``sincos_grid`` for sincos (2B: extended;
    ``interpolate`` squeezes it into ``rope_base_grid`` as RoPE does, an ablation's switch).
    ``learned_positions``: an extra stored embedding over ``[text; video]`` for the
    ``base_latent_frames`` x ``rope_base_grid`` grid only (CogVideoX-5B-I2V). ``ofs_embed_dim``:
    a second scalar condition, ``ofs``, embedded like the timestep and added to it (CogVideoX
    1.5-I2V; the released pipelines always pass :data:`OFS_INFERENCE`).

    The model only: run-time choices (checkpointing, compile, attention kernel) are applied to a
    built model by :mod:`cogvx_mini.parallel.runtime`.
    """

    num_layers: int = 30
    num_heads: int = 30
    head_dim: int = 64
    in_channels: int = 16
    out_channels: int = 16
    time_embed_dim: int = 512
    text_dim: int = 4096
    max_text_len: int = 226
    patch_size: int = 2
    temporal_patch_size: int = 1
    patch_bias: bool = True
    positions: str = "sincos"
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    rope_grid: str = "interpolate"
    sincos_grid: str = "extrapolate"
    rope_base_grid: tuple[int, int] = (30, 45)
    rope_theta: float = 10000.0
    learned_positions: bool = False
    ofs_embed_dim: int | None = None
    base_latent_frames: int = 13
    attention: str = "full"
    adaln: str = "expert"
    qk_norm: bool = True
    attention_bias: bool = True
    ff_mult: int = 4
    norm_eps: float = 1e-5
    norm_affine: bool = True
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0

    def __post_init__(self) -> None:
        choices = {
            "positions": ("rope", "sincos", "none"),
            "rope_grid": ("interpolate", "extrapolate"),
            "sincos_grid": ("interpolate", "extrapolate"),
            "attention": ("full", "2d1d"),
            "adaln": tuple(ADALN_VARIANTS),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"expected {name} in {allowed}, got {getattr(self, name)!r}")
        if self.ofs_embed_dim not in (None, self.time_embed_dim):
            raise ValueError(  # the ofs embedding is added to the timestep's
                f"expected ofs_embed_dim None or time_embed_dim={self.time_embed_dim}, "
                f"got {self.ofs_embed_dim}"
            )
        self.rope_base_grid = tuple(self.rope_base_grid)

    @property
    def dim(self) -> int:
        """Width of the token stream, ``num_heads · head_dim``."""
        return self.num_heads * self.head_dim

    @property
    def layer_kinds(self) -> list[str]:
        """Attention kind of each layer: all ``full``, or ``spatial``/``temporal`` alternating."""
        if self.attention == "2d1d":
            return ["spatial" if i % 2 == 0 else "temporal" for i in range(self.num_layers)]
        return ["full"] * self.num_layers

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def mini(cls, **overrides: Any) -> TransformerConfig:
        """CPU-sized: 4 layers of width 128 (4 heads of 32), 5B-style 3D-RoPE, 64-d text of at most
        32 tokens; sized for 17 x 64 x 64 videos (5 x 8 x 8 latents -> 80 video tokens)."""
        base = dict(
            num_layers=4,
            num_heads=4,
            head_dim=32,
            time_embed_dim=128,
            text_dim=64,
            max_text_len=32,
            positions="rope",
            rope_base_grid=(4, 4),
        )
        return cls(**{**base, **overrides})

    @classmethod
    def cogvideox_2b(cls, **overrides: Any) -> TransformerConfig:
        """CogVideoX-2B: 30 layers, 30 heads of 64 (1920), 3D sincos positions (scale 1.875)."""
        return cls(**{"num_layers": 30, "num_heads": 30, "positions": "sincos", **overrides})

    @classmethod
    def cogvideox_5b(cls, **overrides: Any) -> TransformerConfig:
        """CogVideoX-5B: 42 layers, 48 heads of 64 (3072), 3D-RoPE interpolated to a 30x45 grid."""
        return cls(**{"num_layers": 42, "num_heads": 48, "positions": "rope", **overrides})

    @classmethod
    def cogvideox_5b_i2v(cls, **overrides: Any) -> TransformerConfig:
        """CogVideoX-5B-I2V: 5B with 32 input channels (noisy latents and the image's latents
        concatenated) and a learned ``[text; video]`` embedding for the 13 x 30 x 45 grid."""
        i2v = {"in_channels": 32, "out_channels": 16, "learned_positions": True}
        return cls.cogvideox_5b(**{**i2v, **overrides})

    @classmethod
    def cogvideox1_5_5b(cls, **overrides: Any) -> TransformerConfig:
        """CogVideoX1.5-5B: 5B's blocks, a temporal patch of 2 (no patch bias in the released
        file, so a linear patch embedding with bias), RoPE sliced from a 150 x 150 table."""
        one_five = dict(
            temporal_patch_size=2,
            rope_grid="extrapolate",
            rope_base_grid=(150, 150),
            base_latent_frames=21,
        )
        return cls.cogvideox_5b(**{**one_five, **overrides})

    @classmethod
    def cogvideox1_5_5b_i2v(cls, **overrides: Any) -> TransformerConfig:
        """CogVideoX1.5-5B-I2V: 1.5-5B with 32 input channels and the ``ofs`` embedding."""
        i2v = {"in_channels": 32, "out_channels": 16, "ofs_embed_dim": 512}
        return cls.cogvideox1_5_5b(**{**i2v, **overrides})

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any], **overrides: Any) -> TransformerConfig:
        """See :func:`cogvx_mini.weights.diffusers.transformer_config_from_diffusers`."""
        from cogvx_mini.weights.diffusers import transformer_config_from_diffusers

        return transformer_config_from_diffusers(config, **overrides)

    def to_diffusers_config(self) -> dict[str, Any]:
        """See :func:`cogvx_mini.weights.diffusers.transformer_config_to_diffusers`."""
        from cogvx_mini.weights.diffusers import transformer_config_to_diffusers

        return transformer_config_to_diffusers(self)


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``[B]`` -> float32 ``[B, dim]``.

    ``[cos | sin]`` (``flip_sin_to_cos``) of ``t · 10000^(-i / (dim/2 - freq_shift))``.
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    angles = timesteps.float()[:, None] * torch.exp(exponent / (half - freq_shift))[None, :]
    sin, cos = angles.sin(), angles.cos()
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepMLP(nn.Module):
    """``[B, D] sinusoid -> Linear -> SiLU -> Linear -> [B, D_t]``."""

    def __init__(self, dim: int, temb_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, temb_dim)
        self.linear_2 = nn.Linear(temb_dim, temb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class FeedForward(nn.Module):
    """``[B, S, D] -> Linear(D, mult·D) -> GELU(tanh) -> Linear -> [B, S, D]``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, mult * dim)
        self.fc2 = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    """Expert block: ``block(video [B,N,D], text [B,L,D], temb [B,D_t], rope) -> (video, text)``.

    AdaLN #1 -> attention over ``[text; video]`` -> gated residual -> AdaLN #2 -> one feed-forward
    over the whole sequence -> gated residual, with separate text/video gates. ``kind`` is the
    attention layer's kind (``full``, or ``spatial``/``temporal`` in a 2D+1D model, which needs
    ``grid``).
    """

    def __init__(self, config: TransformerConfig, kind: str = "full") -> None:
        super().__init__()
        c = config
        adaln = ADALN_VARIANTS[c.adaln]
        self.norm1 = adaln(c.time_embed_dim, c.dim, c.norm_eps, c.norm_affine)
        self.attn = self._attention_class()(
            c.dim, c.num_heads, c.head_dim, qk_norm=c.qk_norm, bias=c.attention_bias, kind=kind
        )
        self.norm2 = adaln(c.time_embed_dim, c.dim, c.norm_eps, c.norm_affine)
        self.ff = FeedForward(c.dim, c.ff_mult)

    @staticmethod
    def _attention_class() -> type[Attention]:
        return Attention

    def feed_forward(self, h: torch.Tensor, text_len: int) -> torch.Tensor:
        return self.ff(h)

    def forward_joint(
        self, x: torch.Tensor, text_len: int, temb: torch.Tensor, rope: Rope = None, grid=None
    ) -> torch.Tensor:
        """The block on the concatenated sequence ``x [B, L+N, D]`` in ``[text; video]`` order."""
        h, gate_text, gate_video = self.norm1(x, text_len, temb)
        x = gated_residual(x, self.attn(h, text_len, rope, grid), text_len, gate_text, gate_video)
        h, gate_text, gate_video = self.norm2(x, text_len, temb)
        return gated_residual(x, self.feed_forward(h, text_len), text_len, gate_text, gate_video)

    def forward(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        temb: torch.Tensor,
        rope: Rope = None,
        grid: tuple[int, int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = text.shape[1]
        x = self.forward_joint(torch.cat([text, video], dim=1), text_len, temb, rope, grid)
        return x[:, text_len:], x[:, :text_len]


class MMDiTBlock(TransformerBlock):
    """MMDiT-style block: text tokens get their own LayerNorm, modulation, attention projections
    and feed-forward; both modalities still meet in one joint attention."""

    def __init__(self, config: TransformerConfig, kind: str = "full") -> None:
        if config.adaln != "mmdit":
            raise ValueError(f"MMDiTBlock needs adaln='mmdit', got {config.adaln!r}")
        super().__init__(config, kind)
        self.ff_text = FeedForward(config.dim, config.ff_mult)
        assert isinstance(self.norm1, MMDiTAdaLN)

    @staticmethod
    def _attention_class() -> type[Attention]:
        return MMDiTAttention

    def feed_forward(self, h: torch.Tensor, text_len: int) -> torch.Tensor:
        return torch.cat([self.ff_text(h[:, :text_len]), self.ff(h[:, text_len:])], dim=1)


class CogVideoXTransformer(nn.Module):
    """CogVideoX's denoiser. ``forward(latents [B,C,T,H,W], text [B,L,D_text], timesteps [B])``
    -> v-prediction ``[B,C,T,H,W]``; also usable piece by piece: ``embed``, ``blocks``, ``unembed``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        patch_features = c.in_channels * c.temporal_patch_size * c.patch_size**2
        self.patch_embed = nn.Linear(patch_features, c.dim, bias=c.patch_bias)
        self.text_proj = nn.Linear(c.text_dim, c.dim)
        self.time_embed = TimestepMLP(c.dim, c.time_embed_dim)
        self.ofs_embed = TimestepMLP(c.ofs_embed_dim, c.ofs_embed_dim) if c.ofs_embed_dim else None
        block_class = MMDiTBlock if c.adaln == "mmdit" else TransformerBlock
        self.blocks = nn.ModuleList(block_class(c, kind) for kind in c.layer_kinds)
        self.norm_final = nn.LayerNorm(c.dim, eps=c.norm_eps, elementwise_affine=c.norm_affine)
        self.norm_out = FinalAdaLN(c.time_embed_dim, c.dim, c.norm_eps, c.norm_affine)
        out_features = c.out_channels * c.temporal_patch_size * c.patch_size**2
        self.proj_out = nn.Linear(c.dim, out_features)
        self._tables: dict[tuple, Any] = {}
        if c.learned_positions:
            # A stored (in diffusers: persistent buffer) embedding for the training grid only.
            base = (c.base_latent_frames, *c.rope_base_grid)
            table = torch.zeros(1, c.max_text_len + math.prod(base), c.dim)
            table[0, c.max_text_len :] = sincos_3d(
                c.dim, base, c.spatial_interpolation_scale, c.temporal_interpolation_scale
            )
            self.register_buffer("pos_embedding", table)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linears with zero biases; zero AdaLN modulations and output projection,
        so every block starts as the identity and the model predicts zero (AdaLN-zero, DiT)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, (FinalAdaLN, *ADALN_VARIANTS.values())):
                nn.init.zeros_(module.linear.weight)
                nn.init.zeros_(module.linear.bias)
        nn.init.zeros_(self.proj_out.weight)

    # -- shapes and checks ------------------------------------------------------------------

    def grid(self, latents_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        """Token grid ``(t, h, w)`` of latents ``[B, C, T, H, W]``."""
        c = self.config
        return patch_grid(*latents_shape[2:], c.patch_size, c.temporal_patch_size)

    def check_inputs(self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor):
        """Raise ``ValueError`` unless ``latents [B, C_in, T, H, W]`` (a grid the patches
        divide), ``text [B, L <= max_text_len, D_text]`` and ``timesteps [B]`` in ``[0, 1000)``."""
        c = self.config
        if latents.ndim != 5 or latents.shape[1] != c.in_channels:
            raise ValueError(
                f"expected latents [B, {c.in_channels}, T, H, W], got shape {tuple(latents.shape)}"
            )
        self.grid(latents.shape)
        if text.ndim != 3 or text.shape[2] != c.text_dim or text.shape[0] != latents.shape[0]:
            raise ValueError(
                f"expected text [{latents.shape[0]}, L, {c.text_dim}], got {tuple(text.shape)}"
            )
        if text.shape[1] > c.max_text_len:
            raise ValueError(f"expected at most {c.max_text_len} text tokens, got {text.shape[1]}")
        if timesteps.shape != (latents.shape[0],):
            raise ValueError(
                f"expected timesteps [{latents.shape[0]}], got shape {tuple(timesteps.shape)}"
            )
        outside = ~((timesteps >= 0) & (timesteps < TRAIN_TIMESTEPS))  # NaN compares False
        if outside.any():
            raise ValueError(
                f"expected finite timesteps in [0, {TRAIN_TIMESTEPS}) (fractions are fine), got "
                f"{timesteps[outside].tolist()[:4]}"
            )

    # -- the three stages -------------------------------------------------------------------

    def position_tables(self, grid: tuple[int, int, int], device, dtype) -> Any:
        """Cached per (grid, device, dtype): sincos embedding ``[N, D]`` or rope ``(cos, sin)``."""
        c = self.config
        key = (c.positions, grid, str(device), dtype)
        if key not in self._tables:
            mapping = c.sincos_grid if c.positions == "sincos" else c.rope_grid
            if mapping == "interpolate":
                pos = positions_interpolated(grid, c.rope_base_grid)
            else:
                pos = positions_extrapolated(grid)
            if c.positions == "sincos":
                table = sincos_3d(
                    c.dim, grid, c.spatial_interpolation_scale, c.temporal_interpolation_scale, pos
                ).to(device=device, dtype=dtype)
            elif c.positions == "rope":
                cos, sin = rope_3d(c.head_dim, grid, pos, c.rope_theta)
                table = (cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype))
            else:
                table = None
            self._tables[key] = table
        return self._tables[key]

    def embed(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        timesteps: torch.Tensor,
        ofs: float = OFS_INFERENCE,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Rope]:
        """-> ``video [B, N, D]``, ``text [B, L, D]``, ``temb [B, D_t]``, ``rope`` (``None`` or
        ``(cos, sin)``, each ``[N, head_dim]``). ``ofs`` is read only by a model with
        ``ofs_embed_dim``."""
        self.check_inputs(latents, text, timesteps)
        c = self.config
        dtype = self.patch_embed.weight.dtype
        grid = self.grid(latents.shape)
        video = self.patch_embed(patchify(latents.to(dtype), c.patch_size, c.temporal_patch_size))
        table = self.position_tables(grid, latents.device, dtype)
        rope = table if c.positions == "rope" else None
        if c.positions == "sincos":
            video = video + table
        text = self.text_proj(text.to(dtype))
        if c.learned_positions:
            base = (c.base_latent_frames, *c.rope_base_grid)
            if grid != base or text.shape[1] != c.max_text_len:
                raise ValueError(
                    f"learned positions exist for a {base} token grid and {c.max_text_len} text "
                    f"tokens only, got {grid} and {text.shape[1]}"
                )
            table = self.pos_embedding.to(dtype)
            text = text + table[:, : c.max_text_len]
            video = video + table[:, c.max_text_len :]
        sinusoid = timestep_embedding(timesteps, c.dim, c.flip_sin_to_cos, c.freq_shift)
        temb = self.time_embed(sinusoid.to(dtype))
        if self.ofs_embed is not None:
            ofs_in = torch.full((1,), float(ofs), device=latents.device)
            ofs_in = timestep_embedding(ofs_in, c.ofs_embed_dim, c.flip_sin_to_cos, c.freq_shift)
            temb = temb + self.ofs_embed(ofs_in.to(dtype))
        return video, text, temb, rope

    def unembed(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        temb: torch.Tensor,
        grid: tuple[int, int, int],
    ) -> torch.Tensor:
        """Video tokens ``[B, N, D]`` -> latents ``[B, C_out, T, H, W]`` (text is dropped)."""
        c = self.config
        out = self.proj_out(self.norm_out(self.norm_final(video), temb))
        return unpatchify(out, grid, c.patch_size, c.temporal_patch_size)

    def forward(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        timesteps: torch.Tensor,
        ofs: float = OFS_INFERENCE,
    ) -> torch.Tensor:
        grid = self.grid(latents.shape)
        video, text, temb, rope = self.embed(latents, text, timesteps, ofs)
        for block in self.blocks:
            video, text = block(video, text, temb, rope, grid)
        return self.unembed(video, text, temb, grid)


# -- counting ---------------------------------------------------------------------------------


def count_parameters(model_or_config: nn.Module | TransformerConfig) -> int:
    """Number of parameters; a config is instantiated on the ``meta`` device (no memory)."""
    model = model_or_config
    if isinstance(model_or_config, TransformerConfig):
        with torch.device("meta"):
            model = CogVideoXTransformer(model_or_config)
    return sum(p.numel() for p in model.parameters())


def forward_flops(
    config: TransformerConfig,
    frames: int,
    height: int,
    width: int,
    text_len: int | None = None,
    batch: int = 1,
) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one forward pass on latents ``frames x height x width``.

    Returns ``{"linear", "attention", "embed", "total"}``: the blocks' projections and
    feed-forward (``(8 + 4·ff_mult)·S·D²`` per layer for ``S = L + N`` tokens), the attention
    products (``4·D`` per query-key pair: ``S²`` under full attention, fewer under 2D+1D), and
    the patch/text/output projections. A training step costs about 3x (forward + backward).
    """
    c = config
    text_len = c.max_text_len if text_len is None else text_len
    t, h, w = patch_grid(frames, height, width, c.patch_size, c.temporal_patch_size)
    n, L, d = t * h * w, text_len, c.dim
    s = L + n
    pairs_full = s * s
    pairs = {
        "full": pairs_full,
        "spatial": L * s + n * (L + h * w),
        "temporal": L * s + n * (L + t),
    }
    linear = c.num_layers * (8 + 4 * c.ff_mult) * s * d * d
    attention = sum(4 * d * pairs[k] for k in c.layer_kinds)
    patch = c.in_channels * c.temporal_patch_size * c.patch_size**2
    embed = 2 * n * patch * d + 2 * L * c.text_dim * d + 2 * n * d * patch
    out = {"linear": linear, "attention": attention, "embed": embed}
    out = {k: v * batch for k, v in out.items()}
    out["total"] = sum(out.values())
    return out
