"""Loading diffusers-layout folders: sharded lazy reads, the converted model equals diffusers."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cogvx_mini.diffusion import NoiseSchedule
from cogvx_mini.weights.diffusers import (
    LazySafetensors,
    component_folder,
    schedule_from_diffusers,
    schedule_to_diffusers_config,
    transformer_from_diffusers,
)

pytest.importorskip("diffusers")
from diffusers import CogVideoXTransformer3DModel  # noqa: E402
from tiny_models import SMALL_TRANSFORMER  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random 2B-shaped transformer saved in the diffusers layout, in several shards."""
    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(**SMALL_TRANSFORMER).eval()
    root = tmp_path_factory.mktemp("cogvideox")
    model.save_pretrained(root / "transformer", max_shard_size="40KB")
    return model, root


def test_weights_are_sharded_and_read_lazily(saved):
    model, root = saved
    folder = component_folder(root, "transformer")
    assert len(list(folder.glob("*.safetensors"))) > 2  # the test really covers shards
    lazy = LazySafetensors(folder, dtype=torch.float64)
    assert set(lazy) == set(model.state_dict())
    assert "proj_out.weight" in lazy and "nope" not in lazy
    torch.testing.assert_close(lazy["proj_out.weight"], model.proj_out.weight.double())


@pytest.mark.parametrize("from_folder", [False, True])
def test_converted_transformer_equals_diffusers(saved, from_folder):
    model, root = saved
    ours = transformer_from_diffusers(root if from_folder else model)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in ours.parameters())
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 3, 8, 12, generator=g)
    text = torch.randn(1, 7, 20, generator=g)
    steps = torch.tensor([500.0])
    with torch.no_grad():
        ref = model(latents.transpose(1, 2), text, steps, return_dict=False)[0].transpose(1, 2)
        out = ours(latents, text, steps)
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-5


def test_dtype_is_honoured(saved):
    _, root = saved
    ours = transformer_from_diffusers(root, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}


def test_bad_folders_say_what_is_wrong(saved, tmp_path):
    model, _ = saved
    with pytest.raises(FileNotFoundError, match="transformer/config.json"):
        transformer_from_diffusers(tmp_path)
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(model.config)))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "proj_out.bias"}
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(KeyError, match=r"missing \['proj_out.bias'\]"):
        transformer_from_diffusers(tmp_path)


@pytest.mark.parametrize("make", [NoiseSchedule.cogvideox_2b, NoiseSchedule.cogvideox_5b])
def test_schedule_round_trips_through_a_diffusers_scheduler_config(tmp_path, make):
    from diffusers import CogVideoXDDIMScheduler

    schedule = make()
    CogVideoXDDIMScheduler(**schedule_to_diffusers_config(schedule)).save_pretrained(
        tmp_path / "scheduler"
    )
    assert schedule_from_diffusers(tmp_path) == schedule
    assert schedule.to_diffusers_config() == schedule_to_diffusers_config(schedule)
