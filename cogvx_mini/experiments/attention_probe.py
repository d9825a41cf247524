"""Where a moving object's tokens look: the attention from an object's tokens in latent frame
``i + 1`` to the same object's tokens in frame ``i``, layer by layer.

Full 3D attention can link the two directly in every layer. In 2D+1D a spatial layer sees only
its own frame (nothing of frame ``i``) and a temporal layer only its own position in every frame
(the object's previous tokens only where it overlaps itself), so when an object moves, its
previous appearance reaches it only through a relay of layers: this probe measures that.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange

from cogvx_mini.attention import attention_probs, connectivity
from cogvx_mini.data.toyworld import ToyScene, render
from cogvx_mini.diffusion import NoiseSchedule, add_noise
from cogvx_mini.transformer import CogVideoXTransformer


@contextlib.contextmanager
def recorded_queries_keys(model: CogVideoXTransformer) -> Iterator[list[tuple]]:
    """While active, every attention layer appends ``(q, k, kind, text_len)`` (``q, k [B, heads,
    S, head_dim]``, after QK-norm and RoPE) to the yielded list as the model runs."""
    records: list[tuple] = []
    layers = [block.attn for block in model.blocks]
    for attn in layers:  # an instance attribute: deleting it restores the method
        attn.qkv_heads = functools.partial(_recording_qkv_heads, attn, records)
    try:
        yield records
    finally:
        for attn in layers:
            del attn.qkv_heads


def _recording_qkv_heads(attn, records: list, x, text_len: int, rope=None):
    q, k, v = type(attn).qkv_heads(attn, x, text_len, rope)
    records.append((q.detach(), k.detach(), attn.kind, text_len))
    return q, k, v


def object_token_masks(scene: ToyScene, frames: int, size: int, grid) -> torch.Tensor:
    """Per object, the tokens it covers: bool ``[objects, t, h, w]`` on the token ``grid``.
    Latent frame ``j`` stands for pixel frame ``4j`` (the last of the frames the causal VAE
    folds into it); a token counts when the object covers a third of its pixels."""
    t, h, w = grid
    masks = []
    empty = render(ToyScene(()), frames, size, size)
    for obj in scene.objects:
        video = render(ToyScene((obj,)), frames, size, size)
        cover = ((video - empty).abs().sum(0) > 0.1).float()  # [T, H, W]
        cover = cover[torch.arange(t) * 4]  # the pixel frame of each latent frame
        masks.append(F.adaptive_avg_pool2d(cover, (h, w)) > 1 / 3)
    return torch.stack(masks)


@torch.no_grad()
def previous_frame_attention(
    model: CogVideoXTransformer,
    latents: torch.Tensor,
    text: torch.Tensor,
    masks: torch.Tensor,
    timestep: int = 500,
    seed: int = 0,
) -> list[dict]:
    """For one clip (``latents [C, T, H, W]`` scaled, ``text [L, D]``, object token ``masks``
    ``[objects, t, h, w]``) noised to ``timestep``: per layer, ``share``, the attention mass
    (mean over heads, objects, frames and the object's query tokens) that an object's tokens in
    frame ``i + 1`` give to its tokens in frame ``i``; ``uniform``, what attention spread evenly
    over the keys a token may see would give; and ``map``, the mean attention of the object's
    tokens in the last frame over the previous frame's tokens (``[h, w]``, first object)."""
    model.eval()
    device = next(model.parameters()).device
    schedule = NoiseSchedule()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    ts = torch.tensor([timestep])
    x_t = add_noise(schedule, latents[None], noise[None], ts)
    with recorded_queries_keys(model) as records:
        model(x_t.to(device), text[None].to(device), ts.to(device))
    grid = tuple(masks.shape[1:])
    return [_layer_share(q, k, kind, text_len, grid, masks) for q, k, kind, text_len in records]


def _layer_share(q, k, kind: str, text_len: int, grid, masks: torch.Tensor) -> dict:
    allowed = connectivity(grid, kind, text_len).to(q.device)
    probs = attention_probs(q[0], k[0], allowed).mean(0)[text_len:, text_len:].cpu()  # [N, N]
    allowed = allowed[text_len:, text_len:].cpu().double()
    uniform = allowed / allowed.sum(1, keepdim=True)
    flat = rearrange(masks, "o t h w -> o t (h w)")
    n_frame = flat.shape[-1]
    shares, evens = [], []
    for obj in flat:
        for i in range(flat.shape[1] - 1):
            queries = (i + 1) * n_frame + obj[i + 1].nonzero().flatten()
            keys = i * n_frame + obj[i].nonzero().flatten()
            if len(queries) and len(keys):
                shares.append(probs[queries][:, keys].sum(1).mean().item())
                evens.append(uniform[queries][:, keys].sum(1).mean().item())
    last = flat.shape[1] - 1
    queries = last * n_frame + flat[0, last].nonzero().flatten()
    previous = probs[queries][:, (last - 1) * n_frame : last * n_frame].mean(0)
    return {
        "kind": kind,
        "share": sum(shares) / len(shares) if shares else float("nan"),
        "uniform": sum(evens) / len(evens) if evens else float("nan"),
        "map": previous.reshape(grid[1], grid[2]).tolist(),
    }
