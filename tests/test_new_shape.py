"""A shape outside the toy world (the diamond chapter 9 teaches with LoRA): drawn only when asked,
read back by both judges, and invisible to every score of the world's own captions."""

import dataclasses

import pytest
import torch

from cogvx_mini import pipeline
from cogvx_mini.data.strict_judge import strict_judge, strict_judge_details
from cogvx_mini.data.toyworld import (
    SHAPES,
    ToyObject,
    ToyScene,
    judge,
    judge_details,
    render,
    sample_scene,
    shape_choices,
)
from cogvx_mini.pipeline import concept_scores, evaluation_prompts
from cogvx_mini.training.concept import ConceptRecipe, concept_prompts
from cogvx_mini.training.train import WORLDS, cache_key, parse_args, toy_clips


def diamond_scenes(count: int = 64) -> list[ToyScene]:
    """The unseen scenes chapter 9 judges the fine-tune on, each with a diamond first."""
    return [sample_scene(10_000 + i, new_shape="diamond") for i in range(count)]


def first_object_read(scene: ToyScene) -> tuple[bool, bool, float, float]:
    """Whether the judge and the strict judge find the first object of ``scene`` with its shape,
    and their scores, on its ground-truth clip ``[3, 17, 64, 64]``."""
    video = render(scene, 17, 64, 64)
    old, strict = judge_details(video, scene.caption), strict_judge_details(video, scene.caption)
    return old.objects[0].shape_ok, strict.objects[0].checks["shape"], old.score, strict.score


def test_ground_truth_diamonds_are_diamonds_to_both_judges():
    scenes = diamond_scenes(32)
    for scene in scenes[:16]:  # alone, every diamond is one to both judges
        assert first_object_read(ToyScene(scene.objects[:1])) == (True, True, 1.0, 1.0), scene
    # In the scenes, an object drawn later can hide it: read as often as the world's own shapes.
    read = torch.tensor([first_object_read(s) for s in scenes]).float().mean(0)
    plain = torch.tensor([first_object_read(sample_scene(10_000 + i)) for i in range(32)])
    assert (read[:2] >= 0.9).all() and (read[:2] >= plain.float().mean(0)[:2]).all(), read
    assert (read[2:] >= 0.95).all(), read  # the judge's and the strict judge's mean scores


@pytest.mark.parametrize("shape", SHAPES)
def test_a_world_shape_captioned_as_a_diamond_is_not_a_diamond(shape):
    # Else a model that ignores the word would score new_shape_right for free.
    for size in ("small", "large"):
        obj = ToyObject(shape, "red", size, "right", (0.4, 0.3))
        video = render(ToyScene((obj,)), 17, 64, 64)
        caption = f"a {size} red diamond moves right"
        assert not judge_details(video, caption).objects[0].shape_ok, (shape, size)
        assert not strict_judge_details(video, caption).objects[0].checks["shape"], (shape, size)
        alone = ToyScene((dataclasses.replace(obj, shape="diamond"),))
        assert judge(render(alone, 17, 64, 64), caption) == 1.0
        assert strict_judge(render(alone, 17, 64, 64), caption) == 1.0


# Both judges' scores of 16 videos under the world's own captions, computed with the judges as
# they were before NEW_SHAPES existed (commit 713f414): a diamond where the caption names another
# shape, then the ground truth under heavy noise, for each of 8 scenes.
BEFORE = [0.9167, 0.8333, 1.0, 0.6667, 0.875, 0.75, 0.75, 0.75]
BEFORE += [1.0, 0.9167, 0.6667, 0.5833, 0.75, 0.375, 1.0, 1.0]
STRICT_BEFORE = [0.8333, 0.75, 1.0, 0.6667, 0.875, 0.375, 0.75, 0.75]
STRICT_BEFORE += [1.0, 0.9167, 0.6667, 0.5833, 0.75, 0.375, 1.0, 0.5]


def test_the_worlds_own_captions_score_as_before():
    assert shape_choices(["circle", "square"]) == SHAPES
    assert shape_choices(["circle", "diamond"]) == (*SHAPES, "diamond")
    g = torch.Generator().manual_seed(0)
    videos, captions = [], []
    for i in range(8):
        plain = sample_scene(10_000 + i)
        videos.append(render(sample_scene(10_000 + i, new_shape="diamond"), 17, 64, 64))
        captions.append(plain.caption)
        noise = 0.35 * torch.randn(3, 17, 64, 64, generator=g)
        videos.append((render(plain, 17, 64, 64) + noise).clamp(-1, 1))
        captions.append(plain.caption)
    assert [judge(v, c) for v, c in zip(videos, captions, strict=True)] == pytest.approx(
        BEFORE, abs=1e-4
    )
    strict = [strict_judge(v, c) for v, c in zip(videos, captions, strict=True)]
    assert strict == pytest.approx(STRICT_BEFORE, abs=1e-4)


