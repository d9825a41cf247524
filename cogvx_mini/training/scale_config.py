"""Typed training configs for scale/, read from YAML.

Every section is a dataclass; unknown keys and values of the wrong type fail with a message that
names the key, what was expected and what came. ``check_world`` checks a config against the
world size and the model before any GPU memory is touched.

    config = load_config("cogvideox_2b", ["train.steps=100", "parallel.cp=2"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cogvx_mini.training.overrides import apply_override, build_dataclass
from cogvx_mini.training.schedule import LRSchedule

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
class LoraSection:
    """LoRA fine-tuning (:mod:`cogvx_mini.training.lora`, needs ``peft``). ``rank`` 0 trains
    every weight; a rank r > 0 freezes the model (``train.init_from``) and trains
    ``(α/r)·B·A`` on ``targets`` (``qkv``, ``out``, ``fc1``, ``fc2``) of every block, with
    ``alpha`` α (null: α = r) and ``dropout`` on the LoRA input; the run exports the LoRA as
    ``OUT/lora/pytorch_lora_weights.safetensors`` in diffusers' format."""

    rank: int = 0
    alpha: float | None = None
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["qkv", "out", "fc1", "fc2"])

    def settings(self):
        """The ``LoraSettings`` of this section (checked), ``None`` when ``rank`` is 0."""
        if self.rank == 0:
            return None
        from cogvx_mini.training.lora import LoraSettings

        return LoraSettings(self.rank, self.alpha, self.dropout, tuple(self.targets))


@dataclass
class ScaleConfig:
    """A whole training config: model, data, parallel, optim, train, lora."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    lora: LoraSection = field(default_factory=LoraSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lr_schedule(self) -> LRSchedule:
        """Warm-up over ``optim.warmup_steps``, then ``optim.decay`` to ``optim.min_lr_ratio``."""
        o = self.optim
        return LRSchedule(o.lr, o.warmup_steps, self.train.steps, o.decay, o.min_lr_ratio)

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


def config_from_dict(data: dict[str, Any]) -> ScaleConfig:
    """Build and validate a :class:`ScaleConfig` from a mapping (as read from YAML)."""
    config = build_dataclass(ScaleConfig, data, "")
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
        apply_override(data, override)
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
        "data.toy_samples": d.toy_samples,
        "train.keep_checkpoints": t.keep_checkpoints,
    }
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key}: expected a positive integer, got {value}")
    _validate_optim(o)
    if config.lora.rank < 0:
        raise ValueError(
            f"lora.rank: expected 0 (off) or a positive integer, got {config.lora.rank}"
        )
    config.lora.settings()  # checks alpha, dropout and targets when LoRA is on
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


def _validate_optim(o: OptimSection) -> None:
    unit = {
        "optim.ema_decay": (o.ema_decay, "[0, 1)", 0 <= o.ema_decay < 1),
        "optim.min_lr_ratio": (o.min_lr_ratio, "[0, 1]", 0 <= o.min_lr_ratio <= 1),
        "optim.lr": (o.lr, "(0, inf)", o.lr > 0),
        "optim.eps": (o.eps, "(0, inf)", o.eps > 0),
        "optim.grad_clip": (o.grad_clip, "(0, inf)", o.grad_clip > 0),
        "optim.warmup_steps": (o.warmup_steps, "[0, inf)", o.warmup_steps >= 0),
    }
    for key, (value, interval, ok) in unit.items():
        if not ok:
            raise ValueError(f"{key}: expected a value in {interval}, got {value}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ValueError(f"optim.betas: expected two values in [0, 1), got {o.betas}")


def video_tokens(bucket: list[int] | tuple[int, int, int], patch_size: int = 2) -> int:
    """Video tokens of a pixel-space bucket ``(frames, height, width)`` (49x480x720 -> 17,550)."""
    from cogvx_mini.vae import VAEConfig

    _, _, t, h, w = VAEConfig.cogvideox().latent_shape((1, 3, *bucket))
    return t * (h // patch_size) * (w // patch_size)


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
