"""Issue 15, input and data items: bad input fails early and clearly; caches keyed by identity.

Each test here failed on the code before the fix (a silent wrong result or a raw error).
"""

import json
import math
import re
import subprocess

import pytest
import torch

from cogvx_mini.data.text_encoder import T5TextEncoder, ToyTextEncoder
from cogvx_mini.data.toyworld import VideoFolder, sample_video
from cogvx_mini.data.video_io import read_video, save_video
from cogvx_mini.diffusion import NoiseSchedule, add_noise, ddim_sample, ddim_step, v_target
from cogvx_mini.training.latent_cache import LatentCache, pseudo_latents
from cogvx_mini.training.scale_config import CONFIGS
from scale import precompute as precompute_cli
from scale import sample as sample_cli
from scale.precompute import build_video_encoder, precompute, read_captions

# ---------------------------------------------------------------------------------------------
# Helpers


def _write_videos(folder, names, seed=0, captions=None):
    """Videos ``names`` (seeds ``seed``, ``seed + 1``, ...) and a caption list of ``captions``
    (default: ``names``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        video, _ = sample_video(seed + i, 9, 32, 32)
        save_video(video, folder / name)
    rows = [{"file": n, "caption": f"a small red circle moves left {n}"} for n in captions or names]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _precompute(folder, cache, shard_size=4):
    calls = []

    def encode_video(v):
        calls.append(v.shape)
        return pseudo_latents(v[0], 4)

    encode_text = ToyTextEncoder(8, 6).encode
    counts = precompute(read_captions(folder), cache, [[9, 32, 32]], encode_video, encode_text,
                        shard_size=shard_size, progress=False)  # fmt: skip
    return counts, calls


def _cached_files(cache):
    return sorted(
        json.loads(line)["file"]
        for index in cache.glob("shard_*.jsonl")
        for line in index.read_text().splitlines()
    )


def _web_mp4(video, path):
    """An MP4 with its index first ("faststart", as served on the web): cut short, it decodes."""
    import imageio_ffmpeg

    plain = save_video(video, path.with_name("plain.mp4"), fps=8)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(plain)]
    subprocess.run([*cmd, "-c", "copy", "-movflags", "+faststart", str(path)], check=True)
    return path


# ---------------------------------------------------------------------------------------------
# 5. precompute resume keyed by file identity; the config that made a cache is recorded


def test_precompute_rerun_encodes_new_and_changed_videos_only(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write_videos(data, ["b.gif", "c.gif", "d.gif"])
    counts, calls = _precompute(data, cache)
    assert counts["encoded"] == 3 and len(calls) == 3
    # A video added to the finished folder (sorting first) and a changed one are encoded; no
    # other is encoded again, and the changed video's old entry is dropped.
    _write_videos(data, ["a.gif", "b.gif"], seed=10, captions=["a.gif", "b.gif", "c.gif", "d.gif"])
    with pytest.warns(UserWarning, match="dropped 1 stale cache entries"):
        counts, calls = _precompute(data, cache)
    assert counts == {"encoded": 2, "already_done": 2, "unreadable": 0}
    assert _cached_files(cache) == ["a.gif", "b.gif", "c.gif", "d.gif"]  # stale b entry gone
    assert len(LatentCache(cache)) == 4
    counts, calls = _precompute(data, cache)
    assert counts["encoded"] == 0 and not calls


def test_precompute_refuses_a_cache_made_with_another_config(tmp_path):
    from cogvx_mini.vae import VAE3D, VAEConfig
    from cogvx_mini.weights.assets import asset_metadata
    from cogvx_mini.weights.checkpoint import save_weights

    data = tmp_path / "data"
    _write_videos(data, ["a.gif"])
    torch.manual_seed(0)
    other = save_weights(VAE3D(VAEConfig.mini()).state_dict(), tmp_path / "vae.safetensors")
    args = ["--videos", str(data), "--out", str(tmp_path / "cache")]
    args += ["--config", str(CONFIGS / "tiny.yaml"), "--vae-config", "mini"]
    precompute_cli.main([*args, "--vae-weights", "mini"])
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())["config"]
    shipped = float(asset_metadata("vae_mini.safetensors")["scaling_factor"])
    assert manifest["vae_scaling_factor"] == pytest.approx(shipped, abs=1e-6)
    assert manifest["buckets"] == [[9, 32, 32], [5, 32, 32]] and manifest["text_length"] == 8
    with pytest.raises(ValueError, match=r"made with another \(vae: cache"):
        precompute_cli.main([*args, "--vae-weights", str(other)])
    # A folder of shards without a manifest (an older or foreign cache) is refused too.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "shard_00000.jsonl").write_text("")
    with pytest.raises(ValueError, match="without one"):
        precompute_cli.main([*args[:3], str(tmp_path / "old"), *args[4:], "--vae-weights", "mini"])


# ---------------------------------------------------------------------------------------------
# 6. truncated videos


def test_a_truncated_web_mp4_is_refused_by_read_video_and_skipped_by_precompute(tmp_path):
    # Noise: every frame costs about the same bytes, so half the file is about half the frames.
    video = torch.rand(3, 49, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = _web_mp4(video, tmp_path / "data" / "full.mp4")
    assert read_video(full).shape[1] == 49
    data = full.read_bytes()
    cut = tmp_path / "data" / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated video .*cut\.mp4.*49 frames"):
        read_video(cut)
    rows = [{"file": "cut.mp4", "caption": "a small red circle moves left"}]
    rows += [{"file": "full.mp4", "caption": "a small red circle moves left"}]
    (tmp_path / "data" / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="skipping unreadable video .*cut.mp4: truncated"):
        counts, _ = _precompute(tmp_path / "data", tmp_path / "cache")
    assert counts == {"encoded": 1, "already_done": 0, "unreadable": 1}
    assert _cached_files(tmp_path / "cache") == ["full.mp4"]


# ---------------------------------------------------------------------------------------------
# 7. --vae-weights PATH uses the scaling factor stored in the file


def test_vae_weights_path_uses_the_files_scaling_factor():
    from cogvx_mini.weights.assets import asset_path

    video, _ = sample_video(0, 9, 32, 32)
    cpu = torch.device("cpu")
    by_name = build_video_encoder("mini", "mini", cpu)(video[None])
    by_path = build_video_encoder(str(asset_path("vae_mini.safetensors")), "mini", cpu)(video[None])
    torch.testing.assert_close(by_path, by_name, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# 10. scale/sample.py checks every argument and the model folder before loading anything


def _config_only_model(root, without=None):
    """A CogVideoX folder with every component's config and no weights: anything that loads a
    model from it fails, so a check that passes here ran before any loading."""
    files = {
        "transformer/config.json": {"patch_size": 2, "in_channels": 16},
        "vae/config.json": {"block_out_channels": [128, 256, 256, 512]},
        "text_encoder/config.json": {},
        "tokenizer/tokenizer_config.json": {},
        "scheduler/scheduler_config.json": {"num_train_timesteps": 1000},
    }
    for name, content in files.items():
        if not name.startswith(f"{without}/"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(json.dumps(content))
    return root


@pytest.mark.parametrize(
    "args,message",
    [
        (["--frames", "16"], "4k\\+1"),
        (["--steps", "0"], "--steps: expected an integer with 1 <= value, got 0"),
        (["--steps", "2.5"], "--steps: expected an integer, got '2.5'"),
        (["--out", "x.avi"], "--out: expected a path ending in .mp4 or .gif"),
        (["--fps", "0"], "--fps"),
        (["--guidance", "nan"], "--guidance: expected a finite number"),
        (["--guidance", "-1"], "--guidance: expected a finite number >= 0.0"),
        (["--seed", str(2**70)], "--seed"),
        (["--height", "472"], "height: expected a multiple of 16"),
        (["--device", "gpu"], "--device"),
        (["--without", "scheduler"], "scheduler.*scheduler_config.json"),
        (["--without", "vae"], "vae.*config.json"),
        (["--without", "tokenizer"], "tokenizer"),
    ],
)
def test_sample_cli_rejects_bad_arguments_before_loading(tmp_path, capsys, args, message):
    without = args[1] if args[0] == "--without" else None
    model = _config_only_model(tmp_path / "model", without)
    argv = ["--model", str(model), "--prompt", "a fox", "--out", str(tmp_path / "v.mp4")]
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main(argv + (args if without is None else []))
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_sample_library_checks_before_loading(tmp_path):
    model = _config_only_model(tmp_path / "model")
    with pytest.raises(TypeError, match="prompts: expected a list of strings"):
        sample_cli.sample(model, "a fox", device="cpu")
    with pytest.raises(ValueError, match="steps"):
        sample_cli.sample(model, ["a fox"], steps=2000, device="cpu")
    with pytest.raises(FileNotFoundError, match="--model"):
        sample_cli.sample(tmp_path / "nope", ["a fox"], device="cpu")


# ---------------------------------------------------------------------------------------------
# 11. data paths confined, malformed lines named, shard digests, range checks, clear errors


@pytest.mark.parametrize("name", ["../outside.gif", "ABSOLUTE"])
def test_caption_lists_may_not_name_files_outside_the_data_folder(tmp_path, name):
    video, _ = sample_video(0, 9, 32, 32)
    outside = save_video(video, tmp_path / "outside.gif")
    name = str(outside) if name == "ABSOLUTE" else name
    (tmp_path / "data").mkdir()
    rows = [{"file": name, "video": name, "caption": "a red circle"}]
    (tmp_path / "data" / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"captions.jsonl:1: expected a path inside"):
        read_captions(tmp_path / "data")
    with pytest.raises(ValueError, match=r"captions.jsonl:1: expected a path inside"):
        VideoFolder(tmp_path / "data")


def test_a_malformed_caption_line_is_named_by_file_and_line(tmp_path):
    _write_videos(tmp_path, ["a.gif"])
    with open(tmp_path / "captions.jsonl", "a") as f:
        f.write('{"file": "a.gif", "caption": "oops"\n')
    with pytest.raises(ValueError, match=r"captions.jsonl:2: expected one JSON value per line"):
        read_captions(tmp_path)
    (tmp_path / "captions.jsonl").write_text('["a.gif", "a caption"]\n')
    with pytest.raises(ValueError, match=r"captions.jsonl:1: expected an object"):
        read_captions(tmp_path)


def test_a_shard_with_flipped_bytes_is_refused_on_load(tmp_path):
    _write_videos(tmp_path / "data", ["a.gif"])
    _precompute(tmp_path / "data", tmp_path / "cache")
    shard = next((tmp_path / "cache").glob("shard_*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # in the tensor data, past the header
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        LatentCache(tmp_path / "cache").get(0)


@pytest.mark.parametrize("t", [-1, 1000, float("nan"), 2.5])
def test_noising_functions_range_check_timesteps(t):
    schedule = NoiseSchedule()
    x0 = torch.zeros(2, 4, 3)
    steps = torch.tensor([5, t])
    with pytest.raises(ValueError, match=r"t: expected (timesteps in \[0, 999\]|whole-number)"):
        add_noise(schedule, x0, x0, steps)
    with pytest.raises(ValueError, match="t: expected"):
        v_target(schedule, x0, x0, steps)


def test_ddim_checks_steps_and_guidance():
    schedule = NoiseSchedule()
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="steps: expected an integer with 1 <= value"):
        ddim_step(schedule, x, 999, x, steps=0)
    with pytest.raises(ValueError, match="t: expected"):
        ddim_step(schedule, x, 1000, x, steps=10)

    def model(x, t):
        return x

    for guidance in (math.nan, -1.0):
        with pytest.raises(ValueError, match="guidance: expected a finite number >= 0"):
            ddim_sample(model, x, 2, guidance, uncond_fn=model, progress=False)
    with pytest.raises(TypeError, match="steps: expected an integer"):
        ddim_sample(model, x, 2.5, progress=False)


@pytest.fixture(scope="module")
def mini_pipe():
    from cogvx_mini.pipeline import load_mini

    return load_mini()


@pytest.mark.parametrize(
    "prompts,kwargs,error,message",
    [
        ([], {}, ValueError, "prompts: expected at least one prompt"),
        (["a red circle", 3], {}, TypeError, "prompts: expected strings"),
        (["x"], {"steps": 2.5}, TypeError, "steps: expected an integer"),
        (["x"], {"steps": 0}, ValueError, "steps: expected an integer with 1 <= value"),
        (["x"], {"seed": 2**70}, ValueError, "seed: expected an integer with 0 <= value"),
        (["x"], {"guidance": math.nan}, ValueError, "guidance: expected a finite number"),
        (["x"], {"guidance": -2.0}, ValueError, "guidance: expected a finite number >= 0"),
        (["x"], {"frames": 16}, ValueError, "4k\\+1"),
        (["x"], {"height": 0}, ValueError, "height: expected an integer with 1 <= value"),
        (["x"], {"negative_prompt": None}, TypeError, "negative_prompt: expected a string"),
    ],
)
def test_generate_rejects_bad_arguments(mini_pipe, prompts, kwargs, error, message):
    from cogvx_mini.pipeline import generate

    with pytest.raises(error, match=message):
        generate(prompts, mini_pipe, progress=False, **kwargs)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--seen", "0", "--held-out", "0"], "expected at least one prompt"),
        (["--seen", "-1"], "--seen: expected an integer with 0 <= value, got -1"),
        (["--steps", "0"], "--steps"),
        (["--guidance", "nan"], "--guidance"),
        (["--seed", str(2**70)], "--seed"),
        (["--weights", "/no/such.safetensors"], "--weights"),
    ],
)
def test_demo_rejects_bad_arguments_before_loading(capsys, argv, message):
    from cogvx_mini import demo

    with pytest.raises(SystemExit):
        demo.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("size", ["0", "-1", "two"])
def test_precompute_shard_size_must_be_positive(tmp_path, capsys, size):
    argv = ["--videos", str(tmp_path), "--out", str(tmp_path / "c"), "--config", "tiny"]
    with pytest.raises(SystemExit):
        precompute_cli.main([*argv, "--vae-weights", "mini", "--shard-size", size])
    assert "--shard-size: expected an integer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="shard_size: expected an integer with 1 <= value"):
        precompute([], tmp_path / "c", [[9, 32, 32]], None, None, shard_size=0)


def test_toy_text_encoder_says_what_it_drops():
    enc = ToyTextEncoder(16, 8)
    # A prompt with no ASCII word would silently be the empty (unconditional) prompt.
    with pytest.raises(ValueError, match="ASCII words .* only"):
        enc.encode(["一个红色的圆向左移动"])
    with pytest.warns(UserWarning, match="drops the non-ASCII characters"):
        out = enc.encode(["a red circle moves left 向左"])
    assert torch.equal(out, enc.encode(["a red circle moves left"]))
    assert enc.encode([""]).abs().sum() == 0  # the empty prompt stays the unconditional one
    with pytest.raises(ValueError, match="prompts: expected at least one prompt"):
        enc.encode([])


def test_t5_encoder_keeps_encoding_any_text(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from tiny_models import tiny_t5

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, model = tiny_t5()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    model.save_pretrained(tmp_path / "text_encoder")
    enc = T5TextEncoder(tmp_path, max_length=8)
    assert enc.encode(["一个红色的圆向左移动", "a red circle"]).shape == (2, 8, 16)
