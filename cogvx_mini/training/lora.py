"""LoRA fine-tuning of the transformer through ``peft``, in the files diffusers' CogVideoX reads.

LoRA freezes a linear layer's weight ``W [D_out, D_in]`` and trains a low-rank change of it:

    W' = W + (α/r) · B · A,    A [r, D_in],  B [D_out, r],  B = 0 at the start

(α is ``alpha``, written ``a`` in book/notation.md). A layer costs ``r · (D_in + D_out)``
trainable numbers instead of ``D_in · D_out``, and the fine-tune starts exactly at the model it
fine-tunes. :func:`add_lora` puts peft's LoRA layers on the blocks' projections (attention
``qkv`` and ``out``, feed-forward ``fc1`` and ``fc2``) and freezes everything else; the modules
keep their names, their parameters become ``<module>.base_layer.weight``,
``<module>.lora_A.default.weight`` and ``<module>.lora_B.default.weight``.

**Files.** diffusers' ``CogVideoXPipeline.load_lora_weights(folder)`` (and finetrainers, which
writes the same) reads ``folder/pytorch_lora_weights.safetensors`` holding
``transformer.<diffusers module>.lora_A.weight [r, D_in]`` and ``....lora_B.weight [D_out, r]``.
It passes no alphas: a file's scale is the ``lora_alpha`` of the peft config stored in its
``lora_adapter_metadata`` header when there is one, else 1 (alpha = rank).

**The fused projection.** cogvx_mini computes q, k, v with one ``qkv`` linear ``[3·inner, D]``;
diffusers has ``to_q``, ``to_k``, ``to_v`` of ``[inner, D]`` each. Both directions are exact:

- ours -> diffusers: ``B·A`` of ``qkv`` is ``[B_q; B_k; B_v]·A``, so ``to_q`` gets ``(A, B_q)``,
  ``to_k`` ``(A, B_k)``, ``to_v`` ``(A, B_v)`` — the rows of ``B`` in thirds, ``A`` shared. The
  scale ``α/r`` is multiplied into ``B`` and no alpha is written: every reader gets the delta.
- diffusers -> ours: ``to_q/k/v`` with ``(A_i [r_i, D], B_i [inner, r_i], scale s_i)`` become one
  LoRA of rank ``Σ r_i`` on ``qkv``: ``A = [A_q; A_k; A_v]`` and ``B`` block-diagonal, so
  ``B·A = [B_q·A_q; B_k·A_k; B_v·A_v]``. peft's ``rank_pattern``/``alpha_pattern`` give that
  module its rank and ``alpha = s · Σ r_i`` (scaling ``s``); unequal ``s_i`` are folded into the
  ``B_i``. A missing part (a LoRA on ``to_q`` and ``to_v`` only) is a zero block.

Names map through :func:`cogvx_mini.weights.diffusers._transformer_key_map`, the one table of the
full weights, so the feed-forward (``ff.fc1`` <-> ``ff.net.0.proj``, ``ff.fc2`` <-> ``ff.net.2``)
and any other linear a file adapts follow it. Files are read with safetensors only, never
unpickled. ``peft`` comes with the ``interop`` extra and is imported only when LoRA is used.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from cogvx_mini.weights.diffusers import _transformer_key_map

ADAPTER = "default"  # peft's name for the one adapter cogvx_mini uses
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers writes and looks for
PREFIX = "transformer."  # diffusers' key prefix for the transformer's LoRA layers
# A target of LoraSettings -> the module inside each block it adapts.
TARGETS = {"qkv": "attn.qkv", "out": "attn.out", "fc1": "ff.fc1", "fc2": "ff.fc2"}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the transformer blocks: ``rank`` r, ``alpha`` α (``None``: α = r, scale 1,
    diffusers' convention), ``dropout`` on the LoRA branch's input, and ``targets`` among
    :data:`TARGETS` (default: the attention and feed-forward projections of every block)."""

    rank: int = 64
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = ("qkv", "out", "fc1", "fc2")

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank: expected a positive integer, got {self.rank!r}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"lora.alpha: expected a positive number or None, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout: expected a value in [0, 1), got {self.dropout!r}")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets:
            raise ValueError(f"lora.targets: expected some of {list(TARGETS)}, got {self.targets}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scale(self) -> float:
        """``α / r``, the factor of ``B·A``."""
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


# -- the layers ---------------------------------------------------------------------------------


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: peft LoRA layer}`` of ``model`` (empty without LoRA)."""
    if "peft" not in sys.modules:  # no LoRA layer exists before peft is imported (~4 s to import)
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _inject(model: nn.Module, config) -> nn.Module:
    """peft's LoRA layers into ``model`` in place; only the LoRA factors stay trainable."""
    from peft import inject_adapter_in_model

    if lora_layers(model):
        raise ValueError("the model already has LoRA layers: unload_lora(model) first")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():  # peft freezes too; say it where it matters
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)
    for layer in lora_layers(model).values():  # new modules train; an eval model keeps no dropout
        layer.train(model.training)
    return model


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Freeze ``model`` (a ``CogVideoXTransformer``) and add fresh LoRA layers (``A``
    Kaiming-uniform, ``B = 0``, so the output is unchanged) on ``settings.targets`` of every
    block. Works on a model on the ``meta`` device too. Returns ``model``, changed in place."""
    from peft import LoraConfig

    modules = "|".join(TARGETS[t].replace(".", r"\.") for t in settings.targets)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha if settings.alpha is not None else settings.rank,
        lora_dropout=settings.dropout,
        target_modules=rf"blocks\.\d+\.(?:{modules})",  # a string: peft full-matches the names
    )
    return _inject(model, config)


@torch.no_grad()
def reset_lora(model: nn.Module) -> None:
    """peft's initialisation of every LoRA factor again (``A`` Kaiming-uniform, ``B = 0``): for
    a model built on ``meta`` and materialised, whose initialisation drew every linear anew."""
    for layer in lora_layers(model).values():
        layer.reset_lora_parameters(ADAPTER, True)


def base_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "the weights"
) -> dict[str, torch.Tensor]:
    """A plain cogvx_mini state dict renamed for ``model``, which has LoRA layers:
    ``<m>.weight`` -> ``<m>.base_layer.weight`` for every adapted module ``m``. Raises
    ``ValueError`` naming the first mismatches unless it is exactly the base of ``model``."""
    wrapped = tuple(f"{name}." for name in lora_layers(model))
    out = {}
    for key, value in state.items():
        prefix = next((p for p in wrapped if key.startswith(p)), None)
        out[f"{prefix}base_layer.{key[len(prefix) :]}" if prefix else key] = value
    ours = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    missing, unexpected = sorted(set(ours) - set(out)), sorted(set(out) - set(ours))
    shapes = [k for k in ours if k in out and tuple(out[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} holds weights of another transformer config: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(shapes)} of another shape (e.g. {shapes[:3]})"
        )
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Add ``(α/r)·B·A`` into every adapted weight (the layers then run as plain linears)."""
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract what :func:`merge_lora` added (up to rounding)."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every LoRA layer by its plain ``nn.Linear`` — with the LoRA merged into the weight
    (``merge``) or dropped — so the model has its original parameter names again."""
    for name, layer in lora_layers(model).items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    model.__dict__.pop("peft_config", None)  # peft's record of the adapter, set on injection
    return model


def lora_summary(model: nn.Module) -> dict[str, list[float]] | None:
    """``{module: [rank, alpha, dropout]}`` of ``model``'s LoRA (``None`` without): what a
    checkpoint records, so that a run resumes only with the LoRA it was saved with."""
    layers = lora_layers(model)
    if not layers:
        return None
    summary = {}
    for name, layer in layers.items():
        dropout = getattr(layer.lora_dropout[ADAPTER], "p", 0.0)  # nn.Identity when 0
        summary[name] = [layer.r[ADAPTER], float(layer.lora_alpha[ADAPTER]), float(dropout)]
    return summary


# -- diffusers files: writing -------------------------------------------------------------------


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP-sharded DTensor (a collective: every rank calls it)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _drop_zero_ranks(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [r, D_in], B [D_out, r])`` without the ranks whose column of ``B`` is zero (they
    add nothing): the thirds of a block-diagonal ``qkv`` LoRA loaded from diffusers go back to
    their own rank. A LoRA with no non-zero column (untrained) keeps all."""
    keep = b.ne(0).any(dim=0)
    if keep.all() or not keep.any():
        return a, b
    return a[keep], b[:, keep]


