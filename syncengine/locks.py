"""Closed periods: which writes a member's lock date refuses, as a pure rule.

A pipeline may close a member's books up to a day::

    [pipelines.locks]
    books = "2026-10-01"

From then on no write to ``books`` creates, changes or deletes an invoice or a payment dated
before 2026-10-01. The other members are not affected: what they are written, and what the
hub agrees on, stays as it would be without the lock. The refused write is a *skipped* write
(``syncengine.engine``'s glossary) with the reason ``period closed on books``: reported once,
listed by ``syncengine status``, and checked again on every run (its link stays dirty) so that
it goes through once the period is opened again, never before.

Which date counts
-----------------
- an invoice: its own date, ``created_at`` (the day it was issued: the books file it under
  that day; its due date moves nothing between periods);
- a payment: ``paid_at`` (a payment dated after the lock reaches the books even when its
  invoice is in the closed period: the invoice row itself stays as it was closed);
- line items, once they are synced: the date of their invoice.

The day is the one the locked member shows: a timestamp is turned into a day in the member's
time zone (its ``timezone`` option; UTC without one), so that a row whose date cell is before
the lock is closed, and one on or after it is open. A record without a date is in no period:
no lock holds it.

A record whose date moves across the lock
-----------------------------------------
A write is refused when the record is dated before the lock *either* as the member holds it
now *or* as the write would leave it. So a date edited (on another member) from before the
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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DATED_BY: dict[str, str] = {"invoices": "created_at", "payments": "paid_at"}
"""Entity -> the canonical field whose day puts a record in a period. Entities not listed here
(customers, jobs) have no period: no lock holds them."""


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
        dated = " or ".join(sorted(DATED_BY))
        day = self.opens.isoformat()
        zone = "" if self.zone == "UTC" else f", days in {self.zone}"
        return f"{self.member} closed before {day} (no write of {dated} dated before it{zone})"

    def closed(self, entity: str, record: Mapping[str, Any] | None) -> bool:
        """Whether ``record`` (canonical) of ``entity`` is dated before the lock."""
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
) -> bool:
    """Whether ``lock`` refuses a write to its member that turns the record it ``held`` into
    what it is ``wanted`` to hold (canonical records; ``held`` None: a create, ``wanted``
    None: a delete). Refused when either side is dated before the lock: nothing on the closed
    side is created, changed, deleted, moved out of it or moved into it."""
    return lock.closed(entity, held) or lock.closed(entity, wanted)


def dated(entity: str) -> bool:
    """Whether records of ``entity`` belong to a period (a lock may hold them)."""
    return entity in DATED_BY


def locks_for(locks: Mapping[str, Lock], entity: str) -> dict[str, Lock]:
    """The locks that may hold records of ``entity``: none for an entity without a period."""
    return dict(locks) if dated(entity) else {}
