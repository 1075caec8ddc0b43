"""The strict config loader every section shares: typed dataclasses filled from YAML, where an
unknown key, a wrong type or a bad value is an error that names the key.

Each package owns the dataclasses of its own part (streamer.config, learner.config, ...) and
checks its values with `check`; motionmask.config composes them into one Config.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file and the key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer with hundreds of digits
                number = math.inf
            if not math.isfinite(number):  # .nan passes every `x > 0` check as False, .inf as True
                raise ConfigError(f"{key}: expected a finite number, got {str(value)[:40]}")
            return number
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = [n for n in names if n.startswith(str(k)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: unknown key{hint}; known: {', '.join(sorted(names))}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML config file holds ({} for an empty file). Every failure is a ConfigError
    whose message starts with the file name and says what to do."""
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}: config file not found")
    try:
        data = yaml.safe_load(_checked_text(p, where)) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{where}: is nested too deeply to be a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def check(section: str, checks: list[tuple[str, bool, str]]) -> None:
    """The one check of every config section's validate(): each (key, ok, want) whose ok is False
    raises ValueError("<section>.<key> must be <want>"), the first one first."""
    for key, ok, want in checks:
        if not ok:
            raise ValueError(f"{section}.{key} must be {want}")


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB
MAX_FLOW_DEPTH = 64  # [ and { nesting; a real config has 2 or 3


def _checked_text(p: Path, where: str) -> str:
    """The file's text, refused before YAML sees it when it is huge or its [ { nesting is deep:
    PyYAML's scanner takes time quadratic in that depth (a megabyte of them would not finish;
    figures: docs/benchmarks.md, "Small measurements behind the code")."""
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{where}: {p.stat().st_size} bytes is too large for a config (at most "
            f"{MAX_CONFIG_BYTES}); is it the right file?"
        )
    text = p.read_text(encoding="utf-8")
    depth = deepest = 0
    for ch in text:  # brackets inside strings count too: no real config comes near the limit
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}" and depth:
            depth -= 1
    if deepest > MAX_FLOW_DEPTH:
        raise ConfigError(f"{where}: [ and {{ nested {deepest} deep (at most {MAX_FLOW_DEPTH}); is it the right file?")
    return text


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
