"""Spreading one CogVideoX transformer over many GPUs: FSDP2 and Ulysses context parallelism.

- **Device mesh** ``(dp, cp)``: ranks ``d * cp .. d * cp + cp - 1`` form one context-parallel
  group (put it inside a node: it talks on every layer); the ``dp`` groups see different samples.
- **FSDP2** (``torch.distributed.fsdp.fully_shard``) shards every parameter, gradient and Adam
  state over *all* ranks: each block is one unit (all-gathered just before it runs, freed after),
  the rest (embeddings, final norm, projection) is the root unit. Mixed precision computes in
  bf16 and keeps fp32 master weights; gradients are reduce-scattered in fp32.
- **Activation checkpointing** per block, the model's own (``full``: a block keeps only its
  input and recomputes the rest in the backward pass; ``selective``: it also keeps the attention
  output, the most expensive thing to recompute).
- **Ulysses context parallelism** (DeepSpeed-Ulysses): each CP rank holds about ``N / cp`` video
  tokens (and their RoPE rows; shares differ by one token at most when ``cp`` does not divide
  ``N``, e.g. 33,750 tokens of 97 frames over 4 or 8 ranks) through the whole block stack;
  only attention needs all tokens. Before attention one all-to-all turns "my tokens, all heads"
  into "all tokens, my heads", attention runs with the ordinary single-GPU kernel, and a second
  all-to-all turns it back. The 226 text tokens are replicated on every CP rank (too few to
  split); each rank attends for its own heads and the text outputs are all-gathered over heads.

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
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

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


def _default_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from cogvx_mini.attention import attend

    return attend(q, k, v)


class UlyssesAttention:
    """Context-parallel attention core: a drop-in for ``block.attn.core(q, k, v)``.

    Each CP rank calls it with ``q, k, v [B, H, L + n_r, d]``: the ``L`` replicated text tokens,
    then its own ``n_r`` video tokens, where ``sizes = [n_0, n_1, ...]`` (set by the driver with
    ``text_length`` before each forward; ranks may hold one token more or less). Returns
    ``[B, H, L + n_r, d]``, equal to the rows of unsplit attention over all ``L + N`` tokens that
    belong to this rank.
    """

    def __init__(
        self,
        group: dist.ProcessGroup,
        inner: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        self.group = group
        self.cp = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.inner = inner or _default_attend
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
# The context-parallel, checkpointed forward of a CogVideoXTransformer


class ParallelTransformer(nn.Module):
    """A ``CogVideoXTransformer`` run block by block, with Ulysses context parallelism.

    ``forward(latents [B,C,T,H,W], text [B,L,D_text], timesteps [B]) -> [B,C,T,H,W]`` equals
    ``model(latents, text, timesteps)``. With a CP group of size ``cp``, each rank embeds the whole
    input, keeps its contiguous share of the ``N`` video tokens (``N / cp``, one more on the first
    ``N mod cp`` ranks) and their RoPE rows, runs every block on them
    (attention's core swapped for :class:`UlyssesAttention`), and all-gathers the video tokens for
    the output layers, so every CP rank returns the whole output. Activation checkpointing is the
    model's own (``model.set_checkpointing``: ``full`` or ``selective``). Being the module that
    ``fully_shard`` wraps last, its forward is where FSDP unshards the embedding and output layers.
    """

    def __init__(self, model: nn.Module, cp_group: dist.ProcessGroup | None = None):
        super().__init__()
        self.model = model
        self.cp_group = cp_group
        self.cp = dist.get_world_size(cp_group) if cp_group is not None else 1
        self.cp_rank = dist.get_rank(cp_group) if cp_group is not None else 0
        self.cores: list[UlyssesAttention] = []
        if self.cp > 1:
            if getattr(model.config, "attention", "full") != "full":
                raise ValueError(
                    f"context parallelism needs full 3D attention, got {model.config.attention!r}"
                )
            for block in model.blocks:
                core = UlyssesAttention(cp_group, inner=block.attn.core)
                block.attn.core = core
                self.cores.append(core)

    def forward(
        self, latents: torch.Tensor, text: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        model = self.model
        grid = model.grid(latents.shape)
        video, text_tokens, temb, rope = model.embed(latents, text, timesteps)
        if self.cp > 1:
            n, cp = video.shape[1], self.cp
            if n < cp:
                raise ValueError(f"expected at least {cp} video tokens for CP degree {cp}, got {n}")
            sizes = shard_sizes(n, cp)
            start = sum(sizes[: self.cp_rank])
            rows = slice(start, start + sizes[self.cp_rank])
            video = video[:, rows]
            if rope is not None:  # (cos, sin), each [N, head_dim]: one row per video token
                rope = (rope[0][rows], rope[1][rows])
            for core in self.cores:
                core.text_length, core.sizes = text_tokens.shape[1], sizes
        for block in model.blocks:
            video, text_tokens = block(video, text_tokens, temb, rope)
        if self.cp > 1:
            video = all_gather(video, dim=1, group=self.cp_group, sizes=sizes)
        return model.unembed(video, text_tokens, temb, grid)


# ---------------------------------------------------------------------------------------------
# Process groups, mesh, FSDP2


@dataclass
class Dist:
    """This process's place: world size and rank, the (dp, cp) coordinates, device, groups."""

    world: int
    rank: int
    local_rank: int
    device: torch.device
    dp: int
    cp: int
    dp_rank: int
    cp_rank: int
    mesh: object  # DeviceMesh over all ranks (1-D), used by FSDP
    cp_group: dist.ProcessGroup | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cp: int = 1, device: str | None = None) -> Dist:
    """Initialise torch.distributed (NCCL on CUDA, gloo on CPU) and the ``(dp, cp)`` layout.

    Works under ``torchrun`` (reads RANK / WORLD_SIZE / LOCAL_RANK) and as a plain process (a
    world of one, so the same code path runs in tests and on one GPU).
    """
    from torch.distributed.device_mesh import init_device_mesh

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % cp:
        raise ValueError(f"parallel.cp={cp} must divide the world size, got {world} ranks")
    dp = world // cp
    mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("shard",))
    cp_group = None
    if cp > 1:
        mesh2 = init_device_mesh(dev.type, (dp, cp), mesh_dim_names=("dp", "cp"))
        cp_group = mesh2.get_group("cp")
    return Dist(world, rank, local_rank, dev, dp, cp, rank // cp, rank % cp, mesh, cp_group)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apply_fsdp(
    wrapper: ParallelTransformer,
    mesh,
    mixed_precision: str = "bf16",
    cpu_offload: bool = False,
    compile_blocks: bool = False,
) -> ParallelTransformer:
    """Shard ``wrapper`` with FSDP2 over ``mesh``: one unit per block, the rest in the root unit.

    ``mixed_precision="bf16"``: bf16 parameters in compute, fp32 gradient reduction, fp32 master
    weights (the sharded parameters stay fp32). On CPU (gloo) use ``"fp32"``. ``cpu_offload``
    keeps parameters, gradients and optimiser state on the CPU. ``compile_blocks`` compiles each
    block in place (``nn.Module.compile``: state-dict names are unchanged).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    # Blocks return (video, text) as slices of one tensor; nothing modifies them in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

    if mixed_precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    kwargs = {"mesh": mesh, "mp_policy": mp}
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    blocks = wrapper.model.blocks
    for i, block in enumerate(blocks):
        if compile_blocks:
            block.compile()
        # The last block's parameters are needed again first in the backward pass: keep them.
        fully_shard(block, reshard_after_forward=i < len(blocks) - 1, **kwargs)
    fully_shard(wrapper, reshard_after_forward=False, **kwargs)
    return wrapper


@torch.no_grad()
def materialize(
    wrapper: ParallelTransformer, device: torch.device, seed: int, independent: bool = False
) -> None:
    """Allocate a model built on the ``meta`` device (and sharded) on ``device`` and initialise it
    there: every rank allocates only its shards, so no host ever holds the whole 5B model.

    Default: LayerNorms and linears get their defaults, then the model's own ``reset_parameters``
    (AdaLN-zero), through DTensor's sharded random generator (values depend on the sharding,
    unlike a CPU initialisation). ``independent=True`` (benchmarks, and always with ``device``
    ``cpu``, i.e. FSDP's CPU offload): each parameter is drawn whole from a generator seeded by
    its name — N(0, 0.02), LayerNorm weights 1, biases 0 — and this rank keeps its shard, so the
    weights are the same for any number of GPUs and any parallel layout. Not the model's
    initialisation: fine-tune from weights (``train.init_from``) rather than train from scratch
    with CPU offload.
    """
    wrapper.to_empty(device=device)
    model = wrapper.model
    if device.type != "cpu" and not independent:
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        model.reset_parameters()
        return
    from torch.distributed.tensor import distribute_tensor

    draw_on = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    for name, param in model.named_parameters():
        full = torch.empty(param.shape, device=draw_on)
        if name.endswith("bias"):
            full.zero_()
        elif param.ndim == 1:
            full.fill_(1.0)
        else:
            g = torch.Generator(device=draw_on).manual_seed(
                seed * 1_000_003 + zlib.crc32(name.encode())
            )
            full.normal_(0.0, 0.02, generator=g)
        if hasattr(param, "to_local"):
            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(local.to_local())
        else:
            param.copy_(full)


def load_full_state_dict(wrapper: ParallelTransformer, state: dict[str, torch.Tensor]) -> None:
    """Load a full cogvx_mini transformer state dict held by rank 0 (others pass ``{}``) into the
    sharded model: rank 0 broadcasts, each rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(wrapper, {f"model.{k}": v for k, v in state.items()}, options=options)
