import torch

from cogvx_mini.toyworld import COLOURS, DIRECTIONS, render, sample_scene, sample_video


def test_same_seed_same_video_and_caption():
    a, cap_a = sample_video(7, 9, 32, 48)
    b, cap_b = sample_video(7, 9, 32, 48)
    assert torch.equal(a, b) and cap_a == cap_b
    assert a.shape == (3, 9, 32, 48) and a.min() >= -1 and a.max() <= 1


def test_objects_move_in_their_captioned_direction():
    for seed in range(20):
        scene = sample_scene(seed, max_objects=1)
        (obj,) = scene.objects
        video = render(scene, 9, 64, 64)
        colour = torch.tensor(COLOURS[obj.colour]).view(3, 1, 1) * 2 - 1
        # Centroid of the pixels close to the object's colour, first vs last frame.
        track = []
        for t in (0, 8):
            mask = ((video[:, t] - colour).abs().sum(0) < 0.3).float()
            ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
            track.append(((mask * ys).sum() / mask.sum(), (mask * xs).sum() / mask.sum()))
        dy, dx = track[1][0] - track[0][0], track[1][1] - track[0][1]
        ey, ex = DIRECTIONS[obj.direction]
        assert dy * ey + dx * ex > 20, (seed, obj, dy, dx)


def test_caption_names_every_object():
    scene = sample_scene(3)
    for obj in scene.objects:
        assert f"{obj.size} {obj.colour} {obj.shape} moves {obj.direction}" in scene.caption
