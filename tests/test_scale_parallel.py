"""Ulysses context parallelism equals unsplit attention, forward and backward (gloo, CPU)."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scale_helpers import run_gloo

from cogvx_mini.parallel import UlyssesAttention, all_gather, shard_sizes


def _ulysses_matches_unsplit(rank, world, text_len, n_video, heads):
    torch.manual_seed(0)
    b, d = 2, 8
    q, k, v = (torch.randn(b, heads, text_len + n_video, d) for _ in range(3))
    g = torch.randn(b, heads, text_len + n_video, d)  # upstream gradient of the full output
    ref_in = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in)
    (ref * g).sum().backward()

    sizes = shard_sizes(n_video, world)
    start = sum(sizes[:rank])
    rows = torch.cat([torch.arange(text_len), text_len + start + torch.arange(sizes[rank])])
    local = [x[:, :, rows].clone().requires_grad_() for x in (q, k, v)]
    core = UlyssesAttention(dist.group.WORLD, inner=F.scaled_dot_product_attention)
    core.text_length, core.sizes = text_len, sizes
    out = core(*local)
    torch.testing.assert_close(out, ref[:, :, rows], rtol=1e-5, atol=1e-6)

    # Text rows are replicated on every rank: each copy carries 1/world of their gradient.
    g_local = g[:, :, rows].clone()
    g_local[:, :, :text_len] /= world
    (out * g_local).sum().backward()
    for x, x_ref in zip(local, ref_in, strict=True):
        grad = x.grad.clone()
        text_grad = grad[:, :, :text_len].contiguous()
        dist.all_reduce(text_grad)  # the text inputs' gradient is the sum over the copies
        torch.testing.assert_close(text_grad, x_ref.grad[:, :, :text_len], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            grad[:, :, text_len:], x_ref.grad[:, :, rows[text_len:]], rtol=1e-5, atol=1e-6
        )


def test_ulysses_attention_equals_unsplit_forward_and_backward_on_3_ranks():
    """10 video tokens over 3 ranks: shares of 4, 3 and 3."""
    run_gloo(_ulysses_matches_unsplit, 3, 5, 10, 6)


def _gather_adjoint(rank, world):
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    y = all_gather(x, dim=1, group=dist.group.WORLD)
    assert y.shape == (2, 3 * world)
    assert torch.equal(y[:, 3 * rank : 3 * rank + 3], x.detach())
    (y * torch.arange(3.0 * world)).sum().backward()
    # Every rank used all of y once: x's gradient is world x its slice of the weights.
    torch.testing.assert_close(
        x.grad, world * torch.arange(3.0 * rank, 3.0 * rank + 3).expand(2, 3)
    )


def _uneven_gather_adjoint(rank, world):
    sizes = [3, 2]
    x = torch.full((1, sizes[rank], 2), float(rank + 1), requires_grad=True)
    y = all_gather(x, dim=1, group=dist.group.WORLD, sizes=sizes)
    assert y[0, :, 0].tolist() == [1, 1, 1, 2, 2]
    (y * torch.arange(5.0).view(1, 5, 1)).sum().backward()
    start = sum(sizes[:rank])
    expected = world * torch.arange(start, start + sizes[rank], dtype=torch.float32)
    torch.testing.assert_close(x.grad[0, :, 0], expected)


def _heads_not_divisible(rank, world):
    core = UlyssesAttention(dist.group.WORLD, inner=F.scaled_dot_product_attention)
    q = torch.randn(1, 3, 4, 8)
    with pytest.raises(ValueError, match="heads divisible by cp=2, got 3"):
        core(q, q, q)


def _cp_model_matches_unsplit(rank, world, positions, checkpointing, grid=(3, 4, 6)):
    from cogvx_mini.parallel import apply_activation_checkpointing, apply_context_parallel
    from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

    config = TransformerConfig.mini(num_layers=2, num_heads=4, head_dim=16, positions=positions)
    torch.manual_seed(0)
    model = CogVideoXTransformer(config)
    for p in model.parameters():  # leave AdaLN-zero's identity: make every path carry gradient
        torch.nn.init.normal_(p, std=0.05)
    latents = torch.randn(2, config.in_channels, *grid)  # (T, H/2, W/2) video tokens
    text = torch.randn(2, 5, config.text_dim)
    timesteps = torch.tensor([10, 900])
    target = torch.randn_like(latents)

    ref = model(latents, text, timesteps)
    (ref - target).pow(2).mean().backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    keys = list(model.state_dict())
    model.zero_grad()

    apply_activation_checkpointing(model, checkpointing)
    apply_context_parallel(model, dist.group.WORLD)  # in place: the same module, the same keys
    assert list(model.state_dict()) == keys
    out = model(latents, text, timesteps)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (out - target).pow(2).mean().backward()  # every CP rank holds the whole loss
    for name, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad)
        torch.testing.assert_close(grad / world, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="already applied"):
        apply_context_parallel(model, dist.group.WORLD)


def _cp_refuses_2d1d_and_too_few_tokens(rank, world):
    from cogvx_mini.parallel import apply_context_parallel
    from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

    config = TransformerConfig.mini(num_layers=2)
    with pytest.raises(ValueError, match="needs attention='full', got '2d1d'"):
        apply_context_parallel(CogVideoXTransformer(config.replace(attention="2d1d")), None)
    model = apply_context_parallel(CogVideoXTransformer(config), dist.group.WORLD)
    latents = torch.randn(1, config.in_channels, 1, 2, 2)  # one video token for two ranks
    with pytest.raises(ValueError, match="at least 2 video tokens for CP degree 2, got 1"):
        model(latents, torch.randn(1, 3, config.text_dim), torch.tensor([1.0]))


def _on_two_ranks(rank, world):
    _ulysses_matches_unsplit(rank, world, 3, 10, 4)
    _gather_adjoint(rank, world)
    _uneven_gather_adjoint(rank, world)
    _heads_not_divisible(rank, world)
    # 5B-like (RoPE rows sharded with the tokens) and 2B-like (sincos added before the split),
    # with the collectives re-run inside recomputed blocks.
    _cp_model_matches_unsplit(rank, world, "rope", "full")
    # 3 x 1 x 3 = 9 video tokens: shares of 5 and 4
    _cp_model_matches_unsplit(rank, world, "sincos", "selective", grid=(3, 2, 6))
    _cp_refuses_2d1d_and_too_few_tokens(rank, world)


def test_context_parallel_on_2_ranks_equals_unsplit_forward_and_backward():
    """Ulysses attention and the whole transformer under CP == unsplit, values and gradients;
    the all-gather's backward sums the copies; heads not divisible by cp are refused."""
    run_gloo(_on_two_ranks, 2)
