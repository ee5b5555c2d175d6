"""Closed periods: which writes a member's lock date refuses, as a pure rule.

A pipeline may close a member's books up to a day::

    [pipelines.locks]
    books = "2026-10-01"

From then on no write to ``books`` creates, changes or deletes an invoice, a payment or a line
item dated before 2026-10-01. The other members are not affected: what they are written, and
what the hub agrees on, stays as it would be without the lock. The refused write is a *skipped*
write (``syncengine.engine``'s glossary) with the reason ``period closed on books``: reported
once, listed by ``syncengine status``, and checked again on every run (its link stays dirty)
so that it goes through once the period is opened again, never before.

Which date counts
-----------------
- an invoice: its own date, ``created_at`` (the day it was issued: the books file it under
  that day; its due date moves nothing between periods);
- a payment: ``paid_at`` (a payment dated after the lock reaches the books even when its
  invoice is in the closed period: the invoice row itself stays as it was closed);
- a line item: it has no date of its own, it takes its invoice's (``DATED_THROUGH``). The
  engine hands the rule the invoices the lines refer to (``Through``), each in the versions
  that count for the locked member: as the hub has it once this run's invoices are planned
  (an invoice new in this run, or moved across the lock, has its new date there) and as the
  member holds it. A line is closed when its invoice is closed in either: so the lines of an
  invoice the lock holds are held with it, whichever way its date moved.

The day is the one the locked member shows: a timestamp is turned into a day in the member's
time zone (its ``timezone`` option; UTC without one), so that a row whose date cell is before
the lock is closed, and one on or after it is open. A record without a date is in no period:
no lock holds it.

A record whose date moves across the lock
-----------------------------------------
A write is refused when the record is dated before the lock *either* as the member holds it
now *or* as the write would leave it (for a line: under the invoice it is on now, or the one
the write would move it to). So a date edited (on another member) from before the
lock to after it is refused: the closed period would lose the record. A date edited from after
the lock to before it is refused too: the closed period would gain one. A record created with
a date before the lock, or deleted while dated before it, is refused. Everything about a record
that stays on the open side goes through as usual.

The one write that passes is writing the Sync ID into a row typed without one (a *link*): it
changes no value the books hold, and without it the row could not be told apart from a new one.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DATED_BY: dict[str, str] = {"invoices": "created_at", "payments": "paid_at"}
"""Entity -> the canonical field whose day puts a record in a period. Entities not listed here
nor in ``DATED_THROUGH`` (customers, jobs) have no period: no lock holds them."""

DATED_THROUGH: dict[str, tuple[str, str]] = {"line_items": ("invoice", "invoices")}
"""Entity without a date of its own -> (its reference field, the dated entity it refers to):
a record of it is in the period of the record it refers to."""

Through = Mapping[str, Sequence[Mapping[str, Any] | None]]
"""For one locked member: hub key of a referred-to dated record (an invoice) -> the versions
of it that count (as the hub has it after this run's plan, as the member holds it; None where
there is none). A key not in it has no date: no lock holds the records referring to it."""


@dataclass(frozen=True)
class Lock:
    """A member's closed period: every day before ``opens`` is closed."""

    member: str
    opens: dt.date
    """The first open day: records dated before it are closed."""
    zone: str = "UTC"
    """The IANA time zone the member shows its days in."""

    @property
    def reason(self) -> str:
        """Why a write was skipped, as ``syncengine status`` lists it."""
        return f"period closed on {self.member}"

    def describe(self) -> str:
        """How ``validate`` shows the lock."""
        names = sorted(n.replace("_", " ") for n in (*DATED_BY, *DATED_THROUGH))
        dated = ", ".join(names[:-1]) + " or " + names[-1]
        day = self.opens.isoformat()
        zone = "" if self.zone == "UTC" else f", days in {self.zone}"
        return f"{self.member} closed before {day} (no write of {dated} dated before it{zone})"

    def closed(
        self, entity: str, record: Mapping[str, Any] | None, through: Through | None = None
    ) -> bool:
        """Whether ``record`` (canonical) of ``entity`` is dated before the lock. A record
        dated through another (a line, by its invoice) is closed when some version of that
        one in ``through`` is."""
        via = DATED_THROUGH.get(entity)
        if via is not None:
            ref, target = via
            key = record.get(ref) if record else None
            if not isinstance(key, str) or through is None:
                return False
            return any(self.closed(target, version) for version in through.get(key, ()))
        day = record_day(entity, record, self.zone)
        return day is not None and day < self.opens


def record_day(entity: str, record: Mapping[str, Any] | None, zone: str = "UTC") -> dt.date | None:
    """The day a canonical record is dated (``DATED_BY``) as a member in ``zone`` shows it;
    None when the entity has no period or the record no date (or one that is not a date)."""
    name = DATED_BY.get(entity)
    if name is None or not record:
        return None
    value = record.get(name)
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    elif isinstance(value, dt.date):
        return value
    elif isinstance(value, str) and value.strip():
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    else:
        return None
    return moment.astimezone(dt.UTC if zone == "UTC" else zoneinfo.ZoneInfo(zone)).date()


def refuses(
    lock: Lock,
    entity: str,
    held: Mapping[str, Any] | None,
    wanted: Mapping[str, Any] | None,
    through: Through | None = None,
) -> bool:
    """Whether ``lock`` refuses a write to its member that turns the record it ``held`` into
    what it is ``wanted`` to hold (canonical records; ``held`` None: a create, ``wanted``
    None: a delete). Refused when either side is dated before the lock: nothing on the closed
    side is created, changed, deleted, moved out of it or moved into it. A line is dated by
    the versions of its invoice ``through`` holds (the engine's ``Context.through``)."""
    return lock.closed(entity, held, through) or lock.closed(entity, wanted, through)


def dated(entity: str) -> bool:
    """Whether records of ``entity`` belong to a period (a lock may hold them)."""
    return entity in DATED_BY or entity in DATED_THROUGH


def dated_through(entity: str) -> tuple[str, str] | None:
    """(reference field, dated entity) for an entity dated through another (line items by
    their invoice); None for one dated by itself or not at all."""
    return DATED_THROUGH.get(entity)


def locks_for(locks: Mapping[str, Lock], entity: str) -> dict[str, Lock]:
    """The locks that may hold records of ``entity``: none for an entity without a period."""
    return dict(locks) if dated(entity) else {}
