import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from cogvx_mini.data.text_encoder import ToyTextEncoder
from cogvx_mini.frame_pack import Bucket
from cogvx_mini.training.overrides import parse_overrides
from cogvx_mini.training.train import (
    CHECKPOINT_NAME,
    EpochPlan,
    LatentClip,
    LatentDataset,
    NaNLossError,
    TrainConfig,
    cache_latents,
    toy_clips,
    train,
)
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig
from cogvx_mini.weights.checkpoint import load_checkpoint


class PoolVAE:
    """Stand-in for the frozen VAE: 4x8x8 average pooling to 16 channels (shapes as the VAE)."""

    class Posterior:
        def __init__(self, mean):
            self.mean, self.std = mean, torch.full_like(mean, 0.05)

    def eval(self):
        return self

    def encode(self, video):
        first, rest = video[:, :, :1], video[:, :, 1:]
        pooled = [F.avg_pool3d(first, (1, 8, 8))]
        if rest.shape[2]:
            pooled.append(F.avg_pool3d(rest, (4, 8, 8)))
        z = torch.cat(pooled, dim=2)
        return self.Posterior(torch.cat([z] * 5 + [z[:, :1]], dim=1))


def tiny_model():
    torch.manual_seed(0)
    return CogVideoXTransformer(
        TransformerConfig.mini(num_layers=1, num_heads=2, head_dim=16, time_embed_dim=32)
    )


