"""An event-driven read of Housecall Pro: the records that webhook events name, and nothing
else (``Connector.read_events``; ``syncengine.events``).

For each record the events of one run name (the newest event about it decides):

- the payload's record when it is **whole** (it carries the keys a listing gives, see
  ``WHOLE``) and **fresh** (the event occurred at most ``FRESH_S`` before the run): no
  request at all;
- else one ``GET`` by id (a partial payload, or an old event: a retried delivery may carry a
  record that changed again since);
- an event that says the record was deleted is confirmed with a ``GET``: a 404 puts it in the
  pass's ``gone``; a record still there is read as it is.

Payments have no events of their own: an invoice event (``invoice.payment.succeeded``) names
the invoice, and its payments are those nested in it (the payload's, or the invoice read by
id), else read with ``GET /invoices/{id}/payments``.

An invoice without ``customer_id`` (the live API's) gets it from its job with ``GET
/jobs/{id}``, never by listing every job. A stale payload is the one risk left: if one got
past the freshness check, the record the member holds differs from what the run saw, and
the next scheduled pass, which reads the member itself, sees it changed and syncs it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from syncengine.connector import NativeRecord, ReadPass
from syncengine.connectors.housecallpro.billing import INVOICES, PAYMENTS
from syncengine.connectors.housecallpro.jobs import JOBS, job_record
from syncengine.errors import NotFoundError
from syncengine.events import DERIVED, InboxEvent
from syncengine.model import parse_datetime

if TYPE_CHECKING:
    from syncengine.connectors.housecallpro.connector import HousecallProConnector

CUSTOMERS = "customers"
PREFIX = {CUSTOMERS: "customer", JOBS: "job", INVOICES: "invoice", PAYMENTS: "invoice"}
"""The payload key an entity's record sits under."""
WHOLE: Mapping[str, frozenset[str]] = {
    CUSTOMERS: frozenset({"id", "created_at", "updated_at"}),
    JOBS: frozenset({"id", "customer", "work_status", "schedule", "total_amount"}),
    INVOICES: frozenset({"id", "invoice_number", "status", "amount", "job_id"}),
}
"""Keys a payload's record must carry to be taken as the whole record: those the API sends
with every record it renders, whatever the record holds (a customer without an e-mail has no
``email`` key, as in a GET; a fragment naming only the record has none of them)."""
FRESH_S = 300.0
"""A payload older than this is not trusted to be the record's current state."""


class EventRead:
    """The event-driven reads of one connector instance (an invoices pass keeps what the
    payments pass after it needs)."""

    def __init__(
        self, connector: HousecallProConnector, clock: Callable[[], float] = time.time
    ) -> None:
        self.connector = connector
        self.clock = clock
        self._invoices: dict[str, dict[str, Any]] = {}
        """Invoice id -> the invoice item last read by an invoices pass (with its payments)."""

    def read(self, entity: str, events: Sequence[InboxEvent]) -> ReadPass:
        """A partial pass of the records of ``entity`` that ``events`` name."""
        gone: set[str] = set()
        records = self._records(entity, events, gone)
        return ReadPass(records, complete=False, finish=lambda: None, gone=lambda: gone, named=True)

    def _records(
        self, entity: str, events: Sequence[InboxEvent], gone: set[str]
    ) -> Iterator[NativeRecord]:
        newest = _newest_by_record(events, entity)
        if entity == PAYMENTS:
            for invoice_id, event in newest.items():
                yield from self._payments(invoice_id, event)
            return
        for record_id, event in newest.items():
            item = self._item(entity, record_id, event)
            if item is None:
                if event.event.endswith(".deleted"):
                    gone.add(record_id)
                continue
            yield self._record(entity, item)

    def _item(self, entity: str, record_id: str, event: InboxEvent) -> dict[str, Any] | None:
        """The record an event names: its payload's when whole and fresh (and not a delete),
        else by id (None: the member does not have it)."""
        payload = _payload_record(event, PREFIX[entity])
        if (
            payload is not None
            and not event.event.endswith(".deleted")
            and WHOLE[entity] <= payload.keys()
            and self._fresh(event)
        ):
            return payload
        try:
            return self._get(entity, record_id)
        except NotFoundError:
            return None

    def _fresh(self, event: InboxEvent) -> bool:
        when = event.received_at
        if event.occurred_at:
            with contextlib.suppress(ValueError):
                occurred = parse_datetime(event.occurred_at)
                when = occurred.timestamp() if occurred is not None else when
        return self.clock() - when <= FRESH_S

    def _get(self, entity: str, record_id: str) -> dict[str, Any] | None:
        body = self.connector.http.get_json(self.connector._path(entity, record_id))
        return body if isinstance(body, dict) and str(body.get("id")) == record_id else None

    def _record(self, entity: str, item: dict[str, Any]) -> NativeRecord:
        record_id = str(item["id"])
        if entity == JOBS:
            record = job_record(item, record_id)
            self.connector.job_customers.learn(record)
            return record
        if entity == INVOICES:
            self._invoices[record_id] = item
            job_id = item.get("job_id")
            if not isinstance(item.get("customer_id"), str) and isinstance(job_id, str):
                self.connector.job_customers.fetch(job_id)
            return self.connector.billing.invoice_record(item)[0]
        return NativeRecord(id=record_id, data=item, location=f"customer {record_id}")

    def _payments(self, invoice_id: str, event: InboxEvent) -> Iterator[NativeRecord]:
        item = self._invoices.get(invoice_id)
        if item is None:
            item = self._item(INVOICES, invoice_id, event)
        if item is None:
            return
        yield from self.connector.billing.payments_of(item)


def _payload_record(event: InboxEvent, prefix: str) -> dict[str, Any] | None:
    record = event.payload.get(prefix)
    return dict(record) if isinstance(record, dict) and record.get("id") is not None else None


def _newest_by_record(events: Sequence[InboxEvent], entity: str) -> dict[str, InboxEvent]:
    """Record id -> the last event received about it (events about other kinds of records,
    or naming none, are left out; the engine's stand-ins for records of ``entity`` the run's
    own writes changed, ``DERIVED``, are about it)."""
    prefix = PREFIX.get(entity, "")
    newest: dict[str, InboxEvent] = {}
    for event in events:
        ours = event.event == DERIVED and entity in event.entities
        if not (ours or event.event.split(".", 1)[0] == prefix) or not event.record_id:
            continue
        newest.pop(event.record_id, None)  # keeps the order of the newest events
        newest[event.record_id] = event
    return newest
