"""The web pool, the filters, the captioner and the curation experiment (chapter 11)."""

import json
import math
from pathlib import Path

import pytest
import torch

from cogvx_mini.captioner import (
    ATTRIBUTES,
    attribute_accuracy,
    majority_caption,
    train_captioner,
    write_captions,
)
from cogvx_mini.curation import (
    STATISTIC_OF,
    STATISTICS,
    Threshold,
    clip_statistics,
    fit_thresholds,
    label_indices,
    precision_recall,
    statistics_matrix,
    train_classifier,
)
from cogvx_mini.data.toyworld import parse_caption, render, sample_scene
from cogvx_mini.data.web_pool import CLASSES, DEFECTS, render_defect, web_clip, web_pool

torch.set_num_threads(1)


def test_web_pool_is_deterministic_by_seed():
    a, b = web_pool(14, defect_share=1 / 6), web_pool(14, defect_share=1 / 6)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.video, y.video, rtol=0, atol=0)
        assert (x.web_caption, x.defect, x.caption) == (y.web_caption, y.defect, y.caption)
    assert any(
        not torch.equal(x.video, y.video)
        for x, y in zip(a, web_pool(14, first_seed=1), strict=False)
    )


def test_web_pool_shares_and_ground_truth():
    pool = web_pool(240, frames=5, height=32, width=32, defect_share=0.1)
    counts = {c: sum(p.defect == c for p in pool) for c in CLASSES}
    assert 0.25 < counts["clean"] / len(pool) < 0.55  # 40% expected
    assert all(counts[d] > 8 for d in DEFECTS)
    for clip in pool:
        assert clip.video.shape == (3, 5, 32, 32) and clip.video.abs().max() <= 1
        assert parse_caption(clip.caption)  # the truth is a dense toy-world caption
        assert clip.web_caption != clip.caption and len(clip.web_caption.split()) <= 4
    assert all(c.defect == "clean" for c in web_pool(30, defect_share=0.0))


def test_web_pool_rejects_bad_input():
    with pytest.raises(ValueError, match="defect_share"):
        web_clip(0, defect_share=0.5)
    with pytest.raises(ValueError, match="defect"):
        render_defect(sample_scene(0), "blurry", 9, 64, 64)


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_defect_is_flagged_by_its_statistic(defect):
    """Clear cases: the statistic of each class separates its clips from the same scenes clean
    (every defective clip beyond every clean one, in the statistic's direction)."""
    statistic = STATISTIC_OF[defect]
    clean, bad = [], []
    for seed in range(6):
        scene = sample_scene(seed)
        clean.append(clip_statistics(render(scene, 9, 64, 64))[statistic])
        bad.append(clip_statistics(render_defect(scene, defect, 9, 64, 64, seed))[statistic])
    if defect == "lecture":  # lack of motion: low values flag it
        assert max(bad) < min(clean), (bad, clean)
    elif defect == "motion_jump":
        # Jumpiness depends on how fast a scene's objects cover their own size, so it overlaps
        # across scenes (its held-out recall says how much); within a scene it is clear.
        ratios = sorted(b / c for b, c in zip(bad, clean, strict=True))
        assert ratios[0] > 1.1 and ratios[len(ratios) // 2] > 1.5, ratios
    else:
        assert min(bad) > max(clean), (bad, clean)


def test_statistics_matrix_rows_are_clip_statistics_in_column_order():
    clips = [render_defect(sample_scene(i), d, 9, 32, 32, seed=i) for i, d in enumerate(CLASSES)]
    stats = statistics_matrix(clips)
    assert stats.shape == (len(clips), len(STATISTICS))
    for row, video in zip(stats, clips, strict=True):
        expected = torch.tensor([clip_statistics(video)[s] for s in STATISTICS])
        torch.testing.assert_close(row, expected)


def test_threshold_and_classifier_precision_recall():
    pool = web_pool(168, defect_share=1 / 7)
    stats = statistics_matrix([c.video for c in pool])
    labels = [c.defect for c in pool]
    train_part, test_part = slice(0, 84), slice(84, None)
    thresholds = fit_thresholds(stats[train_part], labels[train_part])
    assert set(thresholds) == set(DEFECTS)
    truth = label_indices(labels[test_part])
    classifier = train_classifier(stats[train_part], labels[train_part], steps=300)
    pr = precision_recall(classifier.predict(stats[test_part]), truth)
    # Far better than chance (1/7) on held-out clips, for the clean class the filter keeps.
    assert pr["clean"]["precision"] > 0.6 and pr["clean"]["recall"] > 0.6
    mean_recall = sum(pr[c]["recall"] for c in CLASSES) / len(CLASSES)
    assert mean_recall > 0.6, pr


def test_precision_recall_by_hand():
    pred, truth = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0])
    pr = precision_recall(pred, truth)
    assert pr["clean"]["precision"] == 0.5 and pr["clean"]["recall"] == 0.5
    assert pr["editing"]["precision"] == 1.0 and pr["editing"]["recall"] == 2 / 3
    assert math.isnan(pr["motion_jump"]["recall"]) and pr["motion_jump"]["precision"] == 0.0
    flags = Threshold("lecture", "motion", 0.5, above=False).flags(
        torch.tensor([[0.0] * 3 + [0.2] + [0.0] * 2, [0.0] * 3 + [0.9] + [0.0] * 2])
    )
    assert flags.tolist() == [True, False] and len(STATISTICS) == 6
    with pytest.raises(ValueError, match="labels"):
        label_indices(["clean", "blurry"])


