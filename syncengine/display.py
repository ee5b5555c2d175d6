"""How records and amounts are shown to people: in dry runs, messages and reports."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from syncengine.model import Record


def format_cents(cents: int, symbol: str = "$") -> str:
    """Integer cents as currency for people: 123450 -> ``$1,234.50``."""
    sign = "-" if cents < 0 else ""
    units, fraction = divmod(abs(cents), 100)
    return f"{sign}{symbol}{units:,}.{fraction:02d}"


DAY_ZONE: ContextVar[str] = ContextVar("day_zone", default="UTC")
"""The time zone the days in labels are shown in: the pipeline's (``Config.day_zone``), so
that a payment made at 9 pm in Chicago is "on" the day its row in the books shows."""


@contextmanager
def days_in(zone: str) -> Iterator[None]:
    """Show the days of labels made inside in ``zone``."""
    token = DAY_ZONE.set(zone)
    try:
        yield
    finally:
        DAY_ZONE.reset(token)


def day_of(value: Any) -> str:
    """The day of a stored date or time, as a person of the pipeline reads it: an instant
    (``2025-02-06T03:00:00Z``) in ``DAY_ZONE``, a plain date as it is."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str) and "T" in value:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return value[:10]
    else:
        return str(value or "")[:10]
    if moment.tzinfo is None:
        return moment.date().isoformat()
    zone = DAY_ZONE.get()
    if zone != "UTC":
        moment = moment.astimezone(ZoneInfo(zone))
    return moment.date().isoformat()


def label_of(record: Record | None, fallback: str) -> str:
    """A human name for a record in messages: name and email where known."""
    if not record:
        return fallback
    if record.get("invoice_number"):
        return f"invoice {record['invoice_number']}"
    if "unit_price" in record and "quantity" in record:  # a line item
        return _line_label(record, fallback)
    if "amount" in record and "first_name" not in record:
        amount = record.get("amount")
        money = format_cents(amount) if isinstance(amount, int) else "?"
        when = day_of(record.get("paid_at") or record.get("scheduled_start"))
        return f"{money}{' on ' + when if when else ''} ({fallback})"
    name = " ".join(str(record[k]) for k in ("first_name", "last_name") if record.get(k))
    name = name or str(record.get("company") or "")
    email = record.get("email")
    if name and email:
        return f"{name} <{email}>"
    return name or str(email or fallback)


def _line_label(record: Record, fallback: str) -> str:
    """``line "Labor" x 1.5, $150.00``: what the line sold, how many and for how much."""
    name = str(record.get("name") or "").strip()
    shown = f'line "{name}"' if name else f"line {fallback}"
    quantity = record.get("quantity")
    if quantity not in (None, ""):
        shown += f" x {quantity}"
    amount = record.get("amount")
    if isinstance(amount, int):
        shown += f", {format_cents(amount)}"
    return shown


def with_article(noun: str) -> str:
    """``noun`` with its indefinite article: an invoice, a payment."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 conflict``, ``2 conflicts``; ``plural_form`` for irregular words."""
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {word}"


def ago(when: dt.datetime, now: dt.datetime) -> str:
    """How far ``when`` is from ``now`` for people: ``just now``, ``3 min ago``,
    ``in 2 h 5 min``, ``4 days ago``. Both must be aware datetimes."""
    seconds = (now - when).total_seconds()
    future = seconds < 0
    left = round(abs(seconds))
    if left < 45:
        return "just now" if not future else "in a few seconds"
    minutes = round(left / 60)
    if minutes < 60:
        span = f"{minutes} min"
    elif minutes < 48 * 60:
        hours, rest = divmod(minutes, 60)
        span = f"{hours} h" + (f" {rest} min" if rest and hours < 10 else "")
    else:
        span = plural(round(minutes / (24 * 60)), "day")
    return f"in {span}" if future else f"{span} ago"


def local_time(
    when: dt.datetime | str | None,
    now: dt.datetime | None = None,
    tz: dt.tzinfo | None = None,
) -> str:
    """A time for people: in the machine's local time zone (or ``tz``), to the minute, with
    how long ago (or how soon) it is: ``2026-12-03 14:05 (3 min ago)``. ISO text is parsed;
    a naive time is taken as UTC (the state store keeps UTC); None gives ``-``."""
    if when is None:
        return "-"
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    shown = when.astimezone(tz) if tz is not None else when.astimezone()
    return f"{shown:%Y-%m-%d %H:%M} ({ago(when, now)})"


def member_changes(counts: Mapping[str, Any]) -> list[tuple[str, int]]:
    """One member's counts as (label, number) for people, in a fixed order. ``update``
    counts every update write; those that only write a Sync ID (``link``) are shown apart."""
    link = int(counts.get("link", 0) or 0)
    return [
        ("created", int(counts.get("create", 0) or 0)),
        ("updated", int(counts.get("update", 0) or 0) - link),
        ("linked", link),
        ("deleted", int(counts.get("delete", 0) or 0)),
    ]


TALLIES = (
    (
        "matched",
        "record found on several members, linked",
        "records found on several members, linked",
    ),
    ("conflicts", "conflict parked", "conflicts parked"),
    ("conflicts_settled", "conflict settled by rule", "conflicts settled by rule"),
    ("errors", "error", "errors"),
    ("failed", "write failed", "writes failed"),
    ("skipped", "write skipped", "writes skipped"),
)
"""An entity's counts besides the writes: (key in its counts, one, many), in the order
people read them."""


def entity_changes(counts: Mapping[str, Any]) -> str:
    """An entity's counts from a run (its JSON or run-history form) as labelled text:
    ``hcp updated 2; books created 5, linked 10; 1 conflict parked`` or ``no changes``."""
    parts = []
    for member, c in counts.items():
        if isinstance(c, Mapping) and "create" in c:
            done = [f"{label} {n}" for label, n in member_changes(c) if n]
            if done:
                parts.append(f"{member} {', '.join(done)}")
    for key, one, many in TALLIES:
        n = counts.get(key)
        if isinstance(n, int) and n:
            parts.append(plural(n, one, many))
    return "; ".join(parts) or "no changes"
