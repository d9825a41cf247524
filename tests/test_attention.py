import pytest
import torch

from cogvx_mini.attention import (
    Attention,
    attend,
    attention_probs,
    connectivity,
    naive_attention,
    reach,
    sdpa_core,
    separated_attention,
)
from cogvx_mini.rope import rope_3d

GRID, L = (3, 2, 3), 2  # 18 video tokens, 2 text tokens


def _index(t, h, w):
    return L + (t * GRID[1] + h) * GRID[2] + w


def _qkv(seed=0, heads=2, d=16):
    g = torch.Generator().manual_seed(seed)
    s = L + GRID[0] * GRID[1] * GRID[2]
    return [torch.randn(2, heads, s, d, generator=g) for _ in range(3)]


def test_full_attention_matches_the_naive_softmax():
    q, k, v = _qkv()
    torch.testing.assert_close(attend(q, k, v), naive_attention(q, k, v), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        sdpa_core("math")(q, k, v), naive_attention(q, k, v), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_separated_attention_matches_the_masked_naive_softmax(kind):
    q, k, v = _qkv(1)
    mask = connectivity(GRID, kind, L)
    torch.testing.assert_close(
        separated_attention(q, k, v, L, GRID, kind),
        naive_attention(q, k, v, mask),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("kind", ["full", "spatial", "temporal"])
def test_layer_output_is_its_masked_attention_weights_times_v(kind):
    torch.manual_seed(0)
    layer = Attention(32, heads=2, head_dim=16, kind=kind)
    x, rope = torch.randn(2, L + 18, 32), rope_3d(16, GRID)
    with torch.no_grad():
        q, k, v = layer.qkv_heads(x, L, rope)
        probs = attention_probs(q, k, connectivity(GRID, kind, L))
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs[..., 0]))
        assert (probs[..., ~connectivity(GRID, kind, L)] == 0).all()
        o = (probs @ v.double()).float().transpose(1, 2).flatten(2)
        torch.testing.assert_close(
            layer.output(o, L), layer(x, L, rope, GRID), rtol=1e-5, atol=1e-5
        )


def test_next_frame_at_another_position_is_reached_only_by_full_attention():
    src, dst = _index(0, 0, 0), _index(1, 1, 2)  # frame i -> frame i+1, elsewhere
    assert connectivity(GRID, "full", L)[dst, src]
    assert not connectivity(GRID, "spatial", L)[dst, src]
    assert not connectivity(GRID, "temporal", L)[dst, src]
    # same position in the next frame: temporal only; same frame: spatial only
    assert connectivity(GRID, "temporal", L)[_index(1, 0, 0), src]
    assert connectivity(GRID, "spatial", L)[_index(0, 1, 2), src]
    # two separated layers get there (through another patch), one full layer directly
    two = reach(connectivity(GRID, "spatial", L), connectivity(GRID, "temporal", L))
    assert two[dst, src]


@pytest.mark.parametrize("kind", ["full", "spatial", "temporal"])
def test_module_connectivity_is_what_connectivity_says(kind):
    """Which inputs move which outputs of a real layer (with QK-norm and RoPE), by autograd."""
    torch.manual_seed(0)
    attn = Attention(32, 2, 16, kind=kind)
    s = L + GRID[0] * GRID[1] * GRID[2]
    x = torch.randn(1, s, 32, requires_grad=True)
    out = attn(x, L, rope=rope_3d(16, GRID), grid=GRID)
    reached = torch.stack(
        [
            torch.autograd.grad(out[0, i].sum(), x, retain_graph=True)[0][0].abs().sum(-1) > 0
            for i in range(s)
        ]
    )
    assert torch.equal(reached, connectivity(GRID, kind, L))


def test_rope_rotates_video_queries_only():
    torch.manual_seed(0)
    attn = Attention(32, 2, 16)
    x = torch.randn(1, L + 18, 32)
    seen = {}
    attn.core = lambda q, k, v: seen.setdefault("qkv", (q, k, v))[2]
    attn(x, L, rope=rope_3d(16, GRID))
    q_rope, k_rope, _ = seen.pop("qkv")
    attn(x, L)
    q, k, _ = seen["qkv"]
    assert torch.equal(q_rope[:, :, :L], q[:, :, :L]) and torch.equal(k_rope[:, :, :L], k[:, :, :L])
    assert not torch.allclose(q_rope[:, :, L + 1 :], q[:, :, L + 1 :])
    # QK-norm: unit-variance heads before rotation, rotation keeps the norms
    torch.testing.assert_close(q_rope.norm(dim=-1), q.norm(dim=-1))


def test_errors():
    with pytest.raises(ValueError, match="attention kind"):
        connectivity(GRID, "diagonal")
    with pytest.raises(ValueError, match="needs the token grid"):
        Attention(32, 2, 16, kind="spatial")(torch.randn(1, 20, 32), L)
    with pytest.raises(ValueError, match="one row per video token"):
        Attention(32, 2, 16)(torch.randn(1, 20, 32), L, rope=rope_3d(16, (1, 2, 2)))
    with pytest.raises(ValueError, match="attention backend"):
        sdpa_core("fastest")
