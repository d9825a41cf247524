import pytest
import torch

from cogvx_mini.rope import (
    apply_rope,
    positions_extrapolated,
    positions_interpolated,
    rope_1d,
    rope_3d,
    rope_split,
    sincos_3d,
)

GRID = (4, 5, 6)


def _index(t, h, w, grid=GRID):
    return (t * grid[1] + h) * grid[2] + w


def _scores(q, k, cos, sin, pairs):
    rq, rk = (
        apply_rope(q.expand(cos.shape[0], -1), cos, sin),
        apply_rope(k.expand(cos.shape[0], -1), cos, sin),
    )
    return torch.stack([rq[_index(*a)] @ rk[_index(*b)] for a, b in pairs])


def test_score_depends_only_on_the_offset():
    torch.manual_seed(0)
    cos, sin = rope_3d(64, GRID)
    q, k = torch.randn(1, 64, dtype=torch.float64), torch.randn(1, 64, dtype=torch.float64)
    cos, sin = cos.double(), sin.double()
    # three pairs of positions with the same offset (1, 2, -3)
    same = _scores(
        q, k, cos, sin, [((0, 0, 3), (1, 2, 0)), ((2, 1, 5), (3, 3, 2)), ((1, 2, 4), (2, 4, 1))]
    )
    torch.testing.assert_close(same, same[:1].expand(3), rtol=1e-6, atol=1e-6)
    # changing the offset along any one axis changes the score
    other = _scores(
        q, k, cos, sin, [((0, 0, 3), (2, 2, 0)), ((0, 0, 3), (1, 3, 0)), ((0, 0, 3), (1, 2, 1))]
    )
    assert ((other - same[0]).abs() > 1e-3).all()


def test_rotation_preserves_norms_and_is_identity_at_the_origin():
    torch.manual_seed(0)
    cos, sin = rope_3d(32, GRID)
    x = torch.randn(2, 3, cos.shape[0], 32)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position (0, 0, 0): no rotation
    assert not torch.allclose(y[:, :, 1:], x[:, :, 1:])


def test_channel_split_is_quarter_time_three_eighths_height_and_width():
    assert rope_split(64) == (16, 24, 24)
    assert rope_split(32) == (8, 12, 12)
    cos, _ = rope_3d(64, GRID)
    table = cos.reshape(*GRID, 64)
    varies = {
        axis: (table - table.select(axis, 0).unsqueeze(axis)).abs().amax(dim=(0, 1, 2)) > 0
        for axis in range(3)
    }
    # each channel group changes along its own axis only (the lowest pair of each group spins
    # fastest, so every group does change)
    expected = {0: slice(0, 16), 1: slice(16, 40), 2: slice(40, 64)}
    for axis, channels in expected.items():
        mask = torch.zeros(64, dtype=torch.bool)
        mask[channels] = True
        assert torch.equal(varies[axis] & ~mask, torch.zeros(64, dtype=torch.bool))
        assert varies[axis][channels].any()
    with pytest.raises(ValueError, match="divisible by 16"):
        rope_split(40)


def test_extrapolation_is_the_front_of_a_larger_table():
    small, large = (2, 3, 4), (3, 5, 6)
    cos_s, sin_s = rope_3d(32, small)
    cos_l, sin_l = rope_3d(32, large)
    front = cos_l.reshape(*large, 32)[:2, :3, :4].reshape(-1, 32)
    torch.testing.assert_close(cos_s, front)


def test_interpolation_squeezes_the_grid_into_the_base_grid():
    # on the base grid it is the identity
    pairs = zip(
        positions_interpolated((3, 4, 6), (4, 6)), positions_extrapolated((3, 4, 6)), strict=True
    )
    for a, b in pairs:
        torch.testing.assert_close(a, b)
    # a grid twice as fine takes half steps over the same range
    _, pos_h, pos_w = positions_interpolated((1, 8, 12), (4, 6))
    torch.testing.assert_close(pos_h, torch.arange(8) / 2)
    torch.testing.assert_close(pos_w, torch.arange(12) / 2)


def test_sincos_3d_layout():
    emb = sincos_3d(64, (3, 4, 5), spatial_scale=2.0).reshape(3, 4, 5, 64)
    # time in the first quarter, as [sin | cos]: sin(0) = 0, cos(0) = 1 at t = 0
    assert torch.equal(emb[0, :, :, :8], torch.zeros(4, 5, 8))
    assert torch.equal(emb[0, :, :, 8:16], torch.ones(4, 5, 8))
    # then the column w (24 channels) and the row h (24 channels)
    assert (emb[..., 16:40] == emb[:1, :1, :, 16:40]).all()  # depends on w only
    assert (emb[:, :, 1, 16:40] != emb[:, :, 0, 16:40]).any()
    assert (emb[..., 40:] == emb[:1, :, :1, 40:]).all()  # depends on h only
    assert (emb[:, 1, :, 40:] != emb[:, 0, :, 40:]).any()
    # the interpolation scale divides the positions: w = 2 at scale 2 is w = 1 at scale 1
    plain = sincos_3d(64, (3, 4, 5), spatial_scale=1.0).reshape(3, 4, 5, 64)
    torch.testing.assert_close(emb[:, :, 2, 16:40], plain[:, :, 1, 16:40])


def test_rope_1d_is_the_time_group_of_rope_3d():
    cos_1d, sin_1d = rope_1d(16, torch.arange(4))
    cos, sin = rope_3d(64, (4, 1, 1))
    torch.testing.assert_close(cos[:, :16], cos_1d)
    torch.testing.assert_close(sin[:, :16], sin_1d)
