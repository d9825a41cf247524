"""Released CogVideoX weights in the diffusers layout: every key map and config translation to and
from diffusers, and the loaders that read a local folder.

A CogVideoX checkpoint folder holds one sub-folder per component (``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), each with a ``config.json`` and safetensors
weights, sharded with an ``*.index.json`` when large. Nothing here downloads: the folder must
already be on disk.

Tensors are read lazily, one at a time, straight into a model built on the ``meta`` device, so
loading the 5B transformer needs its weights' memory once, not twice.

Sections: the transformer's config and keys, the VAE's config and keys, the noise schedule, then
reading folders and the three loaders (:func:`transformer_from_diffusers`,
:func:`vae_from_diffusers`, :func:`schedule_from_diffusers`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from cogvx_mini.diffusion import NoiseSchedule
from cogvx_mini.shapes import latent_frames, pixel_frames
from cogvx_mini.transformer import CogVideoXTransformer, TransformerConfig
from cogvx_mini.vae import VAE3D, VAEConfig

# -- the transformer: config --------------------------------------------------------------------

# The defaults of diffusers' ``CogVideoXTransformer3DModel`` (a config.json lists only changes).
TRANSFORMER_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 30,
    "attention_head_dim": 64,
    "in_channels": 16,
    "out_channels": 16,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embed_dim": 512,
    "ofs_embed_dim": None,
    "text_embed_dim": 4096,
    "num_layers": 30,
    "dropout": 0.0,
    "attention_bias": True,
    "sample_width": 90,
    "sample_height": 60,
    "sample_frames": 49,
    "patch_size": 2,
    "patch_size_t": None,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 226,
    "activation_fn": "gelu-approximate",
    "timestep_activation_fn": "silu",
    "norm_elementwise_affine": True,
    "norm_eps": 1e-5,
    "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0,
    "use_rotary_positional_embeddings": False,
    "use_learned_positional_embeddings": False,
    "patch_bias": True,
}


def _check_transformer_features(c: dict[str, Any]) -> None:
    """Raise ``ValueError`` for diffusers features this implementation does not have."""
    unsupported = {
        "dropout": bool(c["dropout"]),
        "activation_fn": c["activation_fn"] != "gelu-approximate",
        "timestep_activation_fn": c["timestep_activation_fn"] != "silu",
    }
    bad = [f"{k}={c[k]!r}" for k, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ValueError(f"diffusers config uses features cogvx_mini lacks: {', '.join(bad)}")
    if c["use_learned_positional_embeddings"] and (
        not c["use_rotary_positional_embeddings"] or c["patch_size_t"] is not None
    ):
        raise ValueError("learned positions exist only with RoPE and no temporal patch (5B-I2V)")


# TransformerConfig field -> the diffusers config key holding the same value.
_SAME_FIELDS = {
    "num_layers": "num_layers",
    "num_heads": "num_attention_heads",
    "head_dim": "attention_head_dim",
    "in_channels": "in_channels",
    "time_embed_dim": "time_embed_dim",
    "text_dim": "text_embed_dim",
    "max_text_len": "max_text_seq_length",
    "patch_size": "patch_size",
    "spatial_interpolation_scale": "spatial_interpolation_scale",
    "temporal_interpolation_scale": "temporal_interpolation_scale",
    "learned_positions": "use_learned_positional_embeddings",
    "ofs_embed_dim": "ofs_embed_dim",
    "attention_bias": "attention_bias",
    "norm_eps": "norm_eps",
    "norm_affine": "norm_elementwise_affine",
    "flip_sin_to_cos": "flip_sin_to_cos",
    "freq_shift": "freq_shift",
}


def transformer_config_from_diffusers(
    config: dict[str, Any], **overrides: Any
) -> TransformerConfig:
    """The :class:`TransformerConfig` of a diffusers ``CogVideoXTransformer3DModel`` (its
    ``config.json`` as a dict); ``overrides`` replace fields of the result.

    Raises ``ValueError`` for features this implementation does not have (dropout, other
    activations).
    """
    c = {**TRANSFORMER_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    _check_transformer_features(c)
    p, p_t = c["patch_size"], c["patch_size_t"]
    return TransformerConfig(
        **{ours: c[theirs] for ours, theirs in _SAME_FIELDS.items()},
        out_channels=c["out_channels"] or c["in_channels"],
        temporal_patch_size=p_t or 1,
        # diffusers' linear patch embedding (temporal patches) always has a bias
        patch_bias=bool(c["patch_bias"]) or p_t is not None,
        positions="rope" if c["use_rotary_positional_embeddings"] else "sincos",
        # 1.0 squeezes any grid into the training grid; 1.5 slices a larger table.
        rope_grid="interpolate" if p_t is None else "extrapolate",
        rope_base_grid=(c["sample_height"] // p, c["sample_width"] // p),
        base_latent_frames=latent_frames(c["sample_frames"], c["temporal_compression_ratio"]),
        **overrides,
    )


def _check_released_architecture(config: TransformerConfig) -> None:
    """Raise ``ValueError`` unless diffusers has a model of this architecture."""
    if config.adaln != "expert" or config.attention != "full" or config.positions == "none":
        raise ValueError("diffusers has only adaln='expert', attention='full' with positions")
    if not config.qk_norm or config.ff_mult != 4:
        raise ValueError("diffusers' CogVideoX blocks always use QK-norm and a 4x feed-forward")
    if config.temporal_patch_size > 1 and not config.patch_bias:
        raise ValueError("diffusers' temporal patch embedding always has a bias")
    expected_grid = "interpolate" if config.temporal_patch_size == 1 else "extrapolate"
    if config.positions == "rope" and config.rope_grid != expected_grid:
        raise ValueError(f"diffusers' pipelines do not use rope_grid={config.rope_grid!r} here")


def transformer_config_to_diffusers(config: TransformerConfig) -> dict[str, Any]:
    """Keyword arguments of a diffusers ``CogVideoXTransformer3DModel`` with ``config``'s shape.

    Only the released architecture has one (expert AdaLN, full attention, sincos or RoPE).
    """
    _check_released_architecture(config)
    p = config.patch_size
    return dict(
        **{theirs: getattr(config, ours) for ours, theirs in _SAME_FIELDS.items()},
        out_channels=config.out_channels,
        patch_size_t=None if config.temporal_patch_size == 1 else config.temporal_patch_size,
        patch_bias=config.patch_bias,
        use_rotary_positional_embeddings=config.positions == "rope",
        sample_height=config.rope_base_grid[0] * p,
        sample_width=config.rope_base_grid[1] * p,
        sample_frames=pixel_frames(
            config.base_latent_frames, TRANSFORMER_DEFAULTS["temporal_compression_ratio"]
        ),
    )


# -- the transformer: state dict ----------------------------------------------------------------


def _transformer_key_map(config: TransformerConfig) -> dict[str, list[str]]:
    """cogvx_mini key -> the diffusers keys it is made of (concatenated along dim 0)."""
    names: dict[str, list[str]] = {}

    def both(ours: str, theirs: str, bias: bool = True) -> None:
        names[f"{ours}.weight"] = [f"{theirs}.weight"]
        if bias:
            names[f"{ours}.bias"] = [f"{theirs}.bias"]

    both("patch_embed", "patch_embed.proj", bias=config.patch_bias)
    if config.learned_positions:
        names["pos_embedding"] = ["patch_embed.pos_embedding"]
    both("text_proj", "patch_embed.text_proj")
    both("time_embed.linear_1", "time_embedding.linear_1")
    both("time_embed.linear_2", "time_embedding.linear_2")
    if config.ofs_embed_dim:
        both("ofs_embed.linear_1", "ofs_embedding.linear_1")
        both("ofs_embed.linear_2", "ofs_embedding.linear_2")
    affine = config.norm_affine
    for i in range(config.num_layers):
        ours, theirs = f"blocks.{i}", f"transformer_blocks.{i}"
        for norm in ("norm1", "norm2"):
            both(f"{ours}.{norm}.linear", f"{theirs}.{norm}.linear")
            if affine:
                both(f"{ours}.{norm}.norm", f"{theirs}.{norm}.norm")
        for part in ("weight", "bias") if config.attention_bias else ("weight",):
            names[f"{ours}.attn.qkv.{part}"] = [f"{theirs}.attn1.to_{x}.{part}" for x in "qkv"]
        if config.qk_norm:
            both(f"{ours}.attn.norm_q", f"{theirs}.attn1.norm_q")
            both(f"{ours}.attn.norm_k", f"{theirs}.attn1.norm_k")
        both(f"{ours}.attn.out", f"{theirs}.attn1.to_out.0")
        both(f"{ours}.ff.fc1", f"{theirs}.ff.net.0.proj")
        both(f"{ours}.ff.fc2", f"{theirs}.ff.net.2")
    if affine:
        both("norm_final", "norm_final")
        both("norm_out.norm", "norm_out.norm")
    both("norm_out.linear", "norm_out.linear")
    both("proj_out", "proj_out")
    return names


def transformer_state_dict_from_diffusers(
    state_dict: Mapping[str, torch.Tensor], config: TransformerConfig
) -> dict[str, torch.Tensor]:
    """A diffusers ``CogVideoXTransformer3DModel`` state dict -> a ``CogVideoXTransformer`` one.

    ``to_q/to_k/to_v`` are stacked into the fused ``qkv``; the patch convolution's kernel
    ``[D, C, p, p]`` becomes the patch embedding's ``[D, C·p·p]`` (same feature order). Tensors
    that need no change are passed through without a copy. Raises ``KeyError`` listing every
    missing and unexpected key.
    """
    if config.adaln != "expert" or config.attention != "full":
        raise ValueError(
            "only the released architecture (adaln='expert', attention='full') converts"
        )
    key_map = _transformer_key_map(config)
    used = {k for keys in key_map.values() for k in keys}
    missing = sorted(k for k in used if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in used)
    if missing or unexpected:
        raise KeyError(f"diffusers state dict does not match the config: missing {missing}, "
                       f"unexpected {unexpected}")  # fmt: skip
    out = {}
    for ours, theirs in key_map.items():
        tensors = [state_dict[k] for k in theirs]
        tensor = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        if ours == "patch_embed.weight":
            tensor = tensor.reshape(tensor.shape[0], -1)
        out[ours] = tensor
    return out


# -- the VAE ------------------------------------------------------------------------------------


def vae_config_from_diffusers(config: dict[str, Any]) -> VAEConfig:
    """The :class:`VAEConfig` of a diffusers ``AutoencoderKLCogVideoX`` (its ``vae/config.json``
    as a dict); diffusers' default tiles are a quarter of the sample size."""
    h, w = config.get("sample_height", 480), config.get("sample_width", 720)
    return VAEConfig(
        in_channels=config.get("in_channels", 3),
        latent_channels=config.get("latent_channels", 16),
        block_out_channels=tuple(config.get("block_out_channels", (128, 256, 256, 512))),
        layers_per_block=config.get("layers_per_block", 3),
        norm_groups=config.get("norm_num_groups", 32),
        norm_eps=config.get("norm_eps", 1e-6),
        temporal_compression=int(config.get("temporal_compression_ratio", 4)),
        scaling_factor=config.get("scaling_factor", 1.15258426),
        tile_sample_size=(h // 2, w // 2),
        invert_scale_latents=bool(config.get("invert_scale_latents", False)),
    )


# diffusers key fragment -> ours, applied in order (the first two before the generic renames).
_VAE_KEY_RULES = [
    (r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample."),
    (r"\.up_blocks\.(\d+)\.upsamplers\.0\.", r".up.\1.upsample."),
    (r"\.down_blocks\.", ".down."),
    (r"\.up_blocks\.", ".up."),
    (r"\.mid_block\.resnets\.", ".mid."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.norm_layer\.", ".norm."),
    (r"\.conv_y\.", ".scale."),
    (r"\.conv_b\.", ".shift."),
]


def vae_state_dict_from_diffusers(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename the keys of a diffusers ``AutoencoderKLCogVideoX`` state dict to :class:`VAE3D`'s.

    Raises ``ValueError`` for the optional quant convs, which the released models do not use.
    """
    out = {}
    for key, value in state_dict.items():
        if "quant_conv" in key:
            raise ValueError(f"quant convs are not supported (got key {key})")
        new = key
        for pattern, repl in _VAE_KEY_RULES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


# -- the noise schedule -------------------------------------------------------------------------

# The settings of diffusers' CogVideoXDDIMScheduler that cogvx_mini's sampler implements.
SCHEDULER_SETTINGS: dict[str, Any] = {
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": True,
}


def schedule_to_diffusers_config(schedule: NoiseSchedule) -> dict[str, Any]:
    """Keyword arguments of a diffusers ``CogVideoXDDIMScheduler`` with ``schedule`` (the
    inverse of :func:`schedule_from_diffusers_config`)."""
    return dict(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        rescale_betas_zero_snr=schedule.zero_terminal_snr,
        snr_shift_scale=schedule.snr_shift_scale,
        **SCHEDULER_SETTINGS,
    )


def schedule_from_diffusers_config(config: dict[str, Any]) -> NoiseSchedule:
    """The :class:`NoiseSchedule` of a ``CogVideoXDDIMScheduler`` config (a dict).

    Raises ``ValueError`` for settings this sampler does not implement.
    """
    wrong = {k: config[k] for k, v in SCHEDULER_SETTINGS.items() if k in config and config[k] != v}
    if wrong:
        raise ValueError(
            f"scheduler settings not supported: {wrong} (expected {SCHEDULER_SETTINGS})"
        )
    return NoiseSchedule(
        num_train_timesteps=config.get("num_train_timesteps", 1000),
        beta_start=config.get("beta_start", 0.00085),
        beta_end=config.get("beta_end", 0.012),
        snr_shift_scale=config.get("snr_shift_scale", 3.0),
        zero_terminal_snr=config.get("rescale_betas_zero_snr", False),
    )


# -- reading folders ----------------------------------------------------------------------------

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

    ``overrides`` replace fields of the converted config. The 2B (sinusoidal positions), 5B
    (3D-RoPE) and 5B-I2V (learned positions) models convert.
    """
    config_dict, state = _source(model_or_folder, "transformer", dtype)
    config = transformer_config_from_diffusers(config_dict, **overrides)
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
        model = VAE3D(vae_config_from_diffusers(config_dict))
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
    return schedule_from_diffusers_config(json.loads(path.read_text()))
