"""Typed training configs for scale/, read from YAML.

Every section is a dataclass; unknown keys and values of the wrong type fail with a message that
names the key, what was expected and what came. ``check_world`` checks a config against the
world size and the model before any GPU memory is touched.

    config = load_config("cogvideox_2b", ["train.steps=100", "parallel.cp=2"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESETS = ("mini", "cogvideox_2b", "cogvideox_5b")
CONFIGS = Path(__file__).resolve().parent / "configs"  # tiny.yaml, cogvideox_2b.yaml, ...


@dataclass
class ModelSection:
    """Which ``TransformerConfig`` preset to build, and fields to override on it."""

    preset: str = "mini"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Shapes of the training videos (pixel frames, height, width) and the text length.

    ``buckets`` lists the shapes one batch may have (a batch always has one shape). With the toy
    world (``--data toy``), ``toy_samples`` videos are drawn per bucket.
    """

    buckets: list[list[int]] = field(default_factory=lambda: [[49, 480, 720]])
    text_length: int = 226
    toy_samples: int = 64


@dataclass
class ParallelSection:
    """How the model is spread over the GPUs.

    ``cp``: context-parallel degree (video tokens split over ``cp`` ranks; data parallel over
    ``world / cp``). ``activation_checkpointing``: ``none``, ``full`` (recompute the whole
    block) or ``selective`` (keep the attention output), on every ``checkpoint_every``-th block.
    ``mixed_precision``: ``bf16`` (bf16 compute, fp32 master weights and gradient reduction) or
    ``fp32``; CPU runs always use fp32. ``cpu_offload``: parameters, gradients and optimiser
    state on the CPU (FSDP2's CPUOffloadPolicy; the optimiser step runs on the CPU).
    """

    cp: int = 1
    activation_checkpointing: str = "full"
    checkpoint_every: int = 1
    compile: bool = False
    mixed_precision: str = "bf16"
    cpu_offload: bool = False


@dataclass
class OptimSection:
    """AdamW with linear warm-up then ``cosine``, ``linear`` or ``constant`` decay."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    decay: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.9999


@dataclass
class TrainSection:
    """Steps and batch sizes. ``global_batch`` = data-parallel ranks x ``micro_batch`` x
    accumulation steps. ``init_from``: weights to fine-tune from, a cogvx_mini transformer state
    dict (safetensors) or a released model's diffusers folder. ``peak_tflops``: the
    accelerator's dense peak, for MFU (0: not reported)."""

    steps: int = 1000
    global_batch: int = 8
    micro_batch: int = 1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    init_from: str | None = None
    peak_tflops: float = 0.0


@dataclass
class ScaleConfig:
    """A whole training config: model, data, parallel, optim, train."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def transformer_config(self):
        """The ``cogvx_mini.transformer.TransformerConfig`` this config trains."""
        return build_transformer_config(self.model.preset, self.model.overrides)


def build_transformer_config(preset: str, overrides: dict[str, Any] | None = None):
    """``TransformerConfig.<preset>()`` with ``overrides`` replaced (names checked)."""
    from cogvx_mini.transformer import TransformerConfig

    if preset not in PRESETS:
        raise ValueError(f"model.preset: expected one of {PRESETS}, got {preset!r}")
    config = getattr(TransformerConfig, preset)()
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"model.overrides: unknown TransformerConfig fields {unknown}; known: {sorted(known)}"
        )
    return dataclasses.replace(config, **overrides)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` converted to ``hint`` where lossless (int -> float), else raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, where)
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise TypeError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{where or 'config'}: unknown keys {unknown}; expected some of {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)


def _apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML) to the raw config mapping."""
    if "=" not in override:
        raise ValueError(f"expected an override of the form section.key=value, got {override!r}")
    path, raw = override.split("=", 1)
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = yaml.safe_load(raw)


