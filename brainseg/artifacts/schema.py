"""JSON sections written and read by the same dataclasses: the fields and their types are the schema.

A `Section` is a frozen dataclass. `to_dict()` gives the JSON object written to disk; `from_dict()`
reads one back, checking every field against its annotation (str, int, float, bool, dict, list,
`X | None`, `tuple[X, ...]`, `dict[str, X]`, nested sections) and raising `SchemaError` with the
field's dotted path ("input.channels should be int, is str"). A field with a default may be missing
(files written before it existed). Checks beyond types belong in a section's `problems()`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, get_args, get_origin

T = TypeVar("T", bound="Section")


class SchemaError(ValueError):
    """A JSON value does not fit the section it is read into; the message names the field's path."""


@dataclasses.dataclass(frozen=True)
class Section:
    @classmethod
    def from_dict(cls: type[T], raw: Any, where: str = "") -> T:
        """`raw` read into this section; SchemaError naming the first field that does not fit."""
        if not isinstance(raw, dict):
            raise SchemaError(f"{where or 'the document'} should be an object, is {type(raw).__name__}")
        hints = typing.get_type_hints(cls)
        values = {}
        for field in dataclasses.fields(cls):
            path = f"{where}.{field.name}" if where else field.name
            if field.name in raw:
                values[field.name] = _read(raw[field.name], hints[field.name], path)
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise SchemaError(f"missing key {path!r}")
        section = cls(**values)
        problems = section.problems()
        if problems:
            raise SchemaError(f"{where + ': ' if where else ''}{'; '.join(problems)}")
        return section

    def to_dict(self) -> dict:
        """The JSON object of this section, every field written (None as null)."""
        return {f.name: _write(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def problems(self) -> list[str]:
        """What is wrong beyond the types, as readable phrases; empty when nothing is."""
        return []


def _read(value: Any, hint: Any, path: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _read(value, inner, path)
    if isinstance(hint, type) and issubclass(hint, Section):
        return value if isinstance(value, hint) else hint.from_dict(value, path)
    if origin is dict:
        _expect(value, dict, path)
        key_type, item_type = args
        return {_read(k, key_type, f"{path} key"): _read(v, item_type, f"{path}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        _expect(value, list, path)
        item_type = args[0]
        items = [_read(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    _expect(value, hint, path)
    return value


def _expect(value: Any, kind: type, path: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SchemaError(f"{path} should be {kind.__name__}, is {type(value).__name__}")


def _write(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, dict):
        return {key: _write(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_write(item) for item in value]
    return value
