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


def test_latents_follow_the_vae_config():
    from cogvx_mini.vae import VAEConfig
    from cogvx_mini.vae_2d import per_frame_config

    mini = pipeline_shapes(17, 64, 64, vae=VAEConfig.mini())
    assert mini.latents == VAEConfig.mini().latent_shape(mini.video) == (1, 16, 5, 8, 8)
    per_frame = pipeline_shapes(17, 64, 64, vae=per_frame_config(latent_channels=4))
    assert per_frame.latents == (1, 4, 17, 8, 8)
    with pytest.raises(ValueError, match="width divisible by 4, got 30"):
        pipeline_shapes(9, 32, 30, vae=VAEConfig(block_out_channels=(8, 8, 8)))
