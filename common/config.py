"""Typed configuration: dataclass schemas filled from YAML plus ``key=value`` overrides.

YAML only supplies values; the schema (a ``@dataclass``) owns every default. Loading is strict:
an unknown key, a value of the wrong type or a missing required value raises :class:`ConfigError`
with a one-line message naming the dotted key, before any work starts.

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``Optional[T]``,
``list[T]``, ``tuple[T, ...]``, ``dict[str, T]`` and nested dataclasses. ``${...}`` interpolation
(OmegaConf) is resolved before validation.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

__all__ = ["ConfigError", "from_dict", "load", "to_dict", "save_yaml", "MISSING"]

MISSING: Any = dataclasses.MISSING


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the offending key."""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in the schema's type."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}': null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else ConfigError(f"config key '{key}': {value!r} fits none of {tp}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not {_type_name(tp)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, Sequence, list) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # .nan would pass every `x > 0` check after it
                raise ConfigError(f"config key '{key}': {value!r} is not a finite number")
            return float(value)
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"config key '{key}': expected a path, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported schema type {tp}")


def from_dict(schema: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build ``schema`` from a plain mapping, strictly (unknown keys and wrong types raise)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {data!r}")
    hints = get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{key}' (known keys here: {known})")
        kwargs[name] = _convert(value, hints[name], key)
    for name, f in fields.items():
        if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"missing required config key '{key}'")
    try:
        return schema(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        where = prefix or schema.__name__
        raise ConfigError(f"config '{where}': {err}") from err


def read_with_bases(p: Path, chain: tuple[Path, ...] = ()) -> Any:
    """A YAML file as an OmegaConf node; a top-level ``_base_: OTHER.yaml`` (relative to the file) is read first and
    this file's values are merged over it (dicts merge key by key, lists and scalars replace)."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (f" (the _base_ of {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise ConfigError(f"config file {p}: _base_ cycle ({' -> '.join(str(c) for c in chain)})")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {p} is not valid UTF-8 (byte {err.start}: {err.reason})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ConfigError(f"{where}: invalid YAML: {what}" + (f" ({context})" if context else "")) from None
    raw = raw or {}
    base_ref = raw.pop("_base_", None) if isinstance(raw, dict) else None
    node = OmegaConf.create(raw)
    if base_ref is None:
        return node
    return OmegaConf.merge(read_with_bases(p.parent / str(base_ref), chain + (p.resolve(),)), node)


def load(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``schema`` from a YAML file (optional) and ``key=value`` dotlist overrides.

    A file may start from another: ``_base_: ../ark_asr/opd.yaml`` (relative to the file), then override keys.

    Overrides are parsed as YAML scalars (``trainer.max_steps=10``, ``data.shuffle=false``,
    ``teacher.name=null``, ``sets=[a,b]``).
    """
    try:
        base = OmegaConf.create({})
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            base = read_with_bases(p)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not of the form key=value")
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        data = OmegaConf.to_container(base, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"config error: {str(err).splitlines()[0]}") from err
    return from_dict(schema, data)  # type: ignore[arg-type]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable mapping of a config dataclass (paths become strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from common.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
