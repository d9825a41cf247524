import pytest
import torch

from cogvx_mini.timestep_sampling import (
    TimestepLossTracker,
    batch_timesteps,
    explicit_uniform_timesteps,
    rank_interval,
)


@pytest.mark.parametrize("world_size", [1, 3, 7, 8])
def test_each_rank_stays_in_its_interval_and_covers_it(world_size):
    g = torch.Generator().manual_seed(0)
    for rank in range(world_size):
        lo, hi = rank_interval(rank, world_size)
        t = explicit_uniform_timesteps(4000, rank, world_size, generator=g)
        assert t.dtype == torch.long
        assert lo <= t.min() and t.max() < hi, (rank, lo, hi, t.min(), t.max())
        # Rank r covers at least [T r / n, T (r+1) / n) on the integers inside it.
        assert t.min() <= -(-1000 * rank // world_size) + 2 and t.max() >= hi - 3


@pytest.mark.parametrize("world_size", [1, 3, 8])
def test_union_over_ranks_is_uniform(world_size):
    g = torch.Generator().manual_seed(1)
    n_per_rank = 60000 // world_size
    t = torch.cat(
        [
            explicit_uniform_timesteps(n_per_rank, r, world_size, generator=g)
            for r in range(world_size)
        ]
    )
    # Chi-square over 20 bins of 50 timesteps: 19 degrees of freedom, p = 0.001 at 43.8.
    counts = torch.bincount(t // 50, minlength=20).double()
    expected = len(t) / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 43.8, (chi2, counts)
    # Every single timestep is reachable.
    assert torch.bincount(t, minlength=1000).min() > 0


def test_union_is_uniform_for_awkward_world_size_at_the_boundaries():
    """With 3 ranks, timesteps 333 and 666 straddle two ranks; each still gets 1/1000."""
    g = torch.Generator().manual_seed(2)
    t = torch.cat([explicit_uniform_timesteps(300000, r, 3, generator=g) for r in range(3)])
    freq = torch.bincount(t, minlength=1000).double() / len(t)
    for boundary in (333, 666):
        assert abs(freq[boundary] - 1e-3) < 2.5e-4, freq[boundary]


def test_batch_timesteps_is_stratified_and_reduces_spread():
    g = torch.Generator().manual_seed(3)
    t = batch_timesteps(8, 8, generator=g)
    for i in range(8):
        assert 125 * i <= t[i] < 125 * (i + 1)
    # The batch mean of a timestep-dependent loss varies much less when stratified.
    loss = lambda t: (t.double() / 1000) ** 2  # noqa: E731
    plain = torch.stack([loss(batch_timesteps(8, 1, generator=g)).mean() for _ in range(2000)])
    strat = torch.stack([loss(batch_timesteps(8, 8, generator=g)).mean() for _ in range(2000)])
    assert strat.var() < plain.var() / 10


def test_bad_rank_fails_early():
    with pytest.raises(ValueError, match="rank"):
        explicit_uniform_timesteps(4, 3, 3)


def test_loss_tracker_means_and_state():
    tracker = TimestepLossTracker(1000, buckets=4)
    tracker.update(torch.tensor([0, 249, 250, 999]), torch.tensor([1.0, 3.0, 5.0, 7.0]))
    means = tracker.means()
    assert means[0] == 2.0 and means[1] == 5.0 and torch.isnan(means[2]) and means[3] == 7.0
    assert tracker.edges() == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    other = TimestepLossTracker(1000, buckets=4)
    other.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(other.means(), means, equal_nan=True)
    with pytest.raises(ValueError, match="shape"):
        tracker.update(torch.tensor([1, 2]), torch.tensor([1.0]))