def _split(a: torch.Tensor, b: torch.Tensor, theirs: list[str], config) -> dict[str, tuple]:
    """One layer's ``A [r, D_in]`` and scaled ``B [D_out, r]`` -> ``{diffusers module: (A_i,
    B_i)}`` for the diffusers weights ``theirs`` that the key map concatenates along dim 0."""
    parts = dict(zip(theirs, b.chunk(len(theirs), dim=0), strict=True))
    if any(b_i.any() for b_i in parts.values()):
        # A zero part next to non-zero ones was a missing part of a loaded LoRA (a LoRA on to_q
        # and to_v only): write none for it, as the file it came from had none.
        parts = {key: b_i for key, b_i in parts.items() if b_i.any()}
    out = {}
    for key, b_i in parts.items():
        a_i, b_i = _drop_zero_ranks(a, b_i)
        if key == "patch_embed.proj.weight" and config.temporal_patch_size == 1:
            c, p = config.in_channels, config.patch_size  # diffusers has a Conv2d there
            a_i, b_i = a_i.reshape(-1, c, p, p), b_i[:, :, None, None]
        # q, k and v share A: one copy each (safetensors refuses tensors that share memory).
        out[key.removesuffix(".weight")] = (a_i.clone(), b_i.contiguous())
    return out


