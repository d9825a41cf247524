"""Attention over ``[text; video]``: full 3D attention, separated 2D+1D attention, connectivity.

CogVideoX [@yang2024cogvideox] concatenates the text tokens with *all* video tokens of all frames
and runs one full attention over the sequence, so any token can reach any other in one layer.
Earlier video models separate it: *spatial* attention within each frame, *temporal* attention
across frames at one spatial position, alternating between layers (2D+1D). There, a token of
frame ``i`` cannot reach a token of frame ``i+1`` at another position directly — the paper's
"head in the next frame" example. :func:`connectivity` returns which token reaches which in one
layer of each kind, for figures and tests.

Queries and keys are LayerNorm-ed per head (QK-norm) and the video ones rotated by 3D-RoPE
(``cogvx_mini.rope``); text tokens are not rotated. The product itself goes through
:func:`attend` (flash-attn when installed, else PyTorch's ``scaled_dot_product_attention``),
stored on each module as ``attn.core`` so that a context-parallel driver can swap it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from einops import rearrange, repeat
from torch import nn
from torch.nn import functional as F

from cogvx_mini.rope import apply_rope

try:  # optional: pip install cogvx-mini[cuda]
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    _flash_attn_func = None

Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
KINDS = ("full", "spatial", "temporal")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` of ``[B, heads, S, d]`` tensors -> ``[B, heads, S_q, d]``.

    Uses flash-attn for half-precision CUDA tensors when it is installed (as strided views, no
    copies), else ``F.scaled_dot_product_attention``, which picks its own fused kernel.
    """
    if _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_core(backend: str = "auto") -> Core:
    """A core that forces one SDPA backend: ``auto`` (:func:`attend`), ``flash``, ``cudnn``,
    ``efficient`` or ``math``. For benchmarks: the fastest kernel differs between GPUs."""
    if backend == "auto":
        return attend
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if backend not in backends:
        raise ValueError(f"expected an attention backend in {['auto', *backends]}, got {backend!r}")
    chosen = backends[backend]

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx = sdpa_kernel(chosen) if q.is_cuda else contextlib.nullcontext()
        with ctx:
            return F.scaled_dot_product_attention(q, k, v)

    return core


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference ``softmax(q kᵀ/√d) v`` in float64; ``mask [S_q, S_k]`` bool, True = allowed."""
    return (attention_probs(q, k, mask) @ v.double()).to(q.dtype)


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The attention weights ``softmax(q kᵀ/√d)`` in float64: ``[..., S_q, S_k]``, rows sum to 1.

    ``mask [S_q, S_k]`` bool, True = allowed (a masked pair gets weight 0). For figures and tests;
    the model never forms this matrix.
    """
    scores = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


def connectivity(grid: tuple[int, int, int], kind: str = "full", text_len: int = 0) -> torch.Tensor:
    """Which token attends to which in one layer: bool ``[L+N, L+N]`` (row = query, column = key).

    Tokens are in ``[text; video]`` order, video in ``(t, h, w)`` order. ``full``: everything.
    ``spatial``: video tokens see the text and their own frame. ``temporal``: video tokens see the
    text and the tokens at their own ``(h, w)`` in every frame. Text tokens see everything in
    every kind (they are the global context).
    """
    if kind not in KINDS:
        raise ValueError(f"expected an attention kind in {KINDS}, got {kind!r}")
    t, h, w = grid
    n, s = t * h * w, text_len + t * h * w
    mask = torch.ones(s, s, dtype=torch.bool)
    if kind == "full":
        return mask
    idx = torch.arange(n)
    key = idx // (h * w) if kind == "spatial" else idx % (h * w)  # frame, or spatial position
    mask[text_len:, text_len:] = key[:, None] == key[None, :]
    return mask


def reach(*masks: torch.Tensor) -> torch.Tensor:
    """Which token can influence which after the given layers in order (residuals included).

    ``reach(m1, m2)[i, j]`` is True when token ``j``'s input can affect token ``i``'s output after
    a layer with connectivity ``m1`` followed by one with ``m2``.
    """
    eye = torch.eye(masks[0].shape[0], dtype=torch.bool)
    out = eye
    for mask in masks:
        out = ((mask | eye).float() @ out.float()) > 0
    return out


def separated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    text_len: int,
    grid: tuple[int, int, int],
    kind: str,
    core: Core = attend,
) -> torch.Tensor:
    """Spatial or temporal attention of ``[B, heads, L+N, d]`` tensors, as :func:`connectivity`.

    Video queries are grouped by frame (``spatial``) or by position (``temporal``) and attend to
    the text keys plus their own group; text queries attend to the whole sequence. Cost grows with
    ``N·(L + h·w)`` or ``N·(L + t)`` instead of ``(L+N)²``.
    """
    t, h, w = grid
    if kind == "spatial":
        pattern, back, groups = "b n (t hw) d -> (b t) n hw d", "(b t) n hw d -> b n (t hw) d", t
        sizes = {"t": t}
    elif kind == "temporal":
        pattern, back, groups = (
            "b n (t hw) d -> (b hw) n t d",
            "(b hw) n t d -> b n (t hw) d",
            h * w,
        )
        sizes = {"hw": h * w}
    else:
        raise ValueError(f"expected 'spatial' or 'temporal', got {kind!r}")
    L = text_len
    out_text = core(q[:, :, :L], k, v)
    qg = rearrange(q[:, :, L:], pattern, **sizes)
    kg = torch.cat([repeat(k[:, :, :L], "b n l d -> (b g) n l d", g=groups),
                    rearrange(k[:, :, L:], pattern, **sizes)], dim=2)  # fmt: skip
    vg = torch.cat([repeat(v[:, :, :L], "b n l d -> (b g) n l d", g=groups),
                    rearrange(v[:, :, L:], pattern, **sizes)], dim=2)  # fmt: skip
    out_video = rearrange(core(qg, kg, vg), back, **sizes)
    return torch.cat([out_text, out_video], dim=2)


