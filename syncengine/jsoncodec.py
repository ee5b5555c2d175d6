"""JSON for the state store and the native hash: orjson where it gives what the standard
library gives, the standard library where it does not.

orjson encodes a record several times faster than ``json``, which matters on every record of
every read (the native hash) and every write (bases, last-seen versions, intents). It differs
in three ways, and a value that meets one of them goes through ``json`` instead, so that
nothing is stored or compared differently from before:

- it refuses integers beyond 64 bits, and reads them back as floats;
- it writes NaN and infinities as ``null`` (``json`` writes ``NaN``, ``Infinity``), and cannot
  read those back.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["dumpb", "dumps", "dumps_sorted", "loads"]

_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TWENTY, _MINUS_NINETEEN = b"0" * 20, b"-" + b"0" * 19


def _may_hold_long_integer(text: str | bytes | bytearray) -> bool:
    """Twenty digits in a row, or a minus and nineteen: maybe an integer outside what orjson
    reads as one (-2**63 to 2**64 - 1), which it would read as a float (a string holding them
    just takes the slower way). Every ASCII digit of its UTF-8 bytes is counted as a 0 and the
    bytes searched twice (no other byte of UTF-8 is an ASCII digit): a regular expression
    walked it digit by digit, ten times orjson's own time for a record (every invoice's
    nested payments of every read, every state column loaded), and ``str.translate`` is as
    slow once a text holds a character that is not ASCII."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    zeros = text.translate(_AS_ZERO)
    return _TWENTY in zeros or _MINUS_NINETEEN in zeros


def dumps(value: Any) -> str:
    """Compact UTF-8 JSON of ``value`` (the state store's columns)."""
    try:
        return dumpb(value).decode()
    except UnicodeEncodeError:  # a lone surrogate: text, which UTF-8 cannot hold
        return _standard(value)


def dumpb(value: Any) -> bytes:
    """``dumps``, as UTF-8 bytes (a text holding a lone surrogate, which UTF-8 cannot hold,
    raises ``UnicodeEncodeError``)."""
    try:
        blob = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an integer beyond 64 bits
        blob = b""
    # orjson writes NaN and infinities as null: only a text holding null needs a look
    if not blob or (b"null" in blob and not _finite(value)):
        return _standard(value).encode()
    return blob


def _standard(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_sorted(value: Any, default: Callable[[Any], Any] = str) -> bytes:
    """JSON of ``value`` with sorted keys, for hashing (``default``: what a value JSON cannot
    hold counts as)."""
    try:
        blob = orjson.dumps(
            value, default=default, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
        )
    except TypeError:  # an integer beyond 64 bits
        blob = b""
    if not blob or (b"null" in blob and not _finite(value)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default).encode()
    return blob


def loads(text: str | bytes) -> Any:
    """The value of JSON text written by ``dumps`` (or by the standard library before it)."""
    if not _may_hold_long_integer(text):
        # UTF-8 bytes as they are: no text made of them first; what orjson refuses (NaN or
        # Infinity, as the standard library writes them) is read below
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(text)
    return json.loads(text.decode() if isinstance(text, bytes | bytearray) else text)


def _finite(value: Any) -> bool:
    """Whether ``value`` holds no NaN or infinity, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
    return True
