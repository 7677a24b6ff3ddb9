"""Typed YAML configs: a YAML file plus `key.sub=value` overrides, validated into dataclasses.

Each experiment describes its config as nested dataclasses. Loading checks every key and type, so
a typo (`train.lrr`) or a wrong type (`train.epochs=ten`) stops the run with one line naming the
file and the key, instead of being silently ignored the way open_clip ignores unknown model keys.
"""

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from medrepro import atomic
from medrepro.errors import ConfigError

T = TypeVar("T")
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read `path`, apply `key.sub=value` overrides and validate the result into `cls`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for item in overrides:
        apply_override(raw, item, cls)
    try:
        return from_dict(cls, raw, source=str(path))
    except ConfigError as e:
        # A bad value given on the command line is the command line's fault, not the file's.
        item = _override_for(e.key, overrides) if e.key is not None else _override_named_in(str(e), overrides)
        if item is None:
            raise
        raise ConfigError(f"override {item!r}: {str(e).removeprefix(f'{path}: ')}", e.key) from None


def _override_for(key: str | None, overrides: Sequence[str]) -> str | None:
    """The override that set `key`, or a key under it, or the section `key` is inside."""
    if key is None:
        return None
    for item in reversed(overrides):
        name = item.partition("=")[0]
        if name == key or name.startswith(f"{key}.") or key.startswith(f"{name}."):
            return item
    return None


def _override_named_in(message: str, overrides: Sequence[str]) -> str | None:
    """For a check of top-level keys, which has no section to name: the last override whose key the
    message names."""
    for item in reversed(overrides):
        if re.search(rf"(?<![\w.]){re.escape(item.partition('=')[0])}(?!\w)", message):
            return item
    return None


def apply_override(raw: dict[str, Any], item: str, cls: type) -> None:
    """Set `a.b.c=value` in the raw mapping; the value is parsed as YAML (`3`, `1e-4`, `[1, 2]`)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node, node_type = raw, cls
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if dataclasses.is_dataclass(node_type):
            hints = _field_types(node_type)
            if part not in hints:
                raise ConfigError(f"override {item!r}: unknown key '{where}' (known: {', '.join(sorted(hints))})")
            child_type = hints[part]
        elif _is_dict(node_type):
            args = typing.get_args(node_type)  # a free key of a dict[str, X] (or untyped) field
            child_type = args[1] if len(args) == 2 else Any
        else:
            raise ConfigError(f"override {item!r}: '{'.'.join(parts[:depth])}' has no sub-keys")
        if depth == len(parts) - 1:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node, node_type = child, _unwrap_optional(child_type)


def from_dict(cls: type[T], data: Any, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix or 'config'}: expected a mapping, got {type(data).__name__}", prefix)
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{source}: unknown key '{where}' (known here: {', '.join(sorted(hints))})", where)
    kwargs = {}
    for field in dataclasses.fields(cls):
        key = f"{prefix}.{field.name}" if prefix else field.name
        if field.name in data:
            kwargs[field.name] = _convert(hints[field.name], data[field.name], source, key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{key}'", key)
    try:
        return cls(**kwargs)
    except ValueError as e:  # __post_init__ checks of ranges and cross-field constraints
        raise ConfigError(f"{source}: {prefix or 'config'}: {e}", prefix or None) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def lookup(cfg: Any, key: str) -> Any:
    """The value at a dotted key (`paths.lmdb`) of a config object."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def key_of(cfg: Any, section: Any, prefix: str = "") -> str | None:
    """The dotted key under which `section` (the object itself) sits in the config `cfg`, or None."""
    for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(cfg) else ():
        value = getattr(cfg, f.name)
        if value is section:
            return prefix + f.name
        if dataclasses.is_dataclass(value) and (found := key_of(value, section, f"{prefix}{f.name}.")):
            return found
    return None


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → one mapping with dotted keys; other values (lists included) are leaves."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def to_plain(cfg: Any) -> dict[str, Any]:
    """The config as plain dicts and lists, as YAML writes it."""
    return _plain(to_dict(cfg))


def save_config(cfg: Any, path: str | Path, comment: str = "") -> None:
    """Write the resolved config (after overrides and defaults) beside a run's outputs; `comment` goes on
    top as YAML comment lines, so the file still loads as the same config."""
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    atomic.write_text(path, header + yaml.safe_dump(to_plain(cfg), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Any:
    """`X | None` → X, so an override can reach into an optional section."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_dict(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or tp in (dict, Any)


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{source}: {key}: unexpected None", key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}: expected one of {list(args)}, got {value!r}", key)
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(source, key, "a mapping", value)
        key_type, value_type = args or (Any, Any)
        return {
            _convert(key_type, k, source, f"{key}.{k}"): _convert(value_type, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _type_error(source, key, "a list", value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{source}: {key}: expected {len(args)} items, got {len(value)}", key)
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_convert(a, v, source, f"{key}[{i}]") for i, (a, v) in pairs)
        item_type = args[0] if args else Any
        items = [_convert(item_type, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(source, key, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(source, key, "an integer", value)
        return value
    if tp is float:
        # PyYAML follows YAML 1.1, which reads `3e-5` (no dot) as a string; people write it anyway.
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(source, key, "a number", value)
        if not math.isfinite(value):
            # `.nan` and `.inf` are valid YAML floats, and no setting here means anything with them.
            raise _type_error(source, key, "a finite number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(source, key, "a string", value)
        return value
    raise TypeError(f"config type {tp!r} at {key} is not supported")


def _type_error(source: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{source}: {key}: expected {expected}, got {value!r}", key)