def diffusers_lora_state_dict(
    model: nn.Module, weights: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """``model``'s LoRA in diffusers' keys: ``transformer.<module>.lora_A.weight [r, D_in]`` and
    ``.lora_B.weight [D_out, r]``, float32, each layer's current scaling multiplied into
    ``lora_B`` (diffusers reads no alphas, so the file holds the delta itself).

    ``weights``: parameter name -> tensor to use instead of the model's own (an EMA's averages).
    Under FSDP every rank must call this (it gathers the shards)."""
    key_map = _transformer_key_map(model.config)
    weights = weights or {}
    out = {}
    for name, layer in lora_layers(model).items():
        theirs = key_map.get(f"{name}.weight")
        if theirs is None:
            raise ValueError(f"{name}: no diffusers counterpart for a LoRA on this module")
        pa, pb = f"{name}.lora_A.{ADAPTER}.weight", f"{name}.lora_B.{ADAPTER}.weight"
        a = _full(weights.get(pa, layer.lora_A[ADAPTER].weight)).detach().float().cpu()
        b = _full(weights.get(pb, layer.lora_B[ADAPTER].weight)).detach().float().cpu()
        b = b * layer.scaling[ADAPTER]  # the delta itself: diffusers' files carry no alphas
        for module, (a_i, b_i) in _split(a, b, theirs, model.config).items():
            out[f"{PREFIX}{module}.lora_A.weight"] = a_i
            out[f"{PREFIX}{module}.lora_B.weight"] = b_i
    if not out:
        raise ValueError("the model has no LoRA layers (add_lora or load_lora_diffusers first)")
    return out


def save_lora_diffusers(
    model: nn.Module,
    folder: str | Path,
    weights: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    write: bool = True,
) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` (:func:`diffusers_lora_state_dict`,
    cast to ``dtype`` if given), atomically; ``write=False`` on the ranks that only help gather.
    Returns the file's path."""
    from cogvx_mini.weights.checkpoint import save_weights

    tensors = diffusers_lora_state_dict(model, weights)
    path = Path(folder) / LORA_FILE
    if write:
        if dtype is not None:
            tensors = {k: v.to(dtype) for k, v in tensors.items()}
        save_weights(tensors, path, metadata={"format": "pt"})
    return path


# -- diffusers files: reading -------------------------------------------------------------------


def lora_file(folder: str | Path) -> Path:
    """The LoRA file of ``folder``: ``pytorch_lora_weights.safetensors``, the folder's only
    ``*.safetensors`` file, or ``folder`` itself if it is a file. Pickles are never read."""
    path = Path(folder)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors LoRA files are read (no pickles)")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no LoRA folder or file at {path}")
    if (path / LORA_FILE).is_file():
        return path / LORA_FILE
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    pickles = sorted(p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
    hint = f" (pickled files {pickles} are never read: convert them)" if pickles else ""
    raise FileNotFoundError(
        f"expected {path / LORA_FILE} or a single *.safetensors file, found "
        f"{[p.name for p in found]}{hint}"
    )


def read_lora_file(
    folder: str | Path,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict | None]:
    """``({diffusers module: {"A": [r, D_in], "B": [D_out, r]}}, peft config or None)`` of a
    diffusers/finetrainers LoRA file; raises ``ValueError`` naming any key it cannot use."""
    path = lora_file(folder)
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            header = f.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    config = json.loads(header.get("lora_adapter_metadata", "null"))
    if config is not None:  # diffusers packs the config per component: "transformer.r", ...
        config = {k.removeprefix(PREFIX): v for k, v in config.items() if k.startswith(PREFIX)}
        if config.get("use_dora"):
            raise ValueError(f"{path}: DoRA adapters are not supported")
    # Keys of diffusers' files carry "transformer."; a bare peft state dict has no prefix.
    prefixed = any(k.startswith(PREFIX) for k in tensors)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if prefixed and not key.startswith(PREFIX):
            raise ValueError(
                f"{path}: key {key!r} is not the transformer's (cogvx_mini loads the "
                "transformer's LoRA only)"
            )
        name = key.removeprefix(PREFIX)
        for part in ("A", "B"):
            if name.endswith(f".lora_{part}.weight"):
                modules.setdefault(name.removesuffix(f".lora_{part}.weight"), {})[part] = value
                break
        else:
            raise ValueError(
                f"{path}: key {key!r} is not a peft LoRA factor (expected "
                "<module>.lora_A.weight and <module>.lora_B.weight)"
            )
    for module, ab in modules.items():
        if "A" in ab and "B" in ab and ab["A"].ndim == 4:
            # diffusers' patch embedding is a Conv2d (kernel = stride = p): its LoRA is a conv
            # A [r, C, p, p] and a 1x1 conv B [D, r, 1, 1], a linear on the flattened patch.
            ab["A"], ab["B"] = ab["A"].flatten(1), ab["B"].flatten(1)
        if set(ab) != {"A", "B"} or ab["A"].ndim != 2 or ab["B"].ndim != 2:
            shapes = {k: tuple(v.shape) for k, v in ab.items()}
            raise ValueError(f"{path}: {module} needs a 2-d lora_A and lora_B, got {shapes}")
        if ab["A"].shape[0] != ab["B"].shape[1]:
            raise ValueError(
                f"{path}: {module} lora_A {tuple(ab['A'].shape)} and lora_B "
                f"{tuple(ab['B'].shape)} have different ranks"
            )
    return modules, config


def file_scale(module: str, rank: int, config: dict | None) -> float:
    """The scale diffusers gives one module of a file: ``lora_alpha / r`` (``alpha_pattern``
    first, ``/ √r`` with rsLoRA) from the file's peft config, else 1 (alpha = rank)."""
    if not config:
        return 1.0
    from peft.utils.other import get_pattern_key

    alphas = config.get("alpha_pattern") or {}
    alpha = alphas.get(get_pattern_key(list(alphas), module), config.get("lora_alpha", rank))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _fused_parts(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    """diffusers module -> ``(our module, its index among the parts, number of parts)``: ``to_k``
    of block 0 is part 1 of 3 of ``blocks.0.attn.qkv``; most modules are part 0 of 1."""
    out = {}
    for ours, theirs in _transformer_key_map(model.config).items():
        if ours.endswith(".weight"):
            for i, key in enumerate(theirs):
                out[key.removesuffix(".weight")] = (ours.removesuffix(".weight"), i, len(theirs))
    return out


def lora_from_diffusers(
    modules: Mapping[str, Mapping[str, torch.Tensor]], config: dict | None, model: nn.Module
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """diffusers modules' LoRA (:func:`read_lora_file`) -> ``{our module: (A [R, D_in],
    B [D_out, R], scaling)}``: the parts of a fused weight stacked as the module docstring says,
    every shape checked against ``model``'s layers."""
    parts_of = _fused_parts(model)
    grouped: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    counts: dict[str, int] = {}
    for module, ab in modules.items():
        if module not in parts_of:
            raise ValueError(
                f"LoRA module {module!r} is not in a diffusers CogVideoX transformer of this "
                f"config ({model.config.num_layers} layers)"
            )
        ours, index, counts[ours] = parts_of[module]
        layer = model.get_submodule(ours)
        a, b = ab["A"].float(), ab["B"].float()
        fits = isinstance(layer, nn.Linear) and a.shape[1] == layer.in_features
        if not fits or b.shape[0] * counts[ours] != layer.out_features:
            wanted = (getattr(layer, "out_features", "?"), getattr(layer, "in_features", "?"))
            raise ValueError(
                f"LoRA module {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do "
                f"not fit {ours} ({type(layer).__name__} [D_out, D_in] = {list(wanted)}, "
                f"{counts[ours]} part(s))"
            )
        grouped.setdefault(ours, {})[index] = (a, b, file_scale(module, a.shape[0], config))
    return {ours: _stack(parts, counts[ours]) for ours, parts in grouped.items()}


def _stack(parts: dict[int, tuple], count: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One LoRA ``(A, B, s)`` of a weight made of ``count`` parts from the parts present,
    ``{index: (A_i, B_i, s_i)}``: ``A`` stacked, ``B`` block-diagonal (a missing part is a zero
    block), ``s`` the first part's scale."""
    order = sorted(parts)
    scale = parts[order[0]][2]
    rows = parts[order[0]][1].shape[0]
    a = torch.cat([parts[i][0] for i in order])
    b = torch.zeros(rows * count, a.shape[0])
    col = 0
    for i in order:
        a_i, b_i, s_i = parts[i]
        # Unequal scales cannot share one peft scaling: fold the ratio into this block.
        b[i * rows : (i + 1) * rows, col : col + a_i.shape[0]] = b_i * (s_i / scale)
        col += a_i.shape[0]
    return a, b, scale


@torch.no_grad()
def load_lora_diffusers(model: nn.Module, folder: str | Path, scale: float = 1.0) -> nn.Module:
    """Add the LoRA of a diffusers/finetrainers file (``folder/pytorch_lora_weights.safetensors``)
    to ``model`` (a ``CogVideoXTransformer`` without LoRA) and freeze the rest; ``scale``
    multiplies every delta (diffusers' adapter weight). Returns ``model``, changed in place.

    Raises ``ValueError`` naming the key and shapes when the file does not fit the model."""
    from peft import LoraConfig

    loras = lora_from_diffusers(*read_lora_file(folder), model)
    if not loras:
        raise ValueError(f"{lora_file(folder)} holds no LoRA factors")
    # Each module's rank and alpha by an escaped pattern: peft matches a pattern at the end of a
    # module name after any prefix, "^" ties it to the whole name (diffusers writes them so).
    patterns = {name: "^" + name.replace(".", r"\.") for name in loras}
    config = LoraConfig(
        r=next(iter(loras.values()))[0].shape[0],
        target_modules="|".join(p[1:] for p in patterns.values()),
        rank_pattern={patterns[n]: a.shape[0] for n, (a, _, _) in loras.items()},
        alpha_pattern={patterns[n]: s * a.shape[0] for n, (a, _, s) in loras.items()},
    )
    _inject(model, config)
    layers = lora_layers(model)
    for name, (a, b, _) in loras.items():
        layer = layers[name]
        layer.lora_A[ADAPTER].weight.copy_(a)
        layer.lora_B[ADAPTER].weight.copy_(b)
        layer.set_scale(ADAPTER, scale)
    return model