class Attention(nn.Module):
    """Multi-head self-attention over ``[text; video]`` with QK-norm and RoPE on video tokens.

    ``forward(x [B, L+N, D], text_len, rope=None, grid=None) -> [B, L+N, D]``. One fused
    ``qkv`` linear; queries and keys are LayerNorm-ed per head, rotated by ``rope = (cos, sin)``
    (``[N, head_dim]`` each) on the video rows, then ``self.core(q, k, v)`` with ``[B, heads,
    L+N, head_dim]`` tensors. ``kind``: ``full`` (CogVideoX), or ``spatial`` / ``temporal`` for
    the 2D+1D ablation (needs ``grid``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        *,
        qk_norm: bool = True,
        bias: bool = True,
        out_bias: bool = True,
        qk_norm_eps: float = 1e-6,
        kind: str = "full",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"expected an attention kind in {KINDS}, got {kind!r}")
        self.heads, self.head_dim, self.kind = heads, head_dim, kind
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=bias)
        self.norm_q = nn.LayerNorm(head_dim, eps=qk_norm_eps) if qk_norm else None
        self.norm_k = nn.LayerNorm(head_dim, eps=qk_norm_eps) if qk_norm else None
        self.out = nn.Linear(inner, dim, bias=out_bias)
        self.core: Core = attend

    def project(
        self, x: torch.Tensor, text_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, S, D]`` -> ``q, k, v [B, S, heads, head_dim]``, q and k normalised."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(2)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        return q, k, v

    def output(self, o: torch.Tensor, text_len: int) -> torch.Tensor:
        """``o [B, S, heads·head_dim]`` -> ``[B, S, D]``."""
        return self.out(o)

    def qkv_heads(
        self,
        x: torch.Tensor,
        text_len: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, S, D]`` -> ``q, k, v [B, heads, S, head_dim]``, QK-normed, video rows rotated."""
        q, k, v = (y.transpose(1, 2) for y in self.project(x, text_len))  # [B, heads, S, d] views
        if rope is not None:
            cos, sin = rope
            n_text = q.shape[2] - cos.shape[0]
            if n_text != text_len:
                raise ValueError(
                    f"expected rope tables with one row per video token ({q.shape[2] - text_len}), "
                    f"got {cos.shape[0]}"
                )
            # Identity rows for the text tokens: one elementwise pass over the whole sequence
            # instead of slicing and concatenating the video rows.
            cos = torch.cat([cos.new_ones(n_text, cos.shape[1]), cos])
            sin = torch.cat([sin.new_zeros(n_text, sin.shape[1]), sin])
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        text_len: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        grid: tuple[int, int, int] | None = None,
    ) -> torch.Tensor:
        q, k, v = self.qkv_heads(x, text_len, rope)
        if self.kind == "full":
            o = self.core(q, k, v)
        else:
            if grid is None:
                raise ValueError(f"{self.kind} attention needs the token grid (t, h, w)")
            o = separated_attention(q, k, v, text_len, grid, self.kind, self.core)
        return self.output(o.transpose(1, 2).flatten(2), text_len)


class MMDiTAttention(Attention):
    """Joint attention with separate weights per modality (MMDiT): text rows use ``qkv_text``,
    ``norm_q_text``/``norm_k_text`` and ``out_text``; video rows the inherited ones."""

    def __init__(self, dim: int, heads: int, head_dim: int, **kwargs) -> None:
        super().__init__(dim, heads, head_dim, **kwargs)
        inner = heads * head_dim
        self.qkv_text = nn.Linear(dim, 3 * inner, bias=self.qkv.bias is not None)
        self.norm_q_text = copy.deepcopy(self.norm_q)
        self.norm_k_text = copy.deepcopy(self.norm_k)
        self.out_text = nn.Linear(inner, dim, bias=self.out.bias is not None)

    def project(
        self, x: torch.Tensor, text_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L = text_len
        shape = (3, self.heads, self.head_dim)
        qt, kt, vt = self.qkv_text(x[:, :L]).unflatten(-1, shape).unbind(2)
        qv, kv, vv = self.qkv(x[:, L:]).unflatten(-1, shape).unbind(2)
        if self.norm_q is not None:
            qt, kt = self.norm_q_text(qt), self.norm_k_text(kt)
            qv, kv = self.norm_q(qv), self.norm_k(kv)
        return torch.cat([qt, qv], 1), torch.cat([kt, kv], 1), torch.cat([vt, vv], 1)

    def output(self, o: torch.Tensor, text_len: int) -> torch.Tensor:
        L = text_len
        return torch.cat([self.out_text(o[:, :L]), self.out(o[:, L:])], dim=1)
