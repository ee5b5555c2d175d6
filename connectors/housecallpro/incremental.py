"""Incremental reads of Housecall Pro: only the records changed since the last pass, with
complete passes between (``Connector.read_incremental``; option ``incremental``).

HCP's lists have no "modified since" filter. They sort, though: a list read with
``sort_by=updated_at&sort_direction=desc`` shows the records changed most recently first.
A **partial pass** reads such a list page by page until it is past its mark:

- it keeps the records whose ``updated_at`` is at or after the mark (several records may
  share a timestamp: those equal to the mark are listed again by every pass, which costs
  nothing; a skip would lose a change), and stops after the first page whose last record is
  older than the mark. The next page is requested only once the page before asked for it, so
  a quiet period costs exactly one request, however long the list;
- the new mark is the newest ``updated_at`` of its first page: everything changed after that
  page was read is stamped at or after it (the server's clock goes forward), so the next pass
  lists it, whatever happened to it during this one.

Pages shift while a pass reads them. Newest first, a record that is created or changed
during the pass moves to the head of the list, which pushes the records behind it one place
later: a record may be listed twice (harmless: the pager yields it once), never skipped. The
moved record itself may be missed by this pass, but it is stamped after the new mark and the
next pass lists it. Only a delete moves records the other way, onto a page already read; and
since every insert lands at the head, a record can only move earlier if the list got
shorter. So a pass that saw the list's total shrink keeps the old mark (its records still
count; the next pass reads from where this one started).

A **complete pass** is the connector's normal ``read`` (oldest first, where deletes are
seen), made when there is no readable token, when the last complete pass is
``full_every_hours`` old, or when the entity cannot be read partially. Its mark is not the
newest ``updated_at`` it saw (a record it read early and that changed while it read on could
be older than that): it is the newest one the list shows *before* the pass, asked for with
one request (the first page, newest first).

The entity cannot be read partially when its records carry no ``updated_at`` (the live
API's invoices), or when the API does not sort them by it (a newest-first page out of
order). The token then says why (``Mark.no_mark``); the reason is logged once, and every
pass is complete, as without the option. Records without ``updated_at`` show in any pass;
once a complete pass finds all of them stamped, the pass after it looks for a mark again.
An unsorted list is never trusted again by the same token.

**Payments** are nested in invoices (or read per invoice), so they follow the invoices pass
of the same connector instance: partial over the invoices it listed when it was partial,
complete otherwise. A payment changes its invoice (its balance, its status), which moves the
invoice's ``updated_at``. The payments token holds the invoices' new mark: a payments pass is
partial only when its own mark is not older than the one the invoices pass started from (a
payments pass that failed to commit would otherwise lose the payments of invoices the
invoices pass no longer lists).
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from syncengine.connector import NativeRecord, ReadPass
from syncengine.connectors.housecallpro.billing import INVOICES, PAYMENTS
from syncengine.connectors.housecallpro.jobs import JOBS, job_record
from syncengine.connectors.housecallpro.paging import Item, Tally
from syncengine.incremental import (
    HighWater,
    Mark,
    Since,
    decode_token,
    encode_token,
    full_pass_due,
    moment,
    newer,
)

if TYPE_CHECKING:
    from syncengine.connectors.housecallpro.connector import HousecallProConnector

log = structlog.get_logger("syncengine.connectors.housecallpro")

CUSTOMERS = "customers"
LISTS = {CUSTOMERS: "/customers", JOBS: "/jobs", INVOICES: "/invoices"}
"""The entities that can be read incrementally, and their lists (the key is the entity)."""
NEWEST_FIRST = (("sort_by", "updated_at"), ("sort_direction", "desc"))
UPDATED_AT = "updated_at"
UNSTAMPED = "unstamped"
UNSORTED = "unsorted"
_WHY = {
    UNSTAMPED: "they carry no updated_at",
    UNSORTED: "the API does not list them sorted by updated_at (it seems to ignore "
    "sort_by=updated_at); remove them from the option incremental",
}


def check_entities(names: list[str]) -> list[str]:
    """The option ``incremental``: each name an entity with a list of its own (payments are
    read with invoices and follow their passes). ValueError names the allowed values."""
    allowed = ", ".join(LISTS)
    for name in names:
        if name == PAYMENTS:
            raise ValueError(
                f"{name!r} cannot be listed: payments follow the invoices' passes (list "
                f"invoices); allowed: {allowed}"
            )
        if name not in LISTS:
            raise ValueError(f"unknown entity {name!r}; allowed: {allowed}")
    return names


@dataclass(frozen=True)
class _InvoicesPass:
    """What an invoices pass of this instance did, for the payments pass after it."""

    partial: bool
    start: Since | None
    """The mark a partial pass started from (it listed every invoice stamped from then on)."""
    water: Since | None
    """The mark it left."""


class IncrementalReads:
    """The incremental reads of one connector instance (see the module docstring)."""

    def __init__(
        self, connector: HousecallProConnector, clock: Callable[[], float] = time.time
    ) -> None:
        self.connector = connector
        self.clock = clock
        self.entities = frozenset(connector.opts.incremental)
        self.every_hours = connector.opts.full_every_hours
        self._invoices: _InvoicesPass | None = None
        self._told: set[tuple[str, str]] = set()

    def read(self, entity: str, token: str | None) -> ReadPass | None:
        """The pass of ``entity`` from ``token``, or None when the option ``incremental``
        does not list it (payments: when it does not list invoices). Decides whether the pass
        is complete (no usable mark, a complete pass due, an entity that cannot be read
        partially) or partial."""
        if entity == PAYMENTS:
            return self._payments(token) if INVOICES in self.entities else None
        if entity not in self.entities:
            return None
        if entity == INVOICES:
            self._invoices = None  # until this pass is done
        mark = decode_token(token)
        started = self.clock()
        if full_pass_due(mark, started, self.every_hours) or moment(mark.since) is None:
            return self._complete(entity, mark, started)
        return self._partial(entity, mark)

    # -- passes

    def _complete(self, entity: str, mark: Mark, started: float) -> ReadPass:
        """The connector's whole listing; its mark asked for first (unless the token says
        none can be had), and the records looked at for ``updated_at`` on the way."""
        found = _Found(why=mark.no_mark)

        def records() -> Iterator[NativeRecord]:
            if not found.why:
                found.newest, found.why = NewestFirst(self.connector, entity, None).newest()
            for record in self.connector.read(entity):
                if moment(record.data.get(UPDATED_AT)) is None:
                    found.unstamped = True
                yield record

        def finish() -> str:
            if found.unstamped:
                why = UNSTAMPED
            elif found.why == UNSORTED:
                why = UNSORTED  # sticky: the order was wrong, whatever the records show
            else:
                why = ""  # stamped now; after a reason, the next pass asks for a mark again
            since = None if why or found.why else found.newest
            self._tell(entity, why, mark.no_mark)
            if entity == INVOICES:
                self._invoices = _InvoicesPass(partial=False, start=None, water=since)
            return encode_token(Mark(since, started, why))

        return ReadPass(records(), complete=True, finish=finish)

    def _partial(self, entity: str, mark: Mark) -> ReadPass:
        """The records changed since the mark, newest first; the token keeps the old mark when
        the list shrank, and gives up the mark when a page showed it cannot be kept."""
        listing = NewestFirst(self.connector, entity, mark.since)

        def finish() -> str:
            if listing.why:
                self._tell(entity, listing.why, mark.no_mark)
                left = Mark(None, mark.full_at, listing.why)
            elif listing.tally.shrank:
                log.info(
                    "list shrank during a partial pass: the read mark stays",
                    connector=self.connector.name,
                    entity=entity,
                )
                left = mark
            else:
                water = HighWater(mark.since)
                water.see(listing.top)
                left = Mark(water.value, mark.full_at)
            if entity == INVOICES:
                self._invoices = _InvoicesPass(partial=True, start=mark.since, water=left.since)
            return encode_token(left)

        return ReadPass(self._records(entity, listing.items()), complete=False, finish=finish)

    def _payments(self, token: str | None) -> ReadPass:
        """Partial over the invoices of this instance's partial invoices pass when the
        payments' own mark is covered by it (see the module docstring), else complete."""
        mark = decode_token(token)
        started = self.clock()
        invoices, self._invoices = self._invoices, None
        water = invoices.water if invoices is not None else None
        billing = self.connector.billing
        if (
            invoices is not None
            and invoices.partial
            and invoices.start is not None
            and billing.last_read_partial
            and not full_pass_due(mark, started, self.every_hours)
            and mark.since is not None
            and not newer(invoices.start, mark.since)
        ):
            left = Mark(water, mark.full_at)
            records = billing.read_payments(partial=True)
            return ReadPass(records, complete=False, finish=lambda: encode_token(left))
        done = Mark(water, started)
        return ReadPass(billing.read_payments(), complete=True, finish=lambda: encode_token(done))

    # -- helpers

    def _records(self, entity: str, items: Iterable[Item]) -> Iterator[NativeRecord]:
        """The native records of a partial pass's items, learnt as ``read`` learns them."""
        connector = self.connector
        if entity == INVOICES:
            yield from connector.billing.read_invoices(items)
            return
        for item in items:
            record_id = str(item["id"])
            if entity == JOBS:
                record = job_record(item, record_id)
                connector.job_customers.learn(record)
                yield record
            else:
                yield NativeRecord(id=record_id, data=item, location=f"customer {record_id}")

    def _tell(self, entity: str, why: str, before: str) -> None:
        """Log, once per instance and only when the token did not say so already, why an
        entity is read completely each time."""
        if not why or why == before or (entity, why) in self._told:
            return
        self._told.add((entity, why))
        say = log.warning if why == UNSORTED else log.info
        say(
            f"{entity} are read completely each time: {_WHY[why]}",
            connector=self.connector.name,
            entity=entity,
        )