def test_captioner_beats_the_trivial_baseline():
    train_clips = web_pool(160, defect_share=0.0)
    test_clips = web_pool(40, defect_share=0.0, first_seed=300_000)
    truth = [c.caption for c in test_clips]
    model = train_captioner(
        torch.stack([c.video for c in train_clips]), [c.caption for c in train_clips], steps=150
    )
    written = write_captions(model, torch.stack([c.video for c in test_clips]))
    assert all(parse_caption(w) for w in written)  # the toy world's grammar
    acc = attribute_accuracy(written, truth)
    base = attribute_accuracy([majority_caption([c.caption for c in train_clips])] * 40, truth)
    assert set(acc) == set(ATTRIBUTES)
    for attribute in ATTRIBUTES:
        assert acc[attribute] > base[attribute] + 0.15, (attribute, acc, base)
    assert attribute_accuracy(truth, truth) == dict.fromkeys(ATTRIBUTES, 1.0)


def _check_schema(result: dict) -> None:
    for key in ("filter", "captioner", "arms", "judge_ceiling", "budget", "not_implemented"):
        assert key in result, key
    for name in CLASSES:
        assert set(result["filter"][name]) >= {"precision", "recall"}
    assert set(result["captioner"]) == set(ATTRIBUTES)
    assert list(result["arms"]) == ["a_raw", "b_filtered", "c_recaptioned", "d_recipe"]
    for arm in result["arms"].values():
        for metric in ("judge_seen", "judge_held_out", "eval_loss"):
            assert {"mean", "std"} <= set(arm[metric])
            assert len(arm[metric]["values"]) == len(arm["seeds"])
        assert arm["steps"] > 0 and arm["device"]
    recipe = result["arms"]["d_recipe"]
    assert "fine-tune" in recipe["not_implemented"] and recipe["image_ratio"] > 0
    (start, low), (switch, high) = recipe["resolution_stages"]
    assert start == 0 < switch < recipe["steps"] and low < high
    assert recipe["train_clips"] > result["arms"]["c_recaptioned"]["train_clips"]
    assert 0.0 <= result["judge_ceiling"] <= 1.0


def test_experiment_end_to_end_tiny(tmp_path):
    from cogvx_mini.curation_experiment import main

    main(["--budget", "tiny", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "curation.json").read_text())
    _check_schema(result)
    assert result["budget"] == "tiny"
    for png in ("curation_filters.png", "curation_arms.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_runs_of_disjoint_seeds_merge_into_the_run_of_both(tmp_path):
    from cogvx_mini.curation_experiment import main, merge_results

    for seeds in (["0"], ["1"], ["0", "1"]):
        main(["--budget", "tiny", "--seeds", *seeds, "--out", str(tmp_path / "".join(seeds))])
    main(["--merge", str(tmp_path / "0/curation.json"), str(tmp_path / "1/curation.json"),
          "--out", str(tmp_path / "0")])  # fmt: skip
    merged = json.loads((tmp_path / "0/curation.json").read_text())
    both = json.loads((tmp_path / "01/curation.json").read_text())
    _check_schema(merged)
    assert merged["seeds"] == both["seeds"] == [0, 1]
    for arm in both["arms"]:
        for metric in ("judge_seen", "judge_held_out", "eval_loss", "defective"):
            got, want = merged["arms"][arm][metric], both["arms"][arm][metric]
            assert got["values"] == pytest.approx(want["values"], rel=1e-5), (arm, metric)
            assert got["mean"] == pytest.approx(want["mean"], rel=1e-5)
    assert [v["outcome"] for v in merged["verdicts"]["b_filtered_vs_a_raw"]] == [
        v["outcome"] for v in both["verdicts"]["b_filtered_vs_a_raw"]
    ]
    with pytest.raises(ValueError, match="each of"):
        merge_results([both, both])


def test_committed_result_schema():
    path = Path(__file__).parent.parent / "book" / "data" / "curation.json"
    result = json.loads(path.read_text())
    _check_schema(result)
    assert result["budget"] in ("cpu", "gpu") and len(result["seeds"]) >= 3