def test_new_shape_changes_only_the_first_objects_shape():
    for seed in range(50):
        for split in ("train", "held_out"):
            plain, new = sample_scene(seed, split=split), sample_scene(seed, 3, split, "diamond")
            assert new.objects[0] == dataclasses.replace(plain.objects[0], shape="diamond")
            assert new.objects[1:] == plain.objects[1:]
            assert "diamond" not in plain.caption and new.caption.count("diamond") == 1


def test_new_shape_is_checked():
    with pytest.raises(
        ValueError, match=r"new_shape: expected one of \['diamond'\], got 'hexagon'"
    ):
        sample_scene(0, new_shape="hexagon")
    with pytest.raises(ValueError, match="new_shape: expected"):
        evaluation_prompts("train", 2, new_shape="circle")  # a world shape is not new
    with pytest.raises(ValueError, match="world: expected a world with a new shape"):
        ConceptRecipe(world="full")
    with pytest.raises(ValueError, match="new_shape_share: expected a share in"):
        ConceptRecipe(new_shape_share=1.5)
    with pytest.raises(ValueError, match="new_shape_share: expected the world's own 0.75"):
        ConceptRecipe(new_shape_share=1.0).argv("runs/x", "weights.safetensors")


def test_concept_scores_counts_the_new_shape_only(monkeypatch):
    scenes = diamond_scenes(2)
    # The first video draws its diamond, the second a square in its place.
    square = dataclasses.replace(scenes[1].objects[0], shape="square")
    drawn = [scenes[0], ToyScene((square, *scenes[1].objects[1:]))]
    videos = torch.stack([render(s, 17, 64, 64) for s in drawn])

    def fake_generate(prompts, pipe, **kwargs):
        assert kwargs["frames"] == 17 and not kwargs["progress"]
        return videos[: len(prompts)]

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    prompts = [s.caption for s in scenes]
    got = concept_scores(object(), prompts, frames=17)
    assert got["new_shape_right"] == 0.5 and got["prompts"] == 2
    assert got["judge"] == pytest.approx(
        sum(judge(v, p) for v, p in zip(videos, prompts, strict=True)) / 2
    )
    assert got["strict"] == pytest.approx(
        sum(strict_judge(v, p) for v, p in zip(videos, prompts, strict=True)) / 2
    )
    assert (
        concept_scores(object(), [sample_scene(10_000).caption], frames=17)["new_shape_right"]
        is None
    )


def test_the_diamond_world_trains_and_judges_on_its_own_prompts():
    recipe = ConceptRecipe()
    prompts = concept_prompts(recipe, 4)
    assert prompts["new"] == evaluation_prompts("train", 4, new_shape="diamond")  # unseen seeds
    assert prompts["own"] == evaluation_prompts("train", 4)
    assert all(p.count("diamond") == 1 for p in prompts["new"])
    world = WORLDS[recipe.world]
    assert cache_key(8, world, None)["new_shape"] == ["diamond", 0.75]
    assert "new_shape" not in cache_key(8, WORLDS["full"], None)  # old caches stay valid
    args = parse_args(recipe.argv("runs/x", "weights.safetensors"))  # the same run by the CLI
    assert (args.world, args.lora.rank, args.lr, args.steps) == (
        recipe.world,
        recipe.rank,
        recipe.lr,
        recipe.steps,
    )
    assert (args.warmup, args.batch_size, args.clips) == (
        recipe.warmup,
        recipe.batch_size,
        recipe.clips,
    )


def test_a_share_of_the_diamond_worlds_scenes_stay_as_they_were():
    # Prior preservation: the other scenes are the world's own, so the words keep their meaning.
    clips = list(toy_clips(40, (9,), 32, 32, new_shape="diamond", new_shape_share=0.5))
    new = [i for i, (_, caption) in enumerate(clips) if "diamond" in caption]
    assert 12 <= len(new) <= 28
    for i, (video, caption) in enumerate(clips):
        scene = sample_scene(i, split="train", new_shape="diamond" if i in new else None)
        assert caption == scene.caption and torch.equal(video, render(scene, 9, 32, 32))
    assert all("diamond" in c for _, c in toy_clips(5, (9,), 32, 32, new_shape="diamond"))
    with pytest.raises(ValueError, match="new_shape_share: expected a share in"):
        next(toy_clips(1, new_shape="diamond", new_shape_share=1.5))
