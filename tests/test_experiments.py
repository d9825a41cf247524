import json

import pytest
import torch

from cogvx_mini.experiments import (
    ABLATIONS,
    BUDGETS,
    common,
    detrended_std,
    main,
    plots,
    registry,
    run,
    summary,
    track_residual,
    verdict,
)
from cogvx_mini.experiments import frame_pack as frame_pack_ablation


def _check_schema(result: dict, arms: list[str]) -> None:
    for key in ("name", "claim", "budget", "budget_settings", "device", "seeds", "seconds"):
        assert key in result, key
    assert list(result["arms"]) == arms
    assert set(result["primary"]) <= set(result["higher_is_better"])
    for arm in result["arms"].values():
        assert arm["parameters"] > 0
        assert len(arm["loss_curves"]) == len(result["seeds"])
        for c in arm["loss_curves"]:
            assert c and all(x == x and x > 0 for x in c)  # finite, positive losses
        for metric in result["primary"]:
            m = arm["metrics"][metric]
            assert len(m["values"]) == len(result["seeds"])
            assert m["min"] <= m["mean"] <= m["max"]
    json.dumps(result)  # JSON-ready


def test_vae_ablation_end_to_end(tmp_path):
    main(["vae_3d_vs_2d", "--budget", "tiny", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "vae_3d_vs_2d.json").read_text())
    assert (tmp_path / "vae_3d_vs_2d.png").stat().st_size > 1000
    _check_schema(result, ["3d_causal", "2d_per_frame", "2d_per_frame_larger_latent"])
    a, b = result["arms"]["3d_causal"], result["arms"]["2d_per_frame"]
    larger = result["arms"]["2d_per_frame_larger_latent"]
    assert larger["setting"]["latent_channels"] == a["setting"]["latent_channels"]
    assert larger["latent_values"] > 2 * a["latent_values"]  # 5 frames in, 2 latent frames
    # The arms really differ in the switched setting: time kernel and temporal compression.
    assert a["setting"]["time_kernel"] == 3 and b["setting"]["time_kernel"] == 1
    assert a["setting"]["temporal_compression"] == 4 and b["setting"]["temporal_compression"] == 1
    assert a["latent_shape"][1] == 2 and b["latent_shape"][1] == 5  # 5 frames in
    # ... at about the same latent size (within 15%).
    assert 0.85 < a["latent_values"] / b["latent_values"] < 1.15
    assert a["loss_curves"] != b["loss_curves"]
    # Figures are redrawn from the JSON alone.
    (tmp_path / "vae_3d_vs_2d.png").unlink()
    main(["all", "--plot-only", "--out", str(tmp_path)])
    assert (tmp_path / "vae_3d_vs_2d.png").is_file()


def test_explicit_uniform_arms_differ_only_in_strata():
    result = run("explicit_uniform_sampling", "tiny", seeds=[0], log=lambda s: None)
    _check_schema(result, ["explicit_uniform", "independent"])
    a, b = result["arms"]["explicit_uniform"], result["arms"]["independent"]
    assert a["setting"]["timestep_strata"] == BUDGETS["tiny"].batch
    assert b["setting"]["timestep_strata"] == 1
    assert a["config"] == b["config"] and a["parameters"] == b["parameters"]
    assert a["loss_curves"] != b["loss_curves"]
    assert len(a["loss_per_timestep_bucket"][0]) == 10


def test_unknown_names_fail_early():
    with pytest.raises(ValueError, match="expected an ablation"):
        run("nope", "tiny")
    with pytest.raises(ValueError, match="expected a budget"):
        run("frame_pack", "huge")
    assert set(registry.RUNNERS) == set(ABLATIONS)


