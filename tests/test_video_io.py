import imageio.v3 as iio
import numpy as np
import pytest
import torch

from cogvx_mini.data.video_io import film_strip, save_video, to_uint8_frames


def test_uint8_conversion_maps_range_and_layout():
    video = torch.zeros(3, 2, 4, 5)
    video[0, 1] = 1.0
    video[2, 0] = -1.0
    frames = to_uint8_frames(video)
    assert frames.shape == (2, 4, 5, 3)
    assert frames[1, 0, 0, 0] == 255 and frames[0, 0, 0, 2] == 0 and frames[0, 0, 0, 0] == 128


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_saved_video_reads_back(tmp_path, suffix):
    video = torch.rand(3, 5, 16, 16) * 2 - 1
    path = save_video(video, tmp_path / f"v{suffix}")
    back = iio.imread(path)
    assert back.shape[0] == 5 and back.shape[1:3] == (16, 16)
    assert not list(tmp_path.glob(".*tmp*"))


def test_film_strip_and_errors():
    assert film_strip(torch.zeros(3, 17, 8, 8), max_frames=4).shape == (8, 32, 3)
    with pytest.raises(ValueError, match="expected a .gif or .mp4"):
        save_video(torch.zeros(3, 1, 8, 8), "x.avi")
    with pytest.raises(ValueError, match=r"\[C, T, H, W\]"):
        to_uint8_frames(torch.zeros(8, 8))
    assert np.all(film_strip(torch.ones(3, 2, 2, 2)) == 255)
