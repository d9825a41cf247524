import pytest

from cogvx_mini.shapes import check_frame_count, latent_frames, pipeline_shapes, pixel_frames


def test_full_size_shapes_match_the_paper():
    s = pipeline_shapes(49, 480, 720)
    assert s.latents == (1, 16, 13, 60, 90)
    assert s.patch_grid == (13, 30, 45)
    assert s.video_tokens[1] == 17_550
    assert s.sequence[1] == 17_776


def test_temporal_patch_halves_tokens():
    assert pipeline_shapes(49 + 4, 480, 720, temporal_patch_size=2).patch_grid == (7, 30, 45)


@pytest.mark.parametrize("frames", [1, 5, 9, 13, 49, 81])
def test_latent_and_pixel_frames_round_trip(frames):
    assert pixel_frames(latent_frames(frames)) == frames


@pytest.mark.parametrize("frames", [0, 2, 4, 48, 50])
def test_bad_frame_count_says_expected_and_got(frames):
    with pytest.raises(ValueError, match=rf"4k\+1.*got {frames}"):
        check_frame_count(frames)


def test_bad_spatial_size_is_named():
    with pytest.raises(ValueError, match="width divisible by 8, got 721"):
        pipeline_shapes(49, 480, 721)
    with pytest.raises(ValueError, match="latent height divisible by patch size 2, got 3"):
        pipeline_shapes(49, 24, 64)
