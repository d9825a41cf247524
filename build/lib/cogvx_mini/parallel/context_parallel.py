"""Ulysses context parallelism: the video tokens of one sample spread over a group of ranks.

Each CP rank holds about ``N / cp`` video tokens (and their RoPE rows; shares differ by one token
at most when ``cp`` does not divide ``N``, e.g. 33,750 tokens of 97 frames over 4 or 8 ranks)
through the whole block stack; only attention needs all tokens. Before attention one all-to-all
turns "my tokens, all heads" into "all tokens, my heads", attention runs with the ordinary
single-GPU kernel, and a second all-to-all turns it back. The 226 text tokens are replicated on
every CP rank (too few to split); each rank attends for its own heads and the text outputs are
all-gathered over heads (DeepSpeed-Ulysses).

Why Ulysses and not ring attention: CogVideoX attends over the whole ``[text; video]`` sequence
with no causal mask, so ring attention's load balancing buys nothing, while Ulysses keeps the
fastest single-GPU attention kernel (cuDNN / flash) on the full sequence and sends a fixed
``4 * N * D / cp`` values per rank and layer (q, k, v, out), cheap on NVLink within a node. Its
limit is that ``cp`` must divide the heads (30 for 2B: cp in 1, 2, 3, 5, 6; 48 for 5B: 1, 2, 3, 4,
6, 8), which covers one node. Ring attention would also need the text tokens split or special-cased.

Gradients: every collective here has its exact adjoint as backward (all-to-all <-> all-to-all,
all-gather <-> sum then slice), so ``sum over ranks of the gradients = cp x gradient of the loss``
when each CP rank computes the full loss of its sample on the gathered output; FSDP's average over
all ``dp * cp`` ranks then gives the data-parallel mean of the true gradient.

:func:`apply_context_parallel` applies it to a built model in place, without a second forward:
each block's ``attn.core`` becomes a :class:`UlyssesAttention`, a forward pre-hook on the first
block keeps this rank's video tokens (and one on every block their RoPE rows), and a forward hook
on the last block all-gathers them, so ``model(latents, text, timesteps)`` returns the whole
output on every rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from cogvx_mini.attention import attend

# ---------------------------------------------------------------------------------------------
# Collectives with their adjoints as backward


def shard_sizes(n: int, cp: int) -> list[int]:
    """Tokens of each of ``cp`` ranks for ``n`` tokens: contiguous, as equal as possible
    (17,550 over 4 -> 4388, 4388, 4387, 4387)."""
    return [n // cp + (r < n % cp) for r in range(cp)]


class _AllToAll(torch.autograd.Function):
    """Flat ``x``: its first ``send[0]`` values go to rank 0, the next ``send[1]`` to rank 1, ...;
    the result holds ``recv[i]`` values from rank ``i``, in rank order. The adjoint is the
    all-to-all with ``send`` and ``recv`` swapped."""

    @staticmethod
    def forward(ctx, x, send: list[int], recv: list[int], group: dist.ProcessGroup):
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty(sum(recv))
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty(sum(ctx.send))
        dist.all_to_all_single(out, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return out, None, None, None


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``x`` along ``dim`` (rank ``i`` contributes ``sizes[i]`` rows);
    backward sums the gradients of all copies (every rank used the gathered tensor) and keeps
    this rank's rows."""

    @staticmethod
    def forward(ctx, x, dim: int, sizes: list[int], group: dist.ProcessGroup):
        rank = dist.get_rank(group)
        ctx.dim, ctx.group, ctx.start, ctx.size = dim, group, sum(sizes[:rank]), sizes[rank]
        padded = list(x.shape)
        padded[dim] = max(sizes)  # collectives move equal sizes: pad, gather, trim
        buf = x.new_zeros(padded)
        buf.narrow(dim, 0, x.shape[dim]).copy_(x)
        parts = [torch.empty_like(buf) for _ in sizes]
        dist.all_gather(parts, buf, group=group)
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)], dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad.narrow(ctx.dim, ctx.start, ctx.size), None, None, None


def all_to_all(
    x: torch.Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup
) -> torch.Tensor:
    """Differentiable all-to-all of a flat tensor with per-rank split sizes."""
    return _AllToAll.apply(x, send, recv, group)


def all_gather(
    x: torch.Tensor, dim: int, group: dist.ProcessGroup, sizes: list[int] | None = None
) -> torch.Tensor:
    """Differentiable all-gather along ``dim`` (``sizes``: rows per rank, default all equal to
    this rank's); the gradient is summed over ranks."""
    sizes = sizes or [x.shape[dim]] * dist.get_world_size(group)
    return _AllGather.apply(x, dim, sizes, group)


# ---------------------------------------------------------------------------------------------
# Ulysses attention core


