"""Ulysses context parallelism equals unsplit attention, forward and backward (gloo, CPU)."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scale_helpers import run_gloo

from scale.parallel import UlyssesAttention, all_gather


def _ulysses_matches_unsplit(rank, world, text_len, n_video, heads):
    torch.manual_seed(0)
    b, d = 2, 8
    q, k, v = (torch.randn(b, heads, text_len + n_video, d) for _ in range(3))
    g = torch.randn(b, heads, text_len + n_video, d)  # upstream gradient of the full output
    ref_in = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in)
    (ref * g).sum().backward()

    n = n_video // world
    rows = torch.cat([torch.arange(text_len), text_len + rank * n + torch.arange(n)])
    local = [x[:, :, rows].clone().requires_grad_() for x in (q, k, v)]
    core = UlyssesAttention(dist.group.WORLD, inner=F.scaled_dot_product_attention)
    core.text_length = text_len
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


@pytest.mark.parametrize("world,text_len,n_video,heads", [(2, 3, 10, 4), (3, 5, 9, 6)])
def test_ulysses_attention_equals_unsplit_forward_and_backward(world, text_len, n_video, heads):
    run_gloo(_ulysses_matches_unsplit, world, text_len, n_video, heads)


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


def test_all_gather_backward_sums_the_copies():
    run_gloo(_gather_adjoint, 2)


def _heads_not_divisible(rank, world):
    core = UlyssesAttention(dist.group.WORLD, inner=F.scaled_dot_product_attention)
    q = torch.randn(1, 3, 4, 8)
    with pytest.raises(ValueError, match="heads divisible by cp=2, got 3"):
        core(q, q, q)


def test_ulysses_rejects_heads_not_divisible_by_cp():
    run_gloo(_heads_not_divisible, 2)
