import pytest
import torch

from cogvx_mini.data.toyworld import render, sample_scene
from cogvx_mini.data.video_features import (
    ToyVideoFeatures,
    attribute_loss,
    attribute_targets,
    frechet_distance,
    load_video_features,
    toy_batch,
    video_features,
)


def test_frechet_distance_is_the_closed_form_and_zero_for_one_set():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 1, generator=g, dtype=torch.float64)
    b = 2 + 3 * torch.randn(400, 1, generator=g, dtype=torch.float64)
    # In one dimension: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2, with the sample statistics.
    expected = (a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-9)
    c = torch.randn(64, 8, generator=g)
    assert frechet_distance(c, c) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(c, c[:, :4])


def test_targets_name_each_colour_present_and_the_loss_ignores_the_absent():
    scene = sample_scene(0)  # a small red square moves right, a small blue triangle moves up
    target = attribute_targets(scene)
    assert int(target[:, 0].sum()) == len(scene.objects)
    assert (target[target[:, 0] == 0, 1:] == -1).all()
    videos, targets = toy_batch(range(4), 9)
    assert videos.shape == (4, 3, 9, 64, 64) and targets.shape == (4, 6, 4)
    logits = ToyVideoFeatures().logits(videos)
    assert torch.isfinite(attribute_loss(logits, targets))
    with pytest.raises(ValueError, match="video: expected"):
        ToyVideoFeatures()(videos[0])


def test_the_shipped_features_tell_real_clips_from_wrong_ones():
    net = load_video_features()
    scenes = [sample_scene(3_000_000 + i) for i in range(48)]
    real_a = [render(s, 17, 64, 64) for s in scenes[:24]]
    real_b = [render(s, 17, 64, 64) for s in scenes[24:]]
    frozen = [v[:, :1].expand(-1, 17, -1, -1) for v in real_b]  # the same scenes, not moving
    grey = [v.mean(0, keepdim=True).expand(3, -1, -1, -1) for v in real_b]  # colour lost
    fa, fb = video_features(net, real_a), video_features(net, real_b)
    assert fa.shape == (24, net.to_features.out_features)
    same = frechet_distance(fa, fb)
    assert same < frechet_distance(fa, video_features(net, frozen))
    assert same < frechet_distance(fa, video_features(net, grey))
    small = [torch.nn.functional.interpolate(v, size=(32, 32)) for v in real_b]  # resized inside
    assert frechet_distance(fb, video_features(net, small)) < frechet_distance(
        fb, video_features(net, grey)
    )