class UlyssesAttention:
    """Context-parallel attention core: a drop-in for ``block.attn.core(q, k, v)``.

    Each CP rank calls it with ``q, k, v [B, H, L + n_r, d]``: the ``L`` replicated text tokens,
    then its own ``n_r`` video tokens, where ``sizes = [n_0, n_1, ...]`` (set with ``text_length``
    before each forward by :func:`apply_context_parallel`'s hook; ranks may hold one token more or
    less). Returns ``[B, H, L + n_r, d]``, equal to the rows of unsplit attention over all
    ``L + N`` tokens that belong to this rank.
    """

    def __init__(
        self,
        group: dist.ProcessGroup,
        inner: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        self.group = group
        self.cp = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.inner = inner or attend
        self.text_length = 0
        self.sizes: list[int] | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, s, d = q.shape
        cp, L = self.cp, self.text_length
        if h % cp:
            raise ValueError(f"Ulysses attention needs heads divisible by cp={cp}, got {h}")
        sizes = self.sizes or [s - L] * cp
        n = sizes[self.rank]
        if s != L + n:
            raise ValueError(f"expected {L} text + {n} video tokens on rank {self.rank}, got {s}")
        hc = h // cp
        heads = slice(self.rank * hc, (self.rank + 1) * hc)
        qkv = torch.stack([q, k, v])  # [3, B, H, L + n, d]
        text = qkv[:, :, heads, :L]  # replicated: my heads need no communication
        # Send rank j the heads of rank j for my n tokens; receive my heads of rank i's tokens.
        video = qkv[:, :, :, L:].unflatten(2, (cp, hc)).permute(2, 0, 1, 3, 4, 5)
        unit = 3 * b * hc * d  # values per token in one chunk
        got = all_to_all(video.reshape(-1), [unit * n] * cp, [unit * m for m in sizes], self.group)
        pieces = got.split([unit * m for m in sizes])
        video = torch.cat([p.view(3, b, hc, m, d) for p, m in zip(pieces, sizes, strict=True)], 3)
        q_, k_, v_ = torch.cat([text, video], dim=3).unbind(0)  # [B, hc, L + N, d] each
        out = self.inner(q_, k_, v_)
        text_out = all_gather(out[:, :, :L], dim=1, group=self.group)  # [B, H, L, d]
        # Send rank j my heads of its tokens; receive rank i's heads of my tokens.
        unit = b * hc * d
        parts = out[:, :, L:].split(sizes, dim=2)
        flat = torch.cat([p.reshape(-1) for p in parts])
        back = all_to_all(flat, [unit * m for m in sizes], [unit * n] * cp, self.group)
        video_out = back.view(cp, b, hc, n, d).permute(1, 0, 2, 3, 4).flatten(1, 2)
        return torch.cat([text_out, video_out], dim=2)


# ---------------------------------------------------------------------------------------------
# Applying it to a model


class _TokenShards:
    """The hooks of :func:`apply_context_parallel` and the shard of the tokens they share."""

    def __init__(self, group: dist.ProcessGroup, model: nn.Module) -> None:
        self.group, self.first = group, model.blocks[0]
        self.cores = [block.attn.core for block in model.blocks]
        self.cp, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.sizes: list[int] = []
        self.rows = slice(None)

    def before_block(self, block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Before the first block: keep this rank's video tokens ``[B, n_r, D]``. Before every
        block: keep the RoPE rows of those tokens (the model passes all of them to each block)."""
        video, text, temb, rope, *rest = args  # as CogVideoXTransformer.forward passes them
        if block is self.first:
            n = video.shape[1]
            if n < self.cp:
                raise ValueError(f"expected at least {self.cp} video tokens for CP degree "
                                 f"{self.cp}, got {n}")  # fmt: skip
            self.sizes = shard_sizes(n, self.cp)
            start = sum(self.sizes[: self.rank])
            self.rows = slice(start, start + self.sizes[self.rank])
            video = video[:, self.rows]
            for core in self.cores:
                core.text_length, core.sizes = text.shape[1], self.sizes
        if rope is not None:  # (cos, sin), each [N, head_dim]: one row per video token
            rope = (rope[0][self.rows], rope[1][self.rows])
        return (video, text, temb, rope, *rest), kwargs

    def after_last_block(self, block: nn.Module, args: tuple, output: tuple) -> tuple:
        """After the last block: every rank's video tokens, ``[B, N, D]``, in order."""
        video, text = output
        return all_gather(video, dim=1, group=self.group, sizes=self.sizes), text


def apply_context_parallel(model: nn.Module, cp_group: dist.ProcessGroup) -> nn.Module:
    """Ulysses context parallelism over ``cp_group`` for a ``CogVideoXTransformer``, in place.

    Afterwards ``model(latents [B,C,T,H,W], text [B,L,D_text], timesteps [B]) -> [B,C,T,H,W]``
    equals the unsplit model's on every rank of the group (each rank passes the same inputs);
    in between, each rank runs the blocks on its contiguous share of the ``N`` video tokens
    (``N / cp``, one more on the first ``N mod cp`` ranks). Parameters and their names are
    untouched. Needs full 3D attention and ``cp`` dividing the heads. Returns ``model``.
    """
    attention = getattr(model.config, "attention", "full")
    if attention != "full":
        raise ValueError(f"context parallelism needs attention='full', got {attention!r}")
    if any(isinstance(block.attn.core, UlyssesAttention) for block in model.blocks):
        raise ValueError("context parallelism is already applied to this model")
    for block in model.blocks:
        block.attn.core = UlyssesAttention(cp_group, inner=block.attn.core)
    shards = _TokenShards(cp_group, model)
    # The hooks run eagerly even inside compiled blocks (they slice and gather, nothing to fuse).
    before = torch._dynamo.disable(shards.before_block)
    for block in model.blocks:
        block.register_forward_pre_hook(before, with_kwargs=True)
    model.blocks[-1].register_forward_hook(torch._dynamo.disable(shards.after_last_block))
    return model
