"""Value checks, timestamps and the wire form shared by every resource of the HCP sandbox.

The sandbox validates what a request body or a data file holds field by field, collecting
every problem (``Errors``: field -> messages) instead of stopping at the first, and answers
422 ``{"errors": {...}}`` like the live API. Timestamps are stored in one normal form,
``2026-01-02T03:04:05Z``, so that comparing two of them as strings compares the instants.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
Record = dict[str, Any]
Errors = dict[str, list[str]]

EPOCH = int(dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp())
"""Seeded timestamps are offsets from this instant, never from the wall clock."""

ADDRESS_TYPES = ("billing", "service")
ADDRESS_STRING_FIELDS = ("street", "street_line_2", "city", "state", "zip", "country")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
_HEX_ID_BITS = 128


# ------------------------------------------------------------------------------------ time


_DATES: dict[int, str] = {}
"""``YYYY-MM-DD`` by day number since 1970: seeding formats about a million timestamps over
a few thousand days."""
_TIMES: list[str] = []
"""``THH:MM:SSZ`` by second of the day, made on first use."""


def format_timestamp(seconds: int) -> str:
    """``2026-01-02T03:04:05Z`` for a Unix time in seconds."""
    day, rest = divmod(int(seconds), 86400)
    date = _DATES.get(day)
    if date is None:
        date = _DATES[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    if not _TIMES:
        _TIMES[:] = [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86400)]
    return date + _TIMES[rest]


def parse_timestamp(text: str) -> int:
    """Unix seconds of an ISO 8601 timestamp with a zone (``Z`` or an offset)."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return int(value.timestamp())


class Dice(random.Random):
    """``random.Random`` with cheap draws for generating data in bulk: each is one call of the
    C ``random()`` (``randint`` and ``choice`` cost several Python calls)."""

    def between(self, low: int, high: int) -> int:
        """An integer in ``low..high``, both included."""
        return low + int(self.random() * (high - low + 1))

    def pick(self, items: Sequence[T]) -> T:
        return items[int(self.random() * len(items))]

    def weighted(self, items: Sequence[T], cumulative: Sequence[float]) -> T:
        """One of ``items``; ``cumulative`` holds the running totals of their weights."""
        return items[bisect.bisect_right(cumulative, self.random() * cumulative[-1])]

    def chance(self, probability: float) -> bool:
        return self.random() < probability


def hex_id(rng: random.Random, prefix: str) -> str:
    """``prefix`` and 32 hex digits, like the live API's ids (``cus_…``, ``job_…``)."""
    return f"{prefix}{rng.getrandbits(_HEX_ID_BITS):032x}"


# ------------------------------------------------------------------------------ validation


class ValidationFailed(Exception):
    """A request body or data record is invalid; ``errors`` maps each field to its messages."""

    def __init__(self, errors: Errors) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))


def add_error(errors: Errors, key: str, message: str) -> None:
    errors.setdefault(key, []).append(message)


def check_string(value: Any, key: str, errors: Errors) -> str | None:
    if value is None or isinstance(value, str):
        return value
    add_error(errors, key, "must be a string")
    return None


def check_email(value: Any, key: str, errors: Errors) -> str | None:
    text = check_string(value, key, errors)
    if text is None:
        return None
    text = text.strip() or None
    if text is not None and not _EMAIL.match(text):
        add_error(errors, key, "is invalid")
    return text


def check_timestamp(value: Any, key: str, errors: Errors) -> str | None:
    """A date-time in the stored normal form; ``None`` stays ``None`` (absent)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return format_timestamp(parse_timestamp(value))
        except ValueError:
            pass
    add_error(errors, key, "must be an ISO 8601 timestamp with a time zone")
    return None


def check_integer(value: Any, key: str, errors: Errors, *, minimum: int = 0) -> int | None:
    """An integer (cents, minutes) of at least ``minimum``; booleans and floats are refused
    (money is integer cents: ``12.5`` is an error, not 12 or 13 cents)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        add_error(errors, key, "must be an integer")
        return None
    if value < minimum:
        add_error(errors, key, f"must be greater than or equal to {minimum}")
        return None
    return value


def check_enum(value: Any, choices: Iterable[str], key: str, errors: Errors) -> str | None:
    if value is None:
        return None
    allowed = tuple(choices)
    if not isinstance(value, str) or value not in allowed:
        add_error(errors, key, f"must be one of {', '.join(allowed)}")
        return None
    return value


def check_tags(value: Any, key: str, errors: Errors) -> list[str] | None:
    """A list of strings; ``None`` clears to ``[]``."""
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return list(value)
    add_error(errors, key, "must be an array of strings")
    return None


def check_address(value: Any, key: str, errors: Errors) -> Record | None:
    if not isinstance(value, dict):
        add_error(errors, key, "must be an object")
        return None
    address: Record = {"id": value.get("id") if isinstance(value.get("id"), str) else None}
    kind = value.get("type", "service")
    if kind not in ADDRESS_TYPES:
        add_error(errors, f"{key}.type", "must be billing or service")
    address["type"] = kind
    for name in ADDRESS_STRING_FIELDS:
        address[name] = check_string(value.get(name), f"{key}.{name}", errors)
    return address


def reference(body: Mapping[str, Any], name: str, errors: Errors) -> str | None:
    """The id in ``<name>_id``, or in the nested ``<name>: {"id": ...}`` object the spec's
    schemas use; both given and different is an error."""
    flat = body.get(f"{name}_id")
    nested = body.get(name)
    nested_id = nested.get("id") if isinstance(nested, dict) else None
    if nested is not None and not isinstance(nested, dict):
        add_error(errors, name, "must be an object")
    for key, value in ((f"{name}_id", flat), (f"{name}.id", nested_id)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            add_error(errors, key, "must be a non-empty string")
            return None
    if flat is not None and nested_id is not None and flat != nested_id:
        add_error(errors, f"{name}_id", f"does not match {name}.id")
        return None
    found = flat if flat is not None else nested_id
    return found if isinstance(found, str) else None


# ------------------------------------------------------------------------------ wire form


def wire(value: Any) -> Any:
    """A record as the API sends it: keys without a value are left out, because the spec's
    OpenAPI 3.1 string fields do not allow null (Prism's response validation holds us to it)."""
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value
