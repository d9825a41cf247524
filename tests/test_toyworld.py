import torch

from cogvx_mini.data.toyworld import COLOURS, DIRECTIONS, render, sample_scene, sample_video


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


# --- splits, judge, files ------------------------------------------------------------------------
import json  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402

from cogvx_mini.data.toyworld import (  # noqa: E402
    HELD_OUT,
    VideoFolder,
    judge,
    judge_details,
    parse_caption,
    write_dataset,
)
from cogvx_mini.data.video_io import read_video, save_video  # noqa: E402


def test_default_scenes_are_unchanged_by_the_splits():
    assert sample_scene(0).caption == (
        "a small red square moves right while a small blue triangle moves up"
    )
    assert sample_scene(1).caption == "a small white square moves down"


def test_train_split_never_shows_a_held_out_pair_and_held_out_always_does():
    seen = set()
    for seed in range(400):
        train = {(o.colour, o.direction) for o in sample_scene(seed, split="train").objects}
        assert not train & HELD_OUT, (seed, train)
        seen |= train
        held = sample_scene(seed, split="held_out").objects
        assert (held[0].colour, held[0].direction) in HELD_OUT
    # Everything else does occur in training: each colour and each direction on its own.
    assert {c for c, _ in seen} == set(COLOURS) and {d for _, d in seen} == set(DIRECTIONS)
    with pytest.raises(ValueError, match="split"):
        sample_scene(0, split="test")


def test_a_smaller_world_draws_only_its_colours_and_sizes_in_every_split():
    kept = {"colours": ("green", "red"), "sizes": ("large",)}
    for split in ("all", "train", "held_out"):
        for seed in range(100):
            for o in sample_scene(seed, 2, split, **kept).objects:
                assert o.colour in kept["colours"] and o.size == "large", (split, seed, o)
    held = {sample_scene(s, 1, "held_out", **kept).objects[0].colour for s in range(50)}
    assert held == {"green", "red"}  # the held-out pairs of the colours kept
    with pytest.raises(ValueError, match="colours: expected distinct names"):
        sample_scene(0, colours=("red", "cyan"))
    with pytest.raises(ValueError, match="sizes: expected distinct names"):
        sample_scene(0, sizes=())
    with pytest.raises(ValueError, match="max_objects"):  # two colours hold two objects at most
        sample_scene(0, 3, **kept)
    with pytest.raises(ValueError, match="no held_out split"):
        sample_scene(0, split="held_out", colours=("white",))


def test_parse_caption():
    assert parse_caption("A small red circle moves left while a large blue square moves up") == [
        ("small", "red", "circle", "left"),
        ("large", "blue", "square", "up"),
    ]
    with pytest.raises(ValueError, match="expected a caption like"):
        parse_caption("a dog runs")


def test_judge_scores_ground_truth_high_and_shuffled_captions_near_chance():
    vids = [sample_video(s, 17, 64, 64) for s in range(30)]
    truth = [judge(v, c) for v, c in vids]
    assert sum(truth) / len(truth) >= 0.95
    # Each video judged against the next scene's caption.
    shuffled = [judge(v, vids[(i + 1) % len(vids)][1]) for i, (v, _) in enumerate(vids)]
    assert sum(shuffled) / len(shuffled) <= 0.25


def test_judge_catches_each_wrong_attribute():
    video, caption = sample_video(1, 17, 64, 64)  # "a small white square moves down"
    assert judge(video, caption) == 1.0
    assert judge(video, "a small white square moves up") == 0.75
    assert judge(video, "a large white square moves down") == 0.75
    assert judge(video, "a small white circle moves down") == 0.75
    assert judge(video, "a small red square moves down") == 0.0  # red absent, white uncaptioned
    assert judge(video.flip(1), caption) == 0.75  # played backwards it moves up
    verdict = judge_details(video, caption)
    assert verdict.objects[0].present and not verdict.extra_colours


def test_judge_survives_noise_and_video_compression(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = []
    for seed in range(8):
        video, caption = sample_video(seed, 17, 64, 64)
        noisy = (video + 0.08 * torch.randn(video.shape, generator=g)).clamp(-1, 1)
        back = read_video(save_video(noisy, tmp_path / f"{seed}.mp4"))
        scores.append(judge(back, caption))
    assert sum(scores) / len(scores) >= 0.9, scores


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_written_dataset_reads_back(tmp_path, fmt):
    path = write_dataset(tmp_path, 3, frames=9, height=32, width=48, fmt=fmt, first_seed=10)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["seed"] for x in lines] == [10, 11, 12]
    folder = VideoFolder(tmp_path)
    items = list(folder)
    assert len(folder) == len(items) == 3 and not folder.skipped
    video, caption = items[0]
    expected, expected_caption = sample_video(10, 9, 32, 48, split="train")
    assert caption == expected_caption and video.shape == (3, 9, 32, 48)
    assert (video - expected).abs().mean() < 0.05


def test_unreadable_videos_are_skipped_with_a_warning_and_counted(tmp_path):
    write_dataset(tmp_path, 3, frames=5, height=32, width=32, fmt="gif")
    (tmp_path / "videos" / "000001.gif").write_bytes(b"not a gif")
    with open(tmp_path / "captions.jsonl", "a") as f:
        f.write(json.dumps({"video": "videos/missing.mp4", "caption": "x"}) + "\n")
    folder = VideoFolder(tmp_path)
    with pytest.warns(UserWarning, match="skipping unreadable video"):
        items = list(folder)
    assert len(items) == 2 and len(folder.skipped) == 2
    assert {p.name for p, _ in folder.skipped} == {"000001.gif", "missing.mp4"}


def test_video_folder_reads_the_finetuning_layout(tmp_path):
    rng = random.Random(0)
    names, prompts = [], []
    for i in range(2):
        video, caption = sample_video(rng.randrange(100), 5, 32, 32)
        save_video(video, tmp_path / "clips" / f"{i}.gif")
        names.append(f"clips/{i}.gif")
        prompts.append(caption)
    (tmp_path / "videos.txt").write_text("\n".join(names))
    (tmp_path / "prompts.txt").write_text("\n".join(prompts))
    assert [c for _, c in VideoFolder(tmp_path)] == prompts
    (tmp_path / "prompts.txt").write_text(prompts[0])
    with pytest.raises(ValueError, match="as many lines"):
        VideoFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        VideoFolder(tmp_path / "clips")


def test_chance_level_is_what_real_clips_score_under_the_wrong_caption():
    from cogvx_mini.data.toyworld import chance_level, judge

    chance = chance_level(16, max_objects=1, frames=9, size=32)
    truth = [sample_scene(10_000 + i, 1) for i in range(16)]
    right = sum(judge(render(s, 9, 32, 32), s.caption) for s in truth) / 16
    assert 0.0 < chance < 0.25 and right > 0.9
