"""The one converter from plain recipe data to typed config, and the one error type.

`from_dict(cls, data, prefix)` walks any dataclass's fields, checks types (int, float, bool, str,
Optional, list, tuple, dict, nested dataclasses) and the allowed values given as
``field(metadata={"choices": ...})`` (a tuple, or a `Registry`-backed `registry_choices` so the names
come from the registry itself), then the class's own ``__post_init__`` checks values. Every error is a
`ConfigError` naming the dotted key (``grpo.kl_kind``), what is wrong and the allowed values; an unknown
key gets the closest known names as suggestions.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import importlib
import math
import sys
import types
import typing
from dataclasses import field
from typing import Any, Callable

from veripo.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the key and the fix. `key` (alias `field`) is the dotted
    key when known."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key

    @property
    def field(self) -> str | None:
        return self.key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_type_name(tp)}",
                          key)
    if dataclasses.is_dataclass(tp):
        if value is None:
            raise ConfigError(f"{key}: a section is required here, got null", key)
        return from_dict(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}. Fix: write {key}=[a,b]", key)
        inner = args[0] if args else Any
        out = [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}", key)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}", key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}", key)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}", key)
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}", key)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}", key)
    return value


def allowed_values(f: dataclasses.Field) -> tuple | None:
    """The allowed values of a config field (None: any), evaluating registry-backed choices."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping, checking keys, types and choices."""
    where = prefix or "<root>"
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {data!r}", prefix or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(fields), n=3)
        dotted = [f"{prefix}.{c}" if prefix else c for c in close]
        hint = f" Did you mean {', '.join(dotted)}?" if close else ""
        key = f"{prefix + '.' if prefix else ''}{k}"
        raise ConfigError(f"{key}: unknown key.{hint} Known keys of {where}: {', '.join(sorted(fields))}", key)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key)
        choices = allowed_values(fields[name])
        if choices is not None and kwargs[name] is not None:
            vals = kwargs[name] if isinstance(kwargs[name], (list, tuple)) else [kwargs[name]]
            for v in vals:
                if v not in choices:
                    raise ConfigError(f"{key}: {v!r} is not allowed. Allowed values: {', '.join(map(str, choices))}",
                                      key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and e.key and not e.key.startswith(prefix):  # a section's own check named its field
            full, msg = f"{prefix}.{e.key}", str(e)
            text = full + msg[len(e.key):] if msg.startswith(e.key + " ") else f"{full}: {msg}"
            raise ConfigError(text, full) from e
        raise
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise ConfigError(msg if not prefix or msg.startswith(prefix) else f"{prefix}: {msg}", prefix or None) from e


def to_dict(obj: Any) -> Any:
    """A dataclass config back to plain data (for config.yaml and hashing)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def choice(default: Any, choices: tuple | Callable[[], Any]) -> Any:
    """A field whose value (or each list item) must be one of `choices`: a tuple, or a callable
    returning the allowed names (see `registry_choices`)."""
    return field(default=default, metadata={"choices": choices})


def registry_choices(module: str, name: str) -> Callable[[], list[str]]:
    """The names registered in `module.name` (a `veripo.registry.Registry`), looked up when a value is
    checked, without importing torch: the live registry when `module` is already imported (names a plugin
    registered count), else the names declared in `veripo.config.names.DECLARED`, else (a torch-free
    registry) the module imported then. See `veripo.config.names` for the pattern."""

    def names() -> list[str]:
        return registry_names(module, name)

    names.registry = f"{module}.{name}"  # type: ignore[attr-defined]  (for the drift test)
    return names


def registry_names(module: str, name: str) -> list[str]:
    """The sorted names of registry `module.name`; see `registry_choices`."""
    from veripo.config.names import DECLARED

    mod = sys.modules.get(module)
    if mod is not None and hasattr(mod, name):
        return getattr(mod, name).names()
    declared = DECLARED.get(f"{module}.{name}")
    if declared is not None:
        return sorted(declared)
    return getattr(importlib.import_module(module), name).names()


def need(ok: bool, name: str, rule: str, value: Any) -> None:
    """A section's range check: `ConfigError` ``"NAME RULE, got VALUE"`` keyed by the field's `name`
    (`from_dict` turns it into the dotted key, ``grpo.lr must be a finite number > 0, got -1.0``)."""
    if not ok:
        raise ConfigError(f"{name} {rule}, got {value!r}", name)


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
