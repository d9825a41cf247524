"""scale/ data: the batch plan, the toy path, and precompute -> cache -> loader."""

import json

import pytest
import scale_helpers  # noqa: F401
import torch

from cogvx_mini.data.text_encoder import ToyTextEncoder
from cogvx_mini.data.toyworld import sample_video
from cogvx_mini.data.video_io import save_video
from cogvx_mini.training.latent_cache import BatchPlan, LatentCache, ToyLatents, pseudo_latents
from cogvx_mini.vae import VAE3D, VAEConfig
from cogvx_mini.weights.checkpoint import save_weights
from scale.precompute import build_video_encoder, frame_stride, precompute, read_captions


@pytest.fixture(scope="module")
def toy():
    return ToyLatents([[9, 32, 32], [5, 32, 48]], samples=6, channels=4, text_length=6, text_dim=8)


def test_toy_latents_have_latent_shapes_and_buckets(toy):
    assert sorted(toy.buckets) == [(4, 2, 4, 6), (4, 3, 4, 4)]
    lat, text = toy.batch(toy.buckets[(4, 3, 4, 4)][:2])
    assert lat.shape == (2, 4, 3, 4, 4) and text.shape == (2, 6, 8)


def test_pseudo_latents_follow_the_objects():
    video, _ = sample_video(3, 9, 64, 64)
    lat = pseudo_latents(video, 4)
    assert lat.shape == (4, 3, 8, 8)
    assert not torch.allclose(lat[:, 0], lat[:, -1])  # things move
    assert torch.equal(lat, pseudo_latents(video, 4))


def test_batch_plan_is_deterministic_stratified_and_one_bucket(toy):
    plan = BatchPlan(toy, global_batch=4, seed=1)
    p = plan.plan(5)
    assert p == BatchPlan(toy, global_batch=4, seed=1).plan(5)
    assert p != plan.plan(6)
    assert all(i in toy.buckets[p.bucket] for i in p.indices)
    # explicit uniform sampling: sample j's timestep lies in the j-th quarter of [0, 1000)
    for step in range(20):
        ts = plan.plan(step).timesteps
        assert [t // 250 for t in ts] == [0, 1, 2, 3]
    seen = {plan.plan(s).bucket for s in range(20)}
    assert seen == set(toy.buckets)


def _write_folder(folder, n, bad=True):
    rows = []
    for i in range(n):
        frames = 9 if i % 2 else 13  # 13-frame clips are subsampled onto the 9-frame bucket
        video, caption = sample_video(i, frames, 32, 40)
        save_video(video, folder / f"v{i}.gif")
        rows.append({"file": f"v{i}.gif", "caption": caption})
    if bad:
        (folder / "broken.mp4").write_bytes(b"not a video")
        rows.append({"file": "broken.mp4", "caption": "nothing"})
    rows.append({"file": "missing.mp4", "caption": "not there"})
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def test_precompute_cache_round_trip_and_resume(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    videos.mkdir()
    _write_folder(videos, 5)
    with pytest.warns(UserWarning, match="1 caption rows missing or not a video"):
        items = read_captions(videos)
    assert len(items) == 6  # the missing file is dropped, the broken one is tried
    calls = []

    def encode_video(v):
        calls.append(v.shape)
        return pseudo_latents(v[0], 4)

    encode_text = ToyTextEncoder(8, 6).encode
    buckets = [[9, 32, 32], [5, 16, 32]]
    with pytest.warns(UserWarning, match="skipping unreadable video"):
        counts = precompute(items, cache, buckets, encode_video, encode_text, shard_size=4)
    assert counts == {"encoded": 5, "already_done": 0, "unreadable": 1}
    assert all(shape == (1, 3, 9, 32, 32) for shape in calls)
    data = LatentCache(cache)
    assert len(data) == 5 and list(data.buckets) == [(4, 3, 4, 4)]
    lat, text = data.get(0)
    assert lat.shape == (4, 3, 4, 4) and text.shape == (6, 8)
    # A second run finds every video done (the broken one known unreadable) and encodes nothing.
    counts = precompute(items, cache, buckets, encode_video, encode_text, shard_size=4)
    assert counts["already_done"] == 6 and len(calls) == 5


def test_a_folder_without_usable_videos_is_named(tmp_path):
    (tmp_path / "captions.csv").write_text("file,caption\nnope.mp4,a cat\n")
    with pytest.raises(ValueError, match="no usable videos in"):
        read_captions(tmp_path)
    with pytest.raises(ValueError, match="expected captions.jsonl or captions.csv"):
        read_captions(tmp_path / "..")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no cached samples in"):
        LatentCache(tmp_path / "empty")


def test_long_clips_keep_their_duration():
    assert frame_stride(20, 9) == 2 and frame_stride(5, 9) == 1


def test_video_encoder_from_vae_weights(tmp_path):
    torch.manual_seed(0)
    vae = VAE3D(VAEConfig.mini())
    path = save_weights(vae.state_dict(), tmp_path / "vae.safetensors")
    encode = build_video_encoder(str(path), "mini", torch.device("cpu"))
    video, _ = sample_video(0, 9, 32, 32)
    latents = encode(video[None])
    expected = vae.eval().encode(video[None]).mean[0] * vae.config.scaling_factor
    assert latents.shape == (16, 3, 4, 4)
    torch.testing.assert_close(latents, expected)


def test_real_data_path_end_to_end(tmp_path):
    """Toy world written as video files -> precompute CLI (mini VAE, toy text encoder) ->
    ``torchrun scale/train.py --data CACHE`` on two processes."""
    from scale_helpers import torchrun

    from cogvx_mini.data.toyworld import write_dataset
    from cogvx_mini.training.scale_config import CONFIGS
    from scale import precompute as precompute_cli

    write_dataset(tmp_path / "videos", 6, frames=9, height=32, width=32, fmt="gif")
    torch.manual_seed(0)
    vae_path = save_weights(VAE3D(VAEConfig.mini()).state_dict(), tmp_path / "vae.safetensors")
    config = str(CONFIGS / "tiny.yaml")
    precompute_cli.main(
        ["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "cache"), "--config", config]
        + ["--vae-weights", str(vae_path), "--vae-config", "mini", "--shard-size", "4"]
    )
    cache = LatentCache(tmp_path / "cache")
    assert len(cache) == 6 and list(cache.buckets) == [(16, 3, 4, 4)]
    out = tmp_path / "run"
    args = ["--config", config, "--data", str(tmp_path / "cache"), "--out", str(out)]
    args += [
        "--set",
        "train.steps=2",
        "--set",
        "train.global_batch=4",
        "--set",
        "train.micro_batch=2",
    ]
    log = torchrun(2, *args)
    assert "dp=2 x cp=1), 6 samples in 1 buckets" in log.stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
