"""Comparing values the way Housecall Pro may reformat them (crash-recovery lookups)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def instant(value: Any) -> dt.datetime | None:
    """The moment an ISO 8601 timestamp names (UTC when it has no zone), or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def same_instant(a: Any, b: Any) -> bool:
    """Equal timestamps (``...Z`` and ``...+00:00`` agree); unparseable ones compare as
    they are."""
    first, second = instant(a), instant(b)
    if first is None or second is None:
        return bool(a == b)
    return first == second


def same_value(key: str, wanted: Any, actual: Any) -> bool:
    """``actual`` holds ``wanted``: timestamps (``*_at``) by instant, text stripped,
    booleans by identity (``True`` is not ``1``)."""
    if key.endswith("_at"):
        return instant(wanted) is not None and same_instant(wanted, actual)
    if isinstance(wanted, str) and isinstance(actual, str):
        return wanted.strip() == actual.strip()
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return wanted is actual
    return bool(wanted == actual)