def config_from_dict(data: dict[str, Any]) -> ScaleConfig:
    """Build and validate a :class:`ScaleConfig` from a mapping (as read from YAML)."""
    config = _build(ScaleConfig, data, "")
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> ScaleConfig:
    """Read a YAML config and apply ``section.key=value`` overrides."""
    path = Path(path)
    if not path.is_file() and (CONFIGS / f"{path}.yaml").is_file():
        path = CONFIGS / f"{path}.yaml"  # a shipped config by name: tiny, cogvideox_2b, ...
    if not path.is_file():
        shipped = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise FileNotFoundError(f"no config at {path} (shipped configs by name: {shipped})")
    data = yaml.safe_load(path.read_text()) or {}
    for override in overrides or []:
        _apply_override(data, override)
    return config_from_dict(data)


def validate(config: ScaleConfig) -> None:
    """Checks that need no world size or model: choices, positive sizes, bucket shapes."""
    from cogvx_mini.shapes import check_frame_count

    p, o, t, d = config.parallel, config.optim, config.train, config.data
    choices = {
        "model.preset": (config.model.preset, PRESETS),
        "parallel.activation_checkpointing": (
            p.activation_checkpointing,
            ("none", "full", "selective"),
        ),
        "parallel.mixed_precision": (p.mixed_precision, ("bf16", "fp32")),
        "optim.decay": (o.decay, ("cosine", "linear", "constant")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{key}: expected one of {allowed}, got {value!r}")
    positive = {
        "parallel.cp": p.cp,
        "parallel.checkpoint_every": p.checkpoint_every,
        "train.steps": t.steps,
        "train.global_batch": t.global_batch,
        "train.micro_batch": t.micro_batch,
        "train.log_every": t.log_every,
        "train.checkpoint_every": t.checkpoint_every,
        "data.text_length": d.text_length,
    }
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key}: expected a positive integer, got {value}")
    if not d.buckets:
        raise ValueError("data.buckets: expected at least one [frames, height, width]")
    for i, bucket in enumerate(d.buckets):
        if len(bucket) != 3:
            raise ValueError(f"data.buckets[{i}]: expected [frames, height, width], got {bucket}")
        check_frame_count(bucket[0])
        if bucket[1] % 16 or bucket[2] % 16:
            raise ValueError(
                f"data.buckets[{i}]: expected height and width divisible by 16 (VAE 8 x patch 2),"
                f" got {bucket[1]} x {bucket[2]}"
            )


def video_tokens(bucket: list[int] | tuple[int, int, int], patch_size: int = 2) -> int:
    """Video tokens of a pixel-space bucket ``(frames, height, width)`` (49x480x720 -> 17,550)."""
    frames, height, width = bucket
    t = (frames - 1) // 4 + 1
    return t * (height // (8 * patch_size)) * (width // (8 * patch_size))


def check_world(config: ScaleConfig, world_size: int, num_heads: int, patch_size: int = 2) -> int:
    """Check that ``config`` fits ``world_size`` ranks and a model with ``num_heads`` heads.

    Returns the data-parallel degree ``world_size / cp``. Raises ``ValueError`` naming the
    numbers when the CP degree does not divide the world size or the heads, when a bucket has
    fewer video tokens than CP ranks (uneven shares are fine), or when the global batch does not
    split evenly.
    """
    cp, t = config.parallel.cp, config.train
    if world_size % cp:
        divisors = [c for c in range(1, world_size + 1) if world_size % c == 0]
        raise ValueError(
            f"parallel.cp={cp} must divide the world size, got {world_size} ranks "
            f"(a CP degree among {divisors})"
        )
    if num_heads % cp:
        raise ValueError(
            f"parallel.cp={cp} must divide the model's {num_heads} attention heads "
            "(Ulysses gives each CP rank whole heads)"
        )
    for bucket in config.data.buckets:
        n = video_tokens(bucket, patch_size)
        if n < cp:
            raise ValueError(
                f"sequence of {n} video tokens (bucket {bucket}) is shorter than the CP degree {cp}"
            )
    dp = world_size // cp
    if t.global_batch % (dp * t.micro_batch):
        raise ValueError(
            f"train.global_batch={t.global_batch} must be a multiple of data-parallel ranks "
            f"({dp}) x train.micro_batch ({t.micro_batch})"
        )
    return dp
