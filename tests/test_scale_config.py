"""scale/ configs: typed loading, overrides, and the clear errors a practitioner meets first."""

import pytest
import scale_helpers  # noqa: F401  (puts the repository root on sys.path)

from cogvx_mini.training.scale_config import (
    CONFIGS,  # noqa: E402
    check_world,
    config_from_dict,
    load_config,
    video_tokens,
)


@pytest.mark.parametrize("name", ["tiny", "cogvideox_2b", "cogvideox_5b"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.train.global_batch >= config.train.micro_batch


def test_overrides_are_typed():
    config = load_config(CONFIGS / "tiny.yaml", ["train.steps=7", "optim.lr=3e-3", "parallel.cp=2"])
    assert config.train.steps == 7 and config.parallel.cp == 2
    assert isinstance(config.optim.lr, float)
    with pytest.raises(TypeError, match=r"train.steps: expected int, got 'many'"):
        load_config(CONFIGS / "tiny.yaml", ["train.steps=many"])
    with pytest.raises(ValueError, match=r"train: unknown keys \['stepz'\]"):
        load_config(CONFIGS / "tiny.yaml", ["train.stepz=3"])
    with pytest.raises(ValueError, match="activation_checkpointing: expected one of"):
        load_config(CONFIGS / "tiny.yaml", ["parallel.activation_checkpointing=some"])


def test_bad_buckets_say_what_was_expected():
    with pytest.raises(ValueError, match=r"4k\+1.*got 48"):
        config_from_dict({"data": {"buckets": [[48, 480, 720]]}})
    with pytest.raises(ValueError, match="divisible by 16.*got 480 x 712"):
        config_from_dict({"data": {"buckets": [[49, 480, 712]]}})


def test_full_size_token_count():
    assert video_tokens([49, 480, 720]) == 17_550
    assert video_tokens([97, 480, 720]) == 25 * 30 * 45


def test_world_checks_name_the_numbers():
    config = config_from_dict({"parallel": {"cp": 3}, "train": {"global_batch": 8}})
    with pytest.raises(ValueError, match="parallel.cp=3 must divide the world size, got 8 ranks"):
        check_world(config, 8, num_heads=48)
    config = config_from_dict({"parallel": {"cp": 4}})
    with pytest.raises(ValueError, match="must divide the model's 30 attention heads"):
        check_world(config, 8, num_heads=30)
    config = config_from_dict({"parallel": {"cp": 8}, "data": {"buckets": [[1, 32, 32]]}})
    with pytest.raises(ValueError, match=r"4 video tokens \(bucket \[1, 32, 32\]\) is shorter"):
        check_world(config, 8, num_heads=48)
    config = config_from_dict({"parallel": {"cp": 4}, "data": {"buckets": [[97, 480, 720]]}})
    assert check_world(config, 8, num_heads=48) == 2  # 33,750 tokens: shares of 8438 and 8437
    config = config_from_dict({"parallel": {"cp": 2}, "data": {"buckets": [[49, 480, 720]]}})
    assert check_world(config, 8, num_heads=48) == 4  # data-parallel degree
    config = config_from_dict({"train": {"global_batch": 6, "micro_batch": 1}})
    with pytest.raises(ValueError, match="global_batch=6 must be a multiple of data-parallel"):
        check_world(config, 4, num_heads=48)
