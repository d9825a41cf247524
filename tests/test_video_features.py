import pytest
import torch

from cogvx_mini.data.toyworld import render, sample_scene
from cogvx_mini.data.video_features import (
    ToyVideoFeatures,
    attribute_loss,
    attribute_targets,
    frechet_distance,
    kernel_distance,
    load_video_features,
    pack_int8,
    toy_batch,
    unpack_int8,
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
    scenes = [sample_scene(3_000_000 + i) for i in range(96)]
    real_a = [render(s, 17, 64, 64) for s in scenes[:48]]
    reference = video_features(net, [render(s, 17, 64, 64) for s in scenes[48:]])
    frozen = [v[:, :1].expand(-1, 17, -1, -1) for v in real_a]  # not moving
    grey = [v.mean(0, keepdim=True).expand(3, -1, -1, -1) for v in real_a]  # colour lost
    small = [torch.nn.functional.interpolate(v, size=(32, 32)) for v in real_a]  # resized inside
    kid = {
        name: kernel_distance(video_features(net, videos), reference)
        for name, videos in [("real", real_a), ("frozen", frozen), ("grey", grey), ("32", small)]
    }
    # Unbiased: other real clips (at any resolution) are near 0, wrong ones well above.
    assert abs(kid["real"]) < 0.15 and abs(kid["32"]) < 0.15, kid
    assert kid["frozen"] > 0.2 and kid["grey"] > 0.6, kid
    fd_real = frechet_distance(video_features(net, real_a), reference)
    assert fd_real < frechet_distance(video_features(net, frozen), reference)


def test_int8_weights_round_trip_to_nearly_the_same_network():
    state = ToyVideoFeatures().state_dict()
    packed = pack_int8(state)
    assert packed["convs.0.weight"].dtype == torch.int8 and "convs.0.bias.scale" not in packed
    unpacked = unpack_int8(packed)
    assert unpacked.keys() == state.keys()
    for name, value in state.items():
        step = value.abs().max() / 127  # at most half a quantisation step off
        assert (unpacked[name] - value).abs().max() <= step / 2 + 1e-7, name
