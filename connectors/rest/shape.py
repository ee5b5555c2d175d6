"""Where things are in a REST API's JSON: dotted paths, the list of records in a list response,
a record's id, and the envelopes around single records (``{"contact": {...}}``).

Every function that finds the response not shaped as described raises a
``FatalConnectorError`` naming the connector, the entity and the setting to fix, and shows
what the response holds instead (its keys, never its values: they may be personal data).
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from syncengine.errors import FatalConnectorError

__all__ = [
    "MISSING",
    "Where",
    "dig",
    "dotted",
    "fill",
    "id_of",
    "records_of",
    "unwrap",
    "without",
    "wrap",
]


class _Missing:
    """The value of a path that leads nowhere (distinct from a JSON ``null``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
_PART = re.compile(r"[^.\s\[\]{}]+")
MAX_KEYS_SHOWN = 12


def dotted(text: str) -> tuple[str, ...]:
    """``"data.items"`` -> ``("data", "items")``; ``""`` -> ``()`` (the body itself).
    Raises ``ValueError`` for an empty part or whitespace."""
    if text == "":
        return ()
    parts = tuple(text.split("."))
    for index, part in enumerate(parts):
        if not _PART.fullmatch(part):
            raise ValueError(
                f"{text!r} is not a dotted path: part {index + 1} is {part!r} "
                "(write keys separated by '.', e.g. data.items; empty = the body itself)"
            )
    return parts


def dig(body: Any, steps: Sequence[str]) -> Any:
    """The value at ``steps`` in ``body``, or ``MISSING`` when a key on the way is absent or a
    step meets something that is not an object."""
    current = body
    for step in steps:
        if not isinstance(current, Mapping) or step not in current:
            return MISSING
        current = current[step]
    return current


def wrap(data: Any, steps: Sequence[str]) -> Any:
    """``data`` inside the envelope ``steps``: ``wrap(d, ("contact",))`` is ``{"contact": d}``."""
    for step in reversed(steps):
        data = {step: data}
    return data


def _same_text(text: str) -> str:
    return text


@dataclass(frozen=True)
class Where:
    """Which connector and entity a message is about, and how to name its settings.
    ``redact`` removes secrets (an API key in a URL) from every message made here."""

    connector: str
    entity: str
    redact: Callable[[str], str] = field(default=_same_text, compare=False, repr=False)

    def setting(self, name: str, value: Any = None) -> str:
        """``records_path = 'data'`` in ``[connectors.crm.entities.customers]``."""
        table = f"[connectors.{self.connector}.entities.{self.entity}]"
        shown = f"{name} = {value!r}" if value is not None else name
        return f"{shown} in {table}"

    def fatal(self, message: str) -> FatalConnectorError:
        return FatalConnectorError(
            self.redact(message), connector=self.connector, entity=self.entity
        )


def describe_shape(value: Any) -> str:
    """What a JSON value is, without its content: ``an object with keys: a, b`` or ``a list``."""
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        if not keys:
            return "an empty object"
        shown = ", ".join(keys[:MAX_KEYS_SHOWN])
        more = f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else ""
        return f"an object with keys: {shown}{more}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _list_keys(body: Any, prefix: str = "", depth: int = 2) -> list[str]:
    """Dotted paths in ``body`` that hold a list of objects (candidates for records_path)."""
    found: list[str] = []
    if not isinstance(body, Mapping) or depth == 0:
        return found
    for key, value in body.items():
        path = f"{prefix}{key}"
        if isinstance(value, list) and (not value or isinstance(value[0], Mapping)):
            found.append(path)
        elif isinstance(value, Mapping):
            found.extend(_list_keys(value, f"{path}.", depth - 1))
    return found


def records_of(body: Any, path: str, where: Where, context: str) -> list[dict[str, Any]]:
    """The records of a list response: the list at ``records_path`` (the body itself when the
    path is empty), each an object. ``context`` says which request it was (``GET /x page 2``)."""
    found = dig(body, dotted(path))
    if found is MISSING or not isinstance(found, list):
        candidates = _list_keys(body)
        if found is MISSING:
            what = f"the response has no {path!r}"
        else:
            named = repr(path) if path else "the response"
            what = f"{named} is {describe_shape(found)}, not a list"
        shape = f"; the response is {describe_shape(body)}" if path else ""
        if candidates:
            hint = (
                f"set records_path to the key holding the records (here: "
                f"{', '.join(repr(c) for c in candidates)})"
            )
        elif isinstance(body, list):
            hint = 'the body itself is the list of records: set records_path = ""'
        else:
            hint = (
                "set records_path to the dotted path of the list of records "
                "(empty when the body itself is the list)"
            )
        raise where.fatal(
            f"{context}: {what} (setting {where.setting('records_path', path)}){shape}; {hint}."
        )
    for index, item in enumerate(found):
        if not isinstance(item, dict):
            raise where.fatal(
                f"{context}: record {index + 1} at {path or 'the top level'!s} is "
                f"{describe_shape(item)}, not an object (setting "
                f"{where.setting('records_path', path)})."
            )
    return found


def id_of(record: Mapping[str, Any], steps: tuple[str, ...], where: Where, context: str) -> str:
    """The native id of ``record`` at ``id_field``, as text (JSON numbers become digits)."""
    value = dig(record, steps)
    if isinstance(value, bool) or not isinstance(value, str | int):
        name = ".".join(steps)
        got = "no such key" if value is MISSING else describe_shape(value)
        raise where.fatal(
            f"{context}: a record has no usable id at {name!r} ({got}; setting "
            f"{where.setting('id_field', name)}); the record is {describe_shape(record)}. "
            "Set id_field to the key that holds each record's id."
        )
    text = str(value)
    if not text.strip():
        raise where.fatal(
            f"{context}: a record has an empty id at {'.'.join(steps)!r} (setting "
            f"{where.setting('id_field', '.'.join(steps))})."
        )
    return text


def unwrap(body: Any, steps: tuple[str, ...], where: Where, context: str) -> dict[str, Any]:
    """The one record in a single-record response (inside ``response_path`` when set)."""
    found = dig(body, steps)
    if not isinstance(found, dict):
        path = ".".join(steps)
        got = f"has no {path!r}" if found is MISSING else f"holds {describe_shape(found)}"
        where_it = f"at {path!r} " if steps else ""
        raise where.fatal(
            f"{context}: expected one record {where_it}but the response {got} (setting "
            f"{where.setting('response_path', path)}); the response is "
            f"{describe_shape(body)}"
        )
    return found


def without(data: Mapping[str, Any], patterns: Sequence[Sequence[str]]) -> dict[str, Any]:
    """A copy of ``data`` without the fields ``patterns`` name: each pattern is the parts of a
    dotted path, each part a key or an ``fnmatch`` wildcard (``("properties", "hs_*")``). An
    object emptied by the removal is removed too (nothing of it was meant to be sent)."""
    result: dict[str, Any] = copy.deepcopy(dict(data))
    for pattern in patterns:
        _drop(result, tuple(pattern))
    return result


def _drop(node: dict[str, Any], parts: tuple[str, ...]) -> None:
    head, rest = parts[0], parts[1:]
    names = [k for k in node if fnmatch.fnmatchcase(k, head)]
    for name in names:
        if not rest:
            del node[name]
            continue
        child = node[name]
        if isinstance(child, dict):
            had = bool(child)
            _drop(child, rest)
            if had and not child:
                del node[name]


def fill(template: Any, record: Mapping[str, Any]) -> tuple[Any, bool]:
    """``template`` with each ``{dotted.path}`` placeholder replaced by the record's value
    there; a text that is exactly one placeholder takes the value as it is (a number stays a
    number). The flag is False when a placeholder's value is missing or empty (the request
    cannot be made for this record)."""
    complete = True

    def value_of(name: str) -> Any:
        nonlocal complete
        found = dig(record, dotted(name))
        if found is MISSING or found is None or (isinstance(found, str) and not found.strip()):
            complete = False
            return ""
        return found

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            whole = _WHOLE_PLACEHOLDER.fullmatch(node)
            if whole:
                return value_of(whole.group(1))
            return _ANY_PLACEHOLDER.sub(lambda m: str(value_of(m.group(1))), node)
        if isinstance(node, Mapping):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    filled = walk(template)
    return filled, complete


_WHOLE_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_ANY_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
