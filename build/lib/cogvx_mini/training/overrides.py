"""One override syntax for every training entry point: ``key=value`` or ``section.key=value``.

Values are parsed as YAML (``8``, ``3e-4``, ``[0.9, 0.95]``, ``cosine``, ``null``), then checked
against the dataclass field they land on: an unknown key or a value of the wrong type fails with a
message naming the key, what was expected and what came. The mini CLI's ``--model``, the VAE
trainer's flags, the ablations' ``--set`` and ``scale/train.py``'s ``--set`` all go through here.

    with_overrides(TrainConfig(), ["lr=1e-3", "betas=[0.9, 0.95]"])
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

import yaml

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(pairs: list[str], where: str = "--set") -> dict[str, Any]:
    """``["a.b=1", "c=[2, 3]"]`` -> ``{"a": {"b": 1}, "c": [2, 3]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        apply_override(out, pair, where)
    return out


def apply_override(data: dict[str, Any], pair: str, where: str = "--set") -> None:
    """Apply one ``section.key=value`` to the mapping ``data`` (in place)."""
    path, sep, raw = pair.partition("=")
    if not sep or not path:
        raise ValueError(f"{where}: expected KEY=VALUE (or section.key=value), got {pair!r}")
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{where}: {path!r} sets a key inside a value that is not a section")
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    node[keys[-1]] = value


def check_type(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` converted to ``hint`` where lossless (int -> float), else raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return check_type(value, inner, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        inner = typing.get_args(hint) or (Any,)
        fixed = origin is tuple and inner[-1] is not Ellipsis  # tuple[float, float]
        if fixed and len(inner) != len(value):
            raise ValueError(f"{where}: expected {len(inner)} values, got {value!r}")
        kinds = list(inner) if fixed else [inner[0]] * len(value)
        items = [
            check_type(v, k, f"{where}[{i}]")
            for i, (v, k) in enumerate(zip(value, kinds, strict=True))
        ]
        return items if origin is list else tuple(items)
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


def build_dataclass(cls: type, data: dict[str, Any], where: str = ""):
    """``cls(**data)`` with every key known and every value of its field's type (recursively)."""
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
            kwargs[name] = build_dataclass(hint, value or {}, key)
        else:
            kwargs[name] = check_type(value, hint, key)
    return cls(**kwargs)


def with_overrides(config, pairs: list[str], where: str = "--set"):
    """A copy of the dataclass ``config`` with ``key=value`` overrides applied and checked."""
    changes = parse_overrides(pairs, where)
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return build_dataclass(type(config), {**data, **changes}, where)
