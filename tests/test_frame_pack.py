import pytest
import torch

from cogvx_mini.frame_pack import (
    Bucket,
    assign_bucket,
    bucket_batches,
    floor_4k1,
    pack_frames,
    pack_to_bucket,
    pad_last_frame,
    positions_from_table,
    subsample_then_truncate,
)


def numbered(frames, h=4, w=6):
    """A clip whose frame i is filled with the value i, so frames can be traced."""
    return torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1).expand(3, frames, h, w)


def frame_ids(video):
    return video[0, :, 0, 0].long().tolist()


def test_floor_4k1():
    assert [floor_4k1(t) for t in (1, 4, 5, 16, 17, 48, 49)] == [1, 1, 5, 13, 17, 45, 49]


def test_padding_repeats_the_last_frame_never_black():
    out = pad_last_frame(numbered(6), 9)
    assert frame_ids(out) == [0, 1, 2, 3, 4, 5, 5, 5, 5]
    with pytest.raises(ValueError, match="truncate"):
        pad_last_frame(numbered(10), 9)


def test_long_clips_are_subsampled_then_truncated():
    out = subsample_then_truncate(numbered(100), 17, stride=3)
    assert frame_ids(out) == list(range(0, 51, 3))
    # Truncation keeps the start: the first 17 of the subsampled frames, not a centre crop.
    assert frame_ids(pack_frames(numbered(100), 9, stride=2)) == [0, 2, 4, 6, 8, 10, 12, 14, 16]


@pytest.mark.parametrize("length", range(1, 40, 3))
@pytest.mark.parametrize("target,stride", [(9, 1), (17, 2), (13, 3)])
def test_every_output_length_is_4k1(length, target, stride):
    out = pack_frames(numbered(length), target, stride)
    assert out.shape[1] == target and (out.shape[1] - 1) % 4 == 0
    ids = frame_ids(out)
    assert ids == sorted(ids) and ids[0] == 0


def test_pack_rejects_non_4k1_targets():
    with pytest.raises(ValueError, match="4k\\+1"):
        pack_frames(numbered(20), 16)


BUCKETS = [Bucket(9, 32, 32), Bucket(17, 32, 32), Bucket(17, 32, 48), Bucket(5, 32, 48)]


def test_assign_bucket_prefers_aspect_then_longest_fitting():
    assert assign_bucket(20, 64, 64, BUCKETS) == Bucket(17, 32, 32)
    assert assign_bucket(12, 64, 64, BUCKETS) == Bucket(9, 32, 32)
    assert assign_bucket(3, 64, 64, BUCKETS) == Bucket(9, 32, 32)  # shorter than all: pad
    assert assign_bucket(30, 60, 100, BUCKETS) == Bucket(17, 32, 48)
    assert assign_bucket(8, 60, 100, BUCKETS) == Bucket(5, 32, 48)
    with pytest.raises(ValueError, match="4k"):
        Bucket(16, 32, 32)


def test_bucket_batches_have_one_shape_and_cover_every_clip():
    shapes = [(20, 64, 64), (12, 64, 64), (30, 60, 100), (8, 60, 100)] * 5
    batches = bucket_batches(shapes, BUCKETS, batch_size=3, seed=0)
    seen = sorted(i for _, idx in batches for i in idx)
    assert seen == list(range(len(shapes)))
    for bucket, idx in batches:
        assert len(idx) <= 3
        assert {assign_bucket(*shapes[i], BUCKETS) for i in idx} == {bucket}
        videos = [pack_to_bucket(numbered(*shapes[i]), bucket) for i in idx]
        assert len({v.shape for v in videos}) == 1
        assert videos[0].shape == (3, bucket.frames, bucket.height, bucket.width)
    assert bucket_batches(shapes, BUCKETS, 3, seed=0) == batches


def test_positions_come_from_the_front_of_the_table():
    table = torch.arange(4 * 5 * 6).float().view(4, 5, 6, 1)
    rows = positions_from_table(table, (2, 3, 4))
    assert rows.shape == (24, 1)
    # Token (t, h, w) of the small grid has the position of (t, h, w) in the big one.
    assert rows[1 * 12 + 2 * 4 + 3, 0] == table[1, 2, 3, 0]
    with pytest.raises(ValueError, match="covering"):
        positions_from_table(table, (5, 1, 1))
