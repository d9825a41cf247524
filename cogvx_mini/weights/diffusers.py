"""Released CogVideoX weights, read from a local folder in the diffusers layout.

A CogVideoX checkpoint folder holds one sub-folder per component (``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), each with a ``config.json`` and safetensors
weights, sharded with an ``*.index.json`` when large. Nothing here downloads: the folder must
already be on disk.

Tensors are read lazily, one at a time, straight into a model built on the ``meta`` device, so
loading the 5B transformer needs its weights' memory once, not twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from cogvx_mini.diffusion import NoiseSchedule
from cogvx_mini.transformer import (
    CogVideoXTransformer,
    TransformerConfig,
    transformer_state_dict_from_diffusers,
)
from cogvx_mini.vae import VAE3D, VAEConfig, vae_state_dict_from_diffusers

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


class LazySafetensors(Mapping[str, torch.Tensor]):
    """A read-only ``{name: tensor}`` view of one or many safetensors files.

    Each ``[]`` reads one tensor from its shard (and casts it to ``dtype`` if given); nothing is
    kept. ``folder`` holds either one weights file or an index JSON naming the shards.
    """

    def __init__(self, folder: str | Path, dtype: torch.dtype | None = None) -> None:
        folder = Path(folder)
        self.dtype = dtype
        self._file_of: dict[str, Path] = {}
        indexes = sorted(folder.glob("*.safetensors.index.json"))
        if indexes:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
            self._file_of = {name: folder / shard for name, shard in weight_map.items()}
        else:
            files = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
            files = files or sorted(folder.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(
                    f"no safetensors weights in {folder} (expected one of {WEIGHT_FILES} "
                    "or an *.safetensors.index.json with its shards)"
                )
            for file in files:
                with safe_open(file, framework="pt") as f:
                    self._file_of.update({name: file for name in f.keys()})
        self._handles: dict[Path, object] = {}

    def _handle(self, file: Path):
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="pt")
        return self._handles[file]

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._handle(self._file_of[name]).get_tensor(name)
        return tensor if self.dtype is None else tensor.to(self.dtype)

    def __contains__(self, name: object) -> bool:  # without reading the tensor
        return name in self._file_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)


def component_folder(folder: str | Path, component: str) -> Path:
    """The folder of one component: ``folder/component`` or ``folder`` itself if it is one."""
    folder = Path(folder)
    for candidate in (folder / component, folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"no {component}/config.json under {folder}: expected a CogVideoX folder in the diffusers "
        f"layout (transformer/, vae/, text_encoder/, tokenizer/, scheduler/) or the {component} "
        "sub-folder itself"
    )


def read_config(folder: Path) -> dict:
    """The component's config.json as a dict."""
    return json.loads((folder / "config.json").read_text())


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state_dict`` into ``module`` (built on ``meta`` or not), failing with every bad key.

    Parameters and buffers are assigned, not copied, so a model built on the ``meta`` device takes
    the loaded tensors as its own storage.
    """
    expected = set(module.state_dict())
    given = set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise KeyError(
            f"{what}: the converted weights do not match the cogvx_mini model.\n"
            f"  missing ({len(missing)}): {missing[:20]}{' …' if len(missing) > 20 else ''}\n"
            f"  unexpected ({len(unexpected)}): {unexpected[:20]}"
            f"{' …' if len(unexpected) > 20 else ''}"
        )
    module.load_state_dict(dict(state_dict), strict=True, assign=True)


def _source(model_or_folder, component: str, dtype: torch.dtype | None):
    """(config dict, state-dict mapping) of a diffusers model object or a local folder."""
    if isinstance(model_or_folder, torch.nn.Module):
        return dict(model_or_folder.config), model_or_folder.state_dict()
    folder = component_folder(model_or_folder, component)
    return read_config(folder), LazySafetensors(folder, dtype)


def _materialise(
    model: torch.nn.Module,
    converted: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: str | torch.device,
    what: str,
) -> torch.nn.Module:
    load_into(model, {k: v.to(device=device, dtype=dtype) for k, v in converted.items()}, what)
    return model.eval()


def transformer_from_diffusers(
    model_or_folder: torch.nn.Module | str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **overrides,
) -> CogVideoXTransformer:
    """A diffusers ``CogVideoXTransformer3DModel`` (object, or a folder in the diffusers layout)
    as a :class:`~cogvx_mini.transformer.CogVideoXTransformer` in ``dtype`` on ``device``.

    ``overrides`` set run-time switches of the config (``checkpointing=...``). The 2B (sinusoidal
    positions) and 5B (3D-RoPE) models convert; learned positions (I2V) raise ``ValueError``.
    """
    config_dict, state = _source(model_or_folder, "transformer", dtype)
    config = TransformerConfig.from_diffusers_config(config_dict, **overrides)
    with torch.device("meta"):
        model = CogVideoXTransformer(config)
    converted = transformer_state_dict_from_diffusers(state, config)
    return _materialise(model, converted, dtype, device, "transformer")


def vae_from_diffusers(
    model_or_folder: torch.nn.Module | str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> VAE3D:
    """A diffusers ``AutoencoderKLCogVideoX`` (object, or a folder in the diffusers layout) as a
    :class:`~cogvx_mini.vae.VAE3D` in ``dtype`` on ``device``; ``config.scaling_factor`` is the
    model's own (2B 1.15258426, 5B 0.7)."""
    config_dict, state = _source(model_or_folder, "vae", dtype)
    with torch.device("meta"):
        model = VAE3D(VAEConfig.from_diffusers(config_dict))
    converted = vae_state_dict_from_diffusers(state)
    return _materialise(model, converted, dtype, device, "vae")


def schedule_from_diffusers(folder: str | Path) -> NoiseSchedule:
    """The noise schedule of a ``scheduler/scheduler_config.json`` (CogVideoXDDIMScheduler).

    Raises ``ValueError`` for settings this sampler does not implement.
    """
    folder = Path(folder)
    candidates = [folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no scheduler/scheduler_config.json under {folder}")
    c = json.loads(path.read_text())
    expected = {
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
        "clip_sample": False,
        "set_alpha_to_one": True,
    }
    wrong = {k: c[k] for k, v in expected.items() if k in c and c[k] != v}
    if wrong:
        raise ValueError(f"scheduler settings not supported: {wrong} (expected {expected})")
    return NoiseSchedule(
        num_train_timesteps=c.get("num_train_timesteps", 1000),
        beta_start=c.get("beta_start", 0.00085),
        beta_end=c.get("beta_end", 0.012),
        snr_shift_scale=c.get("snr_shift_scale", 3.0),
        zero_terminal_snr=c.get("rescale_betas_zero_snr", False),
    )