def random_dataset(n=12):
    g = torch.Generator().manual_seed(0)
    enc = ToyTextEncoder()
    buckets = [Bucket(5, 32, 32), Bucket(9, 32, 32)]
    # One fixed latent per bucket (a learnable data set: white noise would not be).
    protos = {b: torch.randn(16, (b.frames - 1) // 4 + 1, 4, 4, generator=g) for b in buckets}
    clips = []
    for i in range(n):
        b = buckets[i % 2]
        mean = protos[b] + 0.1 * torch.randn(protos[b].shape, generator=g)
        clips.append(
            LatentClip(
                mean, torch.full_like(mean, 0.1), enc.encode(["a red circle"])[0], "a red circle", b
            )
        )
    return LatentDataset(clips, enc.encode([""])[0], 1.0)


CFG = TrainConfig(steps=12, batch_size=4, warmup=3, checkpoint_every=5, timestep_strata=4)


def test_resume_after_a_crash_gives_the_same_losses(tmp_path):
    data = random_dataset()
    full = train(tiny_model(), data, CFG, tmp_path / "full", progress=False)

    def crash(step, loss):
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(), data, CFG, tmp_path / "cut", progress=False, on_step=crash)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)["step"] == 5
    resumed = train(tiny_model(), data, CFG, tmp_path / "cut", progress=False)
    assert resumed.step == full.step == 12
    assert resumed.losses == full.losses  # bit-for-bit, every step
    for a, b in zip(resumed.ema.state_dict().values(), full.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(resumed.tracker.means(), full.tracker.means(), equal_nan=True)


def test_resume_refuses_other_settings(tmp_path):
    data = random_dataset()
    train(tiny_model(), data, CFG, tmp_path, progress=False, stop_at=5)
    with pytest.raises(ValueError, match="another TrainConfig"):
        train(tiny_model(), data, TrainConfig(steps=12, batch_size=2), tmp_path, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = random_dataset()
    model = tiny_model()
    poisoned = {"on": False}
    forward = model.forward
    model.forward = lambda *a: forward(*a) * (torch.nan if poisoned["on"] else 1.0)

    def poison(step, loss):
        poisoned["on"] = step >= 7

    with pytest.raises(NaNLossError, match="step 7.*last good checkpoint"):
        train(model, data, CFG, tmp_path, progress=False, on_step=poison)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 5 and len(state["losses"]) == 5
    assert all(torch.isfinite(torch.tensor(state["losses"])))


def test_training_lowers_the_loss_and_tracks_timesteps(tmp_path):
    data = random_dataset(8)
    cfg = TrainConfig(
        steps=60, batch_size=4, lr=1e-2, warmup=5, checkpoint_every=100, timestep_strata=4
    )
    result = train(tiny_model(), data, cfg, tmp_path, progress=False)
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.9 * first, (first, last)
    assert result.tracker.counts.sum() == 60 * 4


def test_epoch_plan_batches_have_one_bucket_and_cover_the_data():
    data = random_dataset(12)
    plan = EpochPlan(data, 4, seed=0)
    seen = []
    for step in range(plan.per_epoch):
        bucket, idx = plan.batch(step)
        assert {data.clips[i].bucket for i in idx} == {bucket}
        seen += idx
    assert sorted(seen) == list(range(12))
    assert plan.batch(plan.per_epoch) != plan.batch(0) or plan.per_epoch == 1


def test_cache_latents_packs_into_buckets_and_normalises(tmp_path):
    buckets = [Bucket(9, 32, 32), Bucket(17, 32, 32)]
    clips = list(toy_clips(6, lengths=(7, 13, 20), height=32, width=32))
    data = cache_latents(clips, PoolVAE(), ToyTextEncoder(), buckets, progress=False)
    assert len(data.clips) == 6
    for clip in data.clips:
        assert clip.mean.shape == (16, (clip.bucket.frames - 1) // 4 + 1, 4, 4)
        assert clip.text.shape == (32, 64)
    g = torch.Generator().manual_seed(0)
    samples = torch.cat(
        [
            rearrange(
                c.mean + c.std * torch.randn(c.mean.shape, generator=g), "c t h w -> (c t h w)"
            )
            for c in data.clips
        ]
    )
    assert abs((samples * data.latent_scale).std().item() - 1) < 0.02
    assert data.empty_text.abs().sum() == 0


def test_lr_warms_up_then_decays_by_cosine_to_its_floor():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup=10, final_lr_ratio=0.1)
    lr = cfg.lr_schedule()
    lrs = [lr(s) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # never rises again
    assert lrs[55] == pytest.approx(0.55e-3, rel=0.02)  # half-way down the cosine
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_model_overrides_parse_yaml_values():
    got = parse_overrides(["num_layers=8", "rope_base_grid=[8,8]", "attention=2d1d"], "--model")
    assert got == {"num_layers": 8, "rope_base_grid": [8, 8], "attention": "2d1d"}
    assert TransformerConfig.mini(**got).rope_base_grid == (8, 8)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["num_layers"], "--model")


def test_one_override_syntax_checks_types_for_every_config():
    from cogvx_mini.experiments import BUDGETS
    from cogvx_mini.training.overrides import with_overrides

    cfg = with_overrides(TrainConfig(), ["betas=[0.8, 0.9]", "lr=1e-3"])
    assert cfg.betas == (0.8, 0.9) and cfg.lr == 1e-3
    assert with_overrides(BUDGETS["tiny"], ["seeds=[3, 4]"]).seeds == (3, 4)
    assert parse_overrides(["optim.lr=2e-4", "train.steps=5"]) == {
        "optim": {"lr": 2e-4},
        "train": {"steps": 5},
    }
    with pytest.raises(ValueError, match="betas: expected 2 values"):
        with_overrides(TrainConfig(), ["betas=[0.9]"])
    with pytest.raises(TypeError, match="steps: expected int, got 'x'"):
        with_overrides(TrainConfig(), ["steps=x"])
    with pytest.raises(ValueError, match="ema_decay: expected a value in"):
        with_overrides(TrainConfig(), ["ema_decay=2"])


def test_ema_exports_its_averages_into_a_copy_of_the_model():
    from cogvx_mini.training.ema import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(step=100)  # decay 0.5: half-way to the new weights
    averaged = ema.averaged_model(model)
    torch.testing.assert_close(averaged.weight, model.weight - 0.5)
    assert not averaged.weight.requires_grad and averaged is not model


def two_resolution_dataset():
    """random_dataset's clips at 32x32 and a copy at 16x16 (latents 2x2), images among them."""
    data = random_dataset(12)
    small = [
        LatentClip(c.mean[..., :2, :2], c.std[..., :2, :2], c.text, c.caption,
                   Bucket(c.bucket.frames, 16, 16))
        for c in data.clips
    ]  # fmt: skip
    return LatentDataset(small + data.clips, data.empty_text, 1.0)


def test_progressive_stages_draw_only_their_resolution_and_resume_exactly(tmp_path):
    from cogvx_mini.training.train import batch_plan

    data = two_resolution_dataset()
    stages = ((0, 16), (6, 32))
    cfg = TrainConfig(steps=12, batch_size=4, warmup=3, checkpoint_every=5, timestep_strata=4,
                      resolution_stages=stages)  # fmt: skip
    plan = batch_plan(data, cfg)
    for step in range(12):
        bucket, idx = plan.batch(step)
        assert bucket.height == (16 if step < 6 else 32)
        assert {data.clips[i].bucket for i in idx} == {bucket}
    full = train(tiny_model(), data, cfg, tmp_path / "full", progress=False)
    train(tiny_model(), data, cfg, tmp_path / "cut", progress=False, stop_at=7)
    resumed = train(tiny_model(), data, cfg, tmp_path / "cut", progress=False)
    assert resumed.losses == full.losses  # the stage of each step survives the resume
    with pytest.raises(ValueError, match="resolution_stages"):
        TrainConfig(steps=12, resolution_stages=((3, 16), (6, 32)))  # must start at step 0
    with pytest.raises(ValueError, match="no clip of height 64"):
        batch_plan(data, TrainConfig(steps=12, resolution_stages=((0, 64),)))


def test_best_share_stage_trains_on_the_best_scored_clips_of_the_last_stage():
    import dataclasses

    from cogvx_mini.training.train import batch_plan, stage_clips

    data = two_resolution_dataset()
    data.clips = [dataclasses.replace(c, quality=float(i)) for i, c in enumerate(data.clips)]
    cfg = TrainConfig(steps=12, batch_size=4, warmup=3, resolution_stages=((0, 16), (4, 32)),
                      best_share_from=9, best_share=0.25)  # fmt: skip
    (_, low), (_, high), (first, best) = stage_clips(data, cfg)
    assert first == 9 and len(best) == round(0.25 * len(high)) == 3
    assert best == sorted(sorted(high, key=lambda i: -data.clips[i].quality)[:3])  # top scores
    plan = batch_plan(data, cfg)
    for step in range(9, 12):
        assert set(plan.batch(step)[1]) <= set(best)
    with pytest.raises(ValueError, match="best_share_from"):
        TrainConfig(steps=12, resolution_stages=((0, 16), (4, 32)), best_share_from=3)
    with pytest.raises(ValueError, match="best_share"):
        TrainConfig(steps=12, best_share_from=6, best_share=1.5)


def test_with_images_adds_one_frame_videos_at_the_ratio():
    from cogvx_mini.training.train import with_images

    clips = [(torch.rand(3, 9, 8, 8), f"clip {i}") for i in range(10)]
    mixed = with_images(clips, 0.5, seed=1)
    assert mixed[:10] == clips and len(mixed) == 15
    for image, caption in mixed[10:]:
        source = clips[int(caption.split()[1])][0]
        assert image.shape == (3, 1, 8, 8)
        assert any(torch.equal(image[:, 0], source[:, f]) for f in range(9))
    assert with_images(clips, 0.5, seed=1)[10:][0][1] == mixed[10][1]  # deterministic by seed
    with pytest.raises(ValueError, match="ratio"):
        with_images(clips, 1.5)