def test_helpers():
    s = summary([1.0, 3.0])
    assert s["mean"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0 and s["std"] > 1.4
    s = summary([1.0, float("nan")])  # a seed that could not measure the metric
    assert s["mean"] == 1.0 and s["n"] == 1 and len(s["values"]) == 2
    # A straight constant-velocity track has no residual; a jump has one.
    assert track_residual([(0.0, 1.0 * i) for i in range(6)]) < 1e-9
    assert track_residual([(0.0, 1.0 * i + (5.0 if i == 3 else 0.0)) for i in range(6)]) > 1
    # Step-to-step noise: a smooth curve has none, added noise is measured.
    smooth = torch.linspace(1, 0.1, 200).tolist()
    noisy = (torch.linspace(1, 0.1, 200) + 0.05 * torch.randn(200)).tolist()
    assert detrended_std(smooth) < 1e-6 < 0.03 < detrended_std(noisy) < 0.08


def test_verdict_needs_a_gap_larger_than_the_spread():
    def result(a, b):
        arms = {"paper": a, "other": b}
        return {
            "arms": {n: {"metrics": {"loss": summary(v)}} for n, v in arms.items()},
            "primary": ["loss"],
            "higher_is_better": {"loss": False},
        }

    assert verdict(result([1.0, 1.0], [1.0, 1.0]))[0]["outcome"] == "within spread"
    assert verdict(result([1.0, 1.1], [2.0, 2.1]))[0]["outcome"] == "agrees"
    assert verdict(result([2.0, 2.1], [1.0, 1.1]))[0]["outcome"] == "disagrees"
    assert verdict(result([1.0, 1.5], [1.2, 1.7]))[0]["outcome"] == "within spread"


def test_latent_vae_does_not_depend_on_what_ran_before(monkeypatch):
    weights = []
    for state in (1, 2):
        monkeypatch.setattr(common, "_LATENT_VAE", {})
        torch.manual_seed(state)  # another ablation ran before: the global RNG moved on
        vae, _ = common.latent_vae(BUDGETS["tiny"], "cpu", log=lambda s: None)
        weights.append(torch.cat([p.flatten() for p in vae.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


def test_verdict_of_named_contrasts_and_its_power_statement():
    arms = {"rope_x": [1.0, 1.1], "sincos_x": [2.0, 2.1], "rope_i": [3.0, 3.1]}
    result = {
        "arms": {n: {"metrics": {"loss": summary(v)}} for n, v in arms.items()},
        "primary": ["loss"],
        "higher_is_better": {"loss": False},
        "contrasts": [["rope_x", "sincos_x"], ["rope_i", "sincos_x"]],
    }
    rows = verdict(result)
    assert [(r["paper_choice"], r["best_other"], r["outcome"]) for r in rows] == [
        ("rope_x", "sincos_x", "agrees"),
        ("rope_i", "sincos_x", "disagrees"),
    ]
    # The power statement: sigma (2 + z_0.8 sqrt(2 / n)), sigma the mean seed spread.
    sigma = summary([1.0, 1.1])["std"]
    assert rows[0]["detectable"] == pytest.approx(sigma * (2 + 0.8416 * 1.0), rel=1e-3)
    three = {"metrics": {"loss": summary([1.0, 1.1, 1.0])}}  # more seeds, less detectable
    assert plots.detectable_difference(three["metrics"]["loss"], three["metrics"]["loss"]) < (
        3 * summary([1.0, 1.1, 1.0])["std"]
    )


def test_black_padding_keeps_the_clip_and_blacks_out_the_rest():
    video = torch.rand(3, 9, 8, 8) * 2 - 1
    padded = frame_pack_ablation.pad_black(video, 17)
    assert padded.shape == (3, 17, 8, 8) and torch.equal(padded[:, :9], video)
    assert torch.all(padded[:, 9:] == -1)  # black, not the last frame repeated
    long = torch.rand(3, 21, 8, 8)
    assert torch.equal(frame_pack_ablation.pad_black(long, 17), long[:, :17])


def test_frame_pack_ablation_has_a_black_padding_arm_on_every_clip():
    result = run("frame_pack", "tiny", seeds=[0, 1], log=lambda s: None)
    _check_schema(result, ["frame_pack", "fixed_length", "black_padding"])
    used = {arm: a["data_used"] for arm, a in result["arms"].items()}
    assert used["black_padding"]["clips"] == used["frame_pack"]["clips"] == BUDGETS["tiny"].clips
    assert used["fixed_length"]["clips"] < BUDGETS["tiny"].clips
    assert "strict_judge_score" in result["arms"]["frame_pack"]["metrics"]


def test_sincos_can_number_an_unseen_grid_as_rope_does():
    from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

    tables = {}
    for grid in ("extrapolate", "interpolate"):
        model = CogVideoXTransformer(TransformerConfig.mini(positions="sincos", sincos_grid=grid))
        tables[grid] = [
            model.position_tables(g, "cpu", torch.float32) for g in [(3, 4, 4), (3, 6, 6)]
        ]
    assert torch.equal(tables["extrapolate"][0], tables["interpolate"][0])  # the training grid
    assert not torch.allclose(tables["extrapolate"][1], tables["interpolate"][1])
    with pytest.raises(ValueError, match="sincos_grid"):
        TransformerConfig.mini(sincos_grid="stretch")
    result = run("rope_vs_sincos", "tiny", seeds=[0, 1], log=lambda s: None)
    assert set(result["arms"]) == {
        "3d_rope_extrapolate",
        "sincos_extrapolate",
        "3d_rope_interpolate",
        "sincos_interpolate",
    }
    for a, b in result["contrasts"]:  # each contrast switches exactly one factor
        sa, sb = result["arms"][a]["setting"], result["arms"][b]["setting"]
        assert sum(sa[k] != sb[k] for k in sa) == 1
    assert len(verdict(result)) == 4 * len(result["primary"])
    # Each scheme trains once and is read under both numberings: the same weights, so the same
    # loss on the training grid and on the longer clip (time is never squeezed).
    for scheme in ("3d_rope", "sincos"):
        ext, inter = (result["arms"][f"{scheme}_{g}"] for g in ("extrapolate", "interpolate"))
        assert ext["loss_curves"] == inter["loss_curves"] and ext["trained_as"] == scheme
        for metric in ("seen", "longer"):
            a, b = (x["metrics"][f"eval_loss_{metric}"]["values"] for x in (ext, inter))
            assert a == pytest.approx(b, rel=1e-6), metric


@pytest.mark.parametrize("positions", ["rope", "sincos"])
def test_a_trained_model_read_under_another_numbering_differs_only_off_its_grid(positions):
    from cogvx_mini.experiments.rope_vs_sincos import position_schemes, with_numbering
    from cogvx_mini.transformer import CogVideoXTransformer

    arm = "3d_rope" if positions == "rope" else "sincos"
    torch.manual_seed(0)
    model = CogVideoXTransformer(position_schemes((2, 2))[arm]["config"]).eval()
    with torch.no_grad():  # weights away from AdaLN-zero, so that positions matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    squeezed = with_numbering(model, "interpolate")
    assert squeezed.config.rope_grid == squeezed.config.sincos_grid == "interpolate"
    c = model.config
    text, t = torch.randn(1, 4, c.text_dim), torch.tensor([500])
    for size, same in [(4, True), (6, False)]:  # the training grid (2 x 2 tokens), then 3 x 3
        x = torch.randn(1, c.in_channels, 3, size, size)
        with torch.no_grad():
            assert torch.allclose(model(x, text, t), squeezed(x, text, t), atol=1e-6) is same


def test_2d_plus_1d_needs_several_hops_in_its_design(tmp_path):
    result = run("full_vs_2d1d_attention", "tiny", seeds=[0, 1], log=lambda s: None)
    full, split = result["arms"]["3d_full"], result["arms"]["2d_plus_1d"]
    # 8 layers over 9 latent frames: 2D+1D relays motion over 4 spatial + 4 temporal layers.
    assert full["config"]["num_layers"] == split["config"]["num_layers"] == 8
    assert full["setting"]["frames"] == 33 and full["parameters"] == split["parameters"]
    assert (full["config"]["attention"], split["config"]["attention"]) == ("full", "2d1d")
    assert len(full["attention_probe"]) == 2 and len(full["attention_probe"][0]) == 8
    figure = plots.plot_probes(result, tmp_path / "probes.png")
    assert figure.stat().st_size > 1000
    assert (
        plots.plot_probes(run("explicit_uniform_sampling", "tiny", [0], log=print), tmp_path)
        is None
    )


def test_parts_run_in_processes_merge_into_the_result_of_one_run(tmp_path):
    one = run("explicit_uniform_sampling", "tiny", seeds=[0, 1], log=lambda s: None)
    args = ["explicit_uniform_sampling", "--budget", "tiny", "--seeds", "0", "1", "--parallel"]
    args += ["2", "--out", str(tmp_path), "--work", str(tmp_path / "parts")]
    main(args)
    merged = json.loads((tmp_path / "explicit_uniform_sampling.json").read_text())
    assert merged["seeds"] == [0, 1] and len(merged["seconds_per_part"]) == 4  # 2 arms x 2 seeds
    assert list(merged["arms"]) == list(one["arms"])
    for arm, a in one["arms"].items():
        b = merged["arms"][arm]
        for x, y in zip(b["loss_curves"], a["loss_curves"], strict=True):  # same seeds, same runs
            assert x == pytest.approx(y, rel=1e-5)
        assert len(b["loss_per_timestep_bucket"]) == 2
        for metric, m in a["metrics"].items():
            # (rel 1e-4: the children run on one thread, this process on more)
            assert b["metrics"][metric]["values"] == pytest.approx(m["values"], rel=1e-4)
            assert b["metrics"][metric]["std"] == pytest.approx(m["std"], rel=1e-2, abs=1e-6)
    # A rerun keeps every finished part (resuming after a time limit) ...
    parts = sorted((tmp_path / "parts" / "tiny").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    main(args)
    assert [p.stat().st_mtime_ns for p in parts] == stamps
    # ... but not one of other settings.
    assert registry.finished_part(parts[0], BUDGETS["tiny"], "cpu") is not None
    other = registry.replace(BUDGETS["tiny"], steps=4)
    assert registry.finished_part(parts[0], other, "cpu") is None
    assert registry.finished_part(parts[0], BUDGETS["tiny"], "cuda") is None
    with pytest.raises(ValueError, match="one experiment"):
        common.merge_runs([merged, dict(merged, name="frame_pack")])
    other_steps = dict(merged, budget_settings=dict(merged["budget_settings"], steps=9))
    with pytest.raises(ValueError, match="one experiment and one budget"):
        common.merge_runs([merged, other_steps])
    with pytest.raises(ValueError, match="each of"):
        common.merge_runs([merged, merged])
    with pytest.raises(ValueError, match="arms: expected some of"):
        run("explicit_uniform_sampling", "tiny", seeds=[0], arms=["uniform"])


def test_previous_frame_attention_sees_what_each_layer_kind_can_see():
    from cogvx_mini.data.toyworld import ToyObject, ToyScene
    from cogvx_mini.experiments.attention_probe import (
        object_token_masks,
        previous_frame_attention,
    )
    from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

    # A large object moving right over 33 frames: 9 latent frames of a 4 x 4 token grid.
    scene = ToyScene((ToyObject("square", "red", "large", "right", (0.5, 0.25)),))
    masks = object_token_masks(scene, 33, 64, (9, 4, 4))
    assert masks.shape == (1, 9, 4, 4) and masks.any(dim=(2, 3)).all()
    columns = masks[0].any(dim=1).float()  # [t, w]: where the object is, frame by frame
    centre = (columns * torch.arange(4.0)).sum(1) / columns.sum(1)
    assert centre[-1] > centre[0]  # it moves right
    torch.manual_seed(0)
    latents, text = torch.randn(16, 9, 8, 8), torch.randn(32, 64)
    for kind in ("full", "2d1d"):
        model = CogVideoXTransformer(TransformerConfig.mini(attention=kind))
        for p in model.parameters():  # away from AdaLN-zero's identity start
            p.data.normal_(0, 0.05)
        before = model(latents[None], text[None], torch.tensor([500]))
        layers = previous_frame_attention(model, latents, text, masks)
        assert torch.equal(model(latents[None], text[None], torch.tensor([500])), before)
        assert [layer["kind"] for layer in layers] == model.config.layer_kinds
        for layer in layers:
            assert 0 <= layer["share"] <= 1 and len(layer["map"]) == 4
            if layer["kind"] == "spatial":  # a frame's tokens cannot see the previous frame
                assert layer["share"] == 0 == layer["uniform"]
            else:
                assert layer["share"] > 0 and layer["uniform"] > 0


def test_modulation_probe_reads_each_arms_adaln():
    from cogvx_mini.experiments.expert_adaln import PROBE_TIMESTEPS, modulation_probe
    from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig

    torch.manual_seed(0)
    probes = {}
    for adaln in ("expert", "none", "mmdit"):
        model = CogVideoXTransformer(TransformerConfig.mini(adaln=adaln))
        for p in model.parameters():  # away from AdaLN-zero's zero modulations
            p.data.normal_(0, 0.05)
        probes[adaln] = modulation_probe(model)
        assert len(probes[adaln]["norms"]) == 2 * model.config.num_layers
        for row in probes[adaln]["norms"]:
            assert all(len(v) == len(PROBE_TIMESTEPS) for v in row.values())
    # One shared modulation: text and video scales are the same vector; experts differ.
    shared = [c for row in probes["none"]["norms"] for c in row["scale_cosine"]]
    expert = [c for row in probes["expert"]["norms"] for c in row["scale_cosine"]]
    assert min(shared) > 0.9999 and max(expert) < 0.99


def test_a_budget_can_train_and_judge_in_the_laptop_world(monkeypatch):
    from dataclasses import replace

    from cogvx_mini.training.train import WORLDS

    with pytest.raises(ValueError, match="world: expected one of"):
        replace(BUDGETS["tiny"], world="moon")
    budget = replace(BUDGETS["tiny"], world="laptop", prompts=2, evaluate_ema=True)
    seen = []
    import cogvx_mini.data.toyworld as toyworld  # judged_generations imports the judge from it

    original = toyworld.judge_details
    monkeypatch.setattr(toyworld, "judge_details", lambda v, c: seen.append(c) or original(v, c))
    result = run("expert_adaln", budget, seeds=[0], log=lambda s: None)
    laptop = WORLDS["laptop"]
    assert seen and all(" while " not in c and c.split()[1] == "large" for c in seen), seen
    assert all(c.split()[2] in laptop.colours for c in seen)
    assert result["budget_settings"]["world"] == "laptop"
    assert BUDGETS["laptop"].world == "laptop" and BUDGETS["laptop"].evaluate_ema


def test_parallel_must_be_a_positive_count(capsys):
    with pytest.raises(SystemExit):
        main(["frame_pack", "--budget", "tiny", "--parallel", "0"])
    assert "--parallel" in capsys.readouterr().err
