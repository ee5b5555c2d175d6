"""Read marks as connectors keep them: the token of an incremental read, whatever the API.

The engine stores a connector's token opaquely (``Connector.read_incremental``,
``syncengine.marks``); what is inside is the connector's business. The connectors that read
"what changed since" by an update time (the generic REST connector through the API's
updated-since filter, Housecall Pro by paging a list newest first) keep the same things in
it, defined here once:

- the high-water mark (``Mark.since``): the update time, as the server writes it, from which
  the next partial pass lists records (``HighWater`` keeps the newest of those seen);
- when the last complete pass started (``Mark.full_at``, by the connector's clock), so that
  a complete pass, the only kind that sees deletes, is made at least every so many hours
  (``full_pass_due``);
- why no mark could be kept, when one was wanted (``Mark.no_mark``): the records carry no
  update time, say. A connector then reads completely without looking for a mark again
  until its records show one.

A token that is absent, unreadable or of another version decodes to an empty ``Mark``: the
safe reading of anything unexpected is a complete pass, never an error.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, TypeAlias

from syncengine.model import parse_datetime

__all__ = [
    "TOKEN_VERSION",
    "HighWater",
    "Mark",
    "Since",
    "decode_token",
    "encode_token",
    "full_pass_due",
    "mark_param",
    "moment",
    "newer",
]

TOKEN_VERSION = 1

Since: TypeAlias = str | int | float
"""A high-water mark as the server wrote it: ISO 8601 text, or an epoch number."""


@dataclass(frozen=True)
class Mark:
    """What the last successful pass left: the high-water mark and when the last full pass
    started (seconds since the epoch, by the connector's clock)."""

    since: Since | None = None
    full_at: float | None = None
    no_mark: str = ""
    """Why the last pass kept no high-water mark although the connector wanted one (a word
    the connector chose, such as ``unstamped``), or "" (a mark was kept, or there was
    nothing to keep it from)."""


def encode_token(mark: Mark) -> str:
    """The token text of ``mark`` (``no_mark`` only when set, so that tokens of connectors
    that never set it stay as they were)."""
    data: dict[str, Any] = {"v": TOKEN_VERSION, "since": mark.since, "full_at": mark.full_at}
    if mark.no_mark:
        data["no_mark"] = mark.no_mark
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


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
    no_mark = data.get("no_mark", "")
    if isinstance(since, bool) or not isinstance(since, str | int | float | type(None)):
        return Mark()
    if isinstance(full_at, bool) or not isinstance(full_at, int | float | type(None)):
        return Mark()
    if not isinstance(no_mark, str):
        return Mark()
    return Mark(since, float(full_at) if full_at is not None else None, no_mark)


def full_pass_due(mark: Mark, now: float, every_hours: float) -> bool:
    """Whether a pass starting at ``now`` (the connector's clock) must be complete: there is
    no high-water mark or no complete pass on record, the last complete pass started
    ``every_hours`` ago or more, or the clock went back since (nothing in the token is
    trusted then)."""
    return (
        mark.since is None
        or mark.full_at is None
        or now - mark.full_at >= every_hours * 3600
        or now < mark.full_at
    )


def moment(value: Any) -> dt.datetime | None:
    """The date-time of ISO 8601 text (timezone-aware; naive text is UTC), or None for
    anything else (numbers, blank or unreadable text)."""
    if not isinstance(value, str):
        return None
    try:
        return parse_datetime(value)
    except ValueError:
        return None


def newer(a: Since, b: Since) -> bool:
    """Whether the update value ``a`` is later than ``b``: as numbers when both are numbers
    (epoch times), as date-times when both parse as ISO 8601, else as text."""
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a > b
    ma, mb = moment(a), moment(b)
    if ma is not None and mb is not None:
        return ma > mb
    return str(a) > str(b)


class HighWater:
    """The newest update value among those seen (compared by ``newer``); values that are
    not text or numbers, and blank text, are not update values and are passed over."""

    def __init__(self, start: Since | None = None) -> None:
        self.value: Since | None = start

    def see(self, value: Any) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            return
        if isinstance(value, str) and not value.strip():
            return
        if self.value is None or newer(value, self.value):
            self.value = value


def mark_param(since: Since, overlap_seconds: float) -> Since:
    """The value to send to an updated-since filter: the mark less the overlap, in the mark's
    own form (ISO 8601 text stays text, ending in ``Z``; an epoch number stays a number).
    Text that is not a date-time is sent as it is."""
    if overlap_seconds <= 0:
        return since
    if isinstance(since, int | float):
        number = since - overlap_seconds
        return int(number) if isinstance(since, int) else number
    at = moment(since)
    if at is None:
        return since
    earlier = (at - dt.timedelta(seconds=overlap_seconds)).astimezone(dt.UTC)
    text: str = earlier.isoformat(timespec="microseconds" if earlier.microsecond else "seconds")
    return text.replace("+00:00", "Z")
