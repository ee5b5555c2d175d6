"""Incremental reads: only the records updated since the last read, with full passes between.

The engine takes a record missing from ``read()`` as deleted, so a filtered listing must never
be presented as a full one. ``read()`` therefore always lists everything; the engine calls
``RestConnector.read_incremental(entity, token)`` (``Connector.read_incremental``) instead and
gets a ``syncengine.connector.ReadPass`` (re-exported here): the records, whether they are the
complete listing, and (once they are exhausted) the token to store *after* it committed what
it read. The token is opaque to the engine; it holds the high-water mark (the newest update
time seen, as the server writes it) and when the last full pass started, so that a full pass
is made at least every ``full_every_hours`` (deletes are only seen by full passes).

Nothing here is used unless ``incremental.enabled = true`` for the entity.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from syncengine.connector import ReadPass
from syncengine.model import parse_datetime

__all__ = ["HighWater", "Mark", "ReadPass", "decode_token", "encode_token", "mark_param"]

TOKEN_VERSION = 1


@dataclass(frozen=True)
class Mark:
    """What the last successful pass left: the high-water mark and when the last full pass
    started (seconds since the epoch, by the connector's clock)."""

    since: str | int | float | None = None
    full_at: float | None = None


def encode_token(mark: Mark) -> str:
    return json.dumps(
        {"v": TOKEN_VERSION, "since": mark.since, "full_at": mark.full_at},
        separators=(",", ":"),
        sort_keys=True,
    )


def decode_token(token: str | None) -> Mark:
    """The mark in a token; an absent, unreadable or foreign token means "no mark" (a full
    pass), never an error: the safe reading of anything unexpected is to read everything."""
    if not token:
        return Mark()
    try:
        data = json.loads(token)
    except ValueError:
        return Mark()
    if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION:
        return Mark()
    since = data.get("since")
    full_at = data.get("full_at")
    if isinstance(since, bool) or not isinstance(since, str | int | float | type(None)):
        return Mark()
    if isinstance(full_at, bool) or not isinstance(full_at, int | float | type(None)):
        return Mark()
    return Mark(since, float(full_at) if full_at is not None else None)


def _moment(value: Any) -> dt.datetime | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None
    try:
        return parse_datetime(value)
    except ValueError:
        return None


class HighWater:
    """The newest update value among those seen. Values compare as date-times when they parse
    as ISO 8601, as numbers when they are numbers (epoch times), else as text."""

    def __init__(self, start: str | int | float | None = None) -> None:
        self.value: str | int | float | None = start

    def see(self, value: Any) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            return
        if isinstance(value, str) and not value.strip():
            return
        if self.value is None or _newer(value, self.value):
            self.value = value


def _newer(a: str | int | float, b: str | int | float) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a > b
    ma, mb = _moment(a), _moment(b)
    if ma is not None and mb is not None:
        return ma > mb
    return str(a) > str(b)


def mark_param(since: str | int | float, overlap_seconds: float) -> str | int | float:
    """The value to send: the mark less the overlap, in the mark's own form (ISO 8601 text
    stays text, ending in ``Z``; an epoch number stays a number). Text that is not a
    date-time is sent as it is."""
    if overlap_seconds <= 0:
        return since
    if isinstance(since, int | float):
        number = since - overlap_seconds
        return int(number) if isinstance(since, int) else number
    moment = _moment(since)
    if moment is None:
        return since
    earlier = (moment - dt.timedelta(seconds=overlap_seconds)).astimezone(dt.UTC)
    text: str = earlier.isoformat(timespec="microseconds" if earlier.microsecond else "seconds")
    return text.replace("+00:00", "Z")
