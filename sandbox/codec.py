"""JSON for frozen dataclasses: how a ContainerSpec is written to, and read back from, disk.

Driven by the type hints, so a field added to any spec dataclass is persisted without touching
this module: dataclasses nest, tuples and lists become JSON arrays, Path becomes a string,
enums their value; unknown keys in a stored file are ignored and missing ones take the field's
default, so records written by an older sandbox still load.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

from sandbox.errors import SandboxError

T = TypeVar("T")


def read_object(
    path: str | os.PathLike[str],
    *,
    what: str,
    limit: int,
    error: type[SandboxError],
    hint: str | None = None,
) -> dict[str, Any]:
    """A JSON object from a file the user named (a profile, a bundle's config.json, a process):
    bounded in size, and every way it can be wrong is one error naming `what`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise error(f"cannot read {what}", context=e.strerror, hint=hint) from e
    if len(raw) > limit:
        raise error(f"{what} is larger than {limit >> 20} MiB")
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise error(f"{what} is not valid JSON", context=str(e)) from e
    if not isinstance(value, dict):
        raise error(f"{what} is not a JSON object")
    return value


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return value


def from_json(cls: type[T], data: Any) -> T:
    return typing.cast(T, _decode(cls, data))


_FIELD_TYPES: dict[type, dict[str, Any]] = {}
_ANNOTATIONS: dict[tuple[str, str], Any] = {}


def _field_types(kind: type) -> dict[str, Any]:
    """A dataclass's fields and their types, resolved once per class (a spec holds dozens of
    objects). The annotations are postponed (strings): each distinct one is evaluated once per
    module, where get_type_hints compiles every field's again (~100 fields, ~25 distinct
    annotations in a spec: 1.0 -> 0.6 ms for the first spec a process reads)."""
    types_ = _FIELD_TYPES.get(kind)
    if types_ is None:
        try:
            types_ = {f.name: _annotation(kind, f.name, f.type) for f in dataclasses.fields(kind)}
        except NameError:  # a name only the class's own namespace holds: the general way
            hints = typing.get_type_hints(kind)
            types_ = {f.name: hints[f.name] for f in dataclasses.fields(kind)}
        _FIELD_TYPES[kind] = types_
    return types_


def _annotation(kind: type, name: str, hint: Any) -> Any:
    if not isinstance(hint, str):
        return hint
    # Evaluated where it was written: the class in kind's MRO that annotates the field.
    owner = next(c for c in kind.__mro__ if name in vars(c).get("__annotations__", {}))
    key = (owner.__module__, hint)
    if key not in _ANNOTATIONS:
        value = eval(hint, vars(sys.modules[owner.__module__]))  # our own source's annotation
        _ANNOTATIONS[key] = type(None) if value is None else value
    return _ANNOTATIONS[key]


def _decode(kind: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        for option in options:
            try:
                return _decode(option, data)
            except (TypeError, ValueError, KeyError):
                continue
        raise ValueError(f"cannot decode {data!r} as {kind}")
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in data)
        return tuple(_decode(a, v) for a, v in zip(args, data, strict=True))
    if origin is list:
        (arg,) = typing.get_args(kind)
        return [_decode(arg, v) for v in data]
    if origin in (dict, typing.Mapping) or kind in (dict, typing.Mapping):
        args = typing.get_args(kind)
        return {k: _decode(args[1], v) if args else v for k, v in data.items()}
    if kind is Any or kind is object:
        return data
    if isinstance(kind, type):
        if dataclasses.is_dataclass(kind):
            hints = _field_types(kind)
            values = {name: _decode(hints[name], v) for name, v in data.items() if name in hints}
            return kind(**values)
        if issubclass(kind, enum.Enum):
            return kind(data)
        if issubclass(kind, Path):
            return Path(data)
        if kind is bytes:
            return bytes.fromhex(data)
        if kind is float and isinstance(data, int):
            return float(data)
        if not isinstance(data, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(data).__name__}")
    return data