@dataclass
class _Found:
    """What a complete pass found: the mark asked for, and why none can be kept."""

    why: str = ""
    newest: str | None = None
    unstamped: bool = False


class NewestFirst:
    """One listing newest first, down to a mark (``since``), or only its first page (no
    ``since``: the mark a complete pass asks for). Filled while it is read: the newest
    ``updated_at`` of page 1, why no mark can be kept if a page showed it, the totals."""

    def __init__(self, connector: HousecallProConnector, entity: str, since: Since | None) -> None:
        self.connector = connector
        self.entity = entity
        self.since = moment(since) if since is not None else None
        self.top: str | None = None
        self.why = ""
        """UNSTAMPED or UNSORTED once a page showed it: from then on a partial pass reads the
        rest of the list whole (nothing may be skipped), and keeps no mark."""
        self.tally = Tally()
        self.at_top: frozenset[str] = frozenset()
        """The ids of the first page's records stamped ``top``."""
        self._last: dt.datetime | None = None

    def newest(self) -> tuple[str | None, str]:
        """Only the first page read (no ``since``): its newest ``updated_at`` (None for an
        empty list, or when a reason why no mark can be kept showed), and that reason."""
        for _item in self.items():
            pass
        return self.top, self.why

    def items(self) -> Iterator[Item]:
        """The items at or after the mark (every item, once ``why`` is set); none without a
        mark (``newest``)."""
        path = LISTS[self.entity]
        pager = self.connector.pager
        listing = pager.items(
            path,
            self.entity,
            self.entity,
            NEWEST_FIRST,
            guard_shrink=False,
            more=self._more,
            tally=self.tally,
        )
        for item in listing:
            if self.since is None:
                continue
            if self.why or _at_or_after(item, self.since):
                yield item

    def _more(self, items: list[Item]) -> bool:
        """Whether the list is wanted past this page (decided before its items are
        yielded): not for the mark alone; on until the end once the order cannot be
        trusted; else while the page's last record is not older than the mark."""
        if self.why:
            return True
        stamps = [moment(item.get(UPDATED_AT)) for item in items]
        order = [self._last, *stamps] if self._last is not None else stamps
        if any(stamp is None for stamp in stamps):
            self.why = UNSTAMPED
        elif any(_later(b, a) for a, b in itertools.pairwise(order)):
            self.why = UNSORTED
        if self.why:
            return self.since is not None
        if self.top is None:
            self.top = str(items[0][UPDATED_AT])
            self.at_top = frozenset(
                str(item.get("id")) for item in items if str(item.get(UPDATED_AT)) == self.top
            )
        self._last = stamps[-1]
        return self.since is not None and self._last is not None and self._last >= self.since


def _at_or_after(item: Item, since: dt.datetime) -> bool:
    at = moment(item.get(UPDATED_AT))
    return at is None or at >= since


def _later(a: Any, b: Any) -> bool:
    return isinstance(a, dt.datetime) and isinstance(b, dt.datetime) and a > b
