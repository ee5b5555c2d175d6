"""Housecall Pro invoices and payments as the connector reads them (and creates invoices).

The API's two known invoice shapes give the same native records:

- the live API nests each invoice's payments, ``payments: [{id, status, payment_method,
  amount, note, paid_at, category}]``, and leaves out ``customer_id`` and ``updated_at``;
- the spec's ``Invoice`` has ``customer_id`` and no payments, which are read per invoice from
  ``GET /invoices/{id}/payments`` (the spec's ``Payment``: ``invoice_id``, ``processed_at``).

A native invoice is the invoice without its ``payments`` key, with ``customer_id`` filled in
from its job when the API left it out (``JobCustomers``). A native payment always carries
``invoice_id`` and ``processed_at`` (a nested payment's ``paid_at``). Statuses outside the
spec's enum (the live ``open``) pass through for the mapping to judge.

Requests are the minimum: when the invoices of a read carried their payments, the next
payments read of the same connector instance sends nothing (the payments were kept; a later
payments read lists the invoices again rather than serve old ones); otherwise it
sends one ``GET /invoices/{id}/payments`` per invoice (more only for an invoice with more
payments than a page holds), ``concurrency`` at a time, all through the client's rate limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from syncengine import jsoncodec
from syncengine.connector import NativeData, NativeRecord
from syncengine.connectors.housecallpro.jobs import JobInvoices
from syncengine.connectors.housecallpro.paging import Item, Pager
from syncengine.connectors.housecallpro.values import same_value
from syncengine.errors import NotFoundError
from syncengine.http import QueryScalar, array_params

INVOICES = "invoices"
PAYMENTS = "payments"
INVOICE_READ_ONLY = frozenset(
    {"id", "outstanding_balance", "due_amount", "created_at", "updated_at", "payments",
     "sent_at", "paid_at"}
)  # fmt: skip
"""Invoice keys the API owns: never sent when creating an invoice."""
_ORDER = {"sort_by": "created_at", "sort_direction": "asc"}
_FIND_KEYS = ("job_id", "customer_id", "amount", "due_at", "status")
"""What identifies an invoice that has no number."""
_WINDOW_PER_WORKER = 4
"""Per-invoice payment reads queued ahead of the one being yielded, per worker."""


@dataclass(frozen=True, slots=True)
class _Seen:
    """An invoice of a read: its id, how a person names it, its nested payments if any."""

    id: str
    label: str
    payments: str | None
    """Its nested payments as their JSON text (None: the API did not nest them). An invoices
    read keeps every invoice's until the payments read that follows; decoded, they were
    several times the size (about 150 MiB at 100,000 invoices, held through the invoices'
    planning and applying)."""

    @classmethod
    def of(cls, invoice_id: str, label: str, nested: Any) -> _Seen:
        """``nested``: what the invoice holds under ``payments`` (a list, or nothing)."""
        return cls(invoice_id, label, jsoncodec.dumps(nested) if isinstance(nested, list) else None)

    @property
    def nests(self) -> bool:
        return self.payments is not None

    def nested(self) -> list[Any]:
        """The nested payments as the API sent them (none when it did not nest them)."""
        return jsoncodec.loads(self.payments) if self.payments is not None else []


class Billing:
    """Invoices and payments of one connector instance (see the module docstring)."""

    def __init__(
        self, pager: Pager, *, concurrency: int, customer_of: Callable[[str], str | None]
    ) -> None:
        self.pager = pager
        self.http = pager.http
        self.concurrency = max(1, concurrency)
        self._customer_of = customer_of
        self._last_read: list[_Seen] | None = None
        """The invoices of the last invoice read, for the next payments read."""
        self.last_read_partial = False
        """Whether they are a partial pass's: only the invoices changed since its read mark."""
        self.job_invoices = JobInvoices()
        """Which invoice bills each job's line items (``line_items``), learnt on the way."""

    # -- invoices

    def read_invoices(self, listed: Iterable[Item] | None = None) -> Iterator[NativeRecord]:
        """Every invoice, oldest first, or only the invoices ``listed`` (a partial pass's,
        ``incremental``); remembers them (and their nested payments) for ``read_payments``."""
        seen: list[_Seen] = []
        for item in self._invoice_items() if listed is None else listed:
            record, nested = self.invoice_record(item)
            seen.append(_Seen.of(record.id, _label(record.data, record.id), nested))
            yield record
        self._last_read, self.last_read_partial = seen, listed is not None
        if listed is None:
            self.job_invoices.complete = True

    def know_every_invoice(self) -> None:
        """List every invoice for ``job_invoices`` only (no customers, no payments kept): a
        line items read that no complete invoices read of this instance came before."""
        self.job_invoices.wanted = True
        for item in self._invoice_items():
            self.job_invoices.learn(item)
        self.job_invoices.complete = True

    def get_invoice(self, invoice_id: str) -> NativeRecord:
        path = invoice_path(invoice_id)
        item = self.http.get_json(path)
        self.pager.item_id(item, INVOICES, f"GET {path}: the invoice")
        return self.invoice_record(item)[0]

    def find_invoices(self, data: Mapping[str, Any]) -> list[NativeRecord]:
        """Invoices that carry ``data``'s invoice number (or, without one, its job, customer,
        amount, due date and status), searched among the customer's invoices when ``data``
        names the customer."""
        params: list[tuple[str, QueryScalar]] = []
        customer_id = data.get("customer_id")
        if isinstance(customer_id, str) and customer_id:
            params = array_params("customer_uuid", [customer_id])
        number = data.get("invoice_number")
        if isinstance(number, str) and number.strip():
            wanted: dict[str, Any] = {"invoice_number": number.strip()}
        else:
            wanted = {k: data[k] for k in _FIND_KEYS if data.get(k) not in (None, "")}
        found = []
        for item in self._invoice_items(params):
            record, _nested = self.invoice_record(item)
            if all(same_value(k, v, record.data.get(k)) for k, v in wanted.items()):
                found.append(record)
        return found

    def create_invoice(self, data: Mapping[str, Any]) -> NativeRecord:
        """POST /invoices with the writable, non-null fields of ``data``; never retried (an
        unknown outcome is resolved through ``find_invoices``)."""
        body: NativeData = {
            k: v for k, v in data.items() if k not in INVOICE_READ_ONLY and v is not None
        }
        response = self.http.request("POST", "/invoices", json=body, retry=False)
        created = self.http.decode("POST", "/invoices", response)
        self.pager.item_id(created, INVOICES, "POST /invoices: the invoice in the response")
        return self.invoice_record(created)[0]

    def invoice_record(self, item: Item) -> tuple[NativeRecord, list[Any] | None]:
        """The native invoice, and its nested payments (None when the API did not nest
        them)."""
        data = dict(item)
        nested = data.pop(PAYMENTS, None)
        self.job_invoices.learn(data)
        if not isinstance(data.get("customer_id"), str):
            job_id = data.get("job_id")
            customer_id = self._customer_of(job_id) if isinstance(job_id, str) and job_id else None
            if customer_id is not None:
                data["customer_id"] = customer_id
        invoice_id = str(data["id"])
        record = NativeRecord(
            id=invoice_id, data=data, location=f"invoice {_label(data, invoice_id)}"
        )
        return record, nested if isinstance(nested, list) else None

    # -- payments

    def read_payments(self, *, partial: bool = False) -> Iterator[NativeRecord]:
        """Every payment, invoice by invoice (see the module docstring for the requests); with
        ``partial``, only those of the invoices the last invoice read listed, a partial pass's
        (its invoices, when it listed them all)."""
        invoices, self._last_read = self._last_read, None  # used once: never stale next time
        if invoices is not None and self.last_read_partial and not partial:
            invoices = None  # not every invoice: every payment needs them all
        if invoices is None:  # no invoice read before: list them (customers not needed)
            invoices = []
            for item in self._invoice_items():
                invoice_id = str(item["id"])
                invoices.append(_Seen.of(invoice_id, _label(item, invoice_id), item.get(PAYMENTS)))
        seen: set[str] = set()
        for invoice, items in self._payment_items(_taken(invoices)):
            where = f"payments of invoice {invoice.label}"
            for index, item in enumerate(items):
                payment_id = self.pager.item_id(item, PAYMENTS, f"{where}: item {index}")
                if payment_id in seen:
                    continue
                seen.add(payment_id)
                # the items were decoded for this read alone: each becomes its record
                yield payment_record(item, payment_id, invoice, owned=True)

    def payments_of(self, item: Item) -> Iterator[NativeRecord]:
        """The payments of one invoice as the API gave it: those it nests, else read with
        ``GET /invoices/{id}/payments``."""
        invoice_id = str(item["id"])
        nested = item.get(PAYMENTS)
        label = _label(item, invoice_id)
        seen = _Seen(invoice_id, label, None)  # the payments' invoice, for their records
        items = nested if isinstance(nested, list) else self._fetch_payments(invoice_id)
        for index, payment in enumerate(items):
            where = f"payments of invoice {label}: item {index}"
            yield payment_record(payment, self.pager.item_id(payment, PAYMENTS, where), seen)

    def _payment_items(self, invoices: Iterable[_Seen]) -> Iterator[tuple[_Seen, list[Any]]]:
        """Each invoice with its payments, in order; payments not nested are fetched by a
        bounded pool, a window of invoices ahead of the one yielded."""
        pool: ThreadPoolExecutor | None = None
        pending: deque[tuple[_Seen, Future[list[Item]] | None]] = deque()
        window = self.concurrency * _WINDOW_PER_WORKER
        try:
            for invoice in invoices:
                if invoice.nests and not pending:
                    yield invoice, invoice.nested()
                    continue
                future = None
                if not invoice.nests:
                    if pool is None:
                        pool = ThreadPoolExecutor(
                            self.concurrency, thread_name_prefix=f"{self.pager.connector}-payments"
                        )
                    future = pool.submit(self._fetch_payments, invoice.id)
                pending.append((invoice, future))
                while pending and (len(pending) > window or _ready(pending[0][1])):
                    yield _take(pending)
            while pending:
                yield _take(pending)
        finally:
            for _invoice, future in pending:
                if future is not None:
                    future.cancel()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_payments(self, invoice_id: str) -> list[Item]:
        path = f"{invoice_path(invoice_id)}/payments"
        try:
            # this pool already runs `concurrency` of these: no read-ahead inside one
            pages = self.pager.items(
                path, PAYMENTS, PAYMENTS, guard_shrink=False, ahead=False, vanishes=True
            )
            return list(pages)
        except NotFoundError:  # the invoice went away since it was listed
            return []

    # -- internals

    def _invoice_items(self, params: Sequence[tuple[str, QueryScalar]] = ()) -> Iterator[Item]:
        yield from self.pager.items(
            "/invoices", INVOICES, INVOICES, [*_ORDER.items(), *params], guard_shrink=True
        )


def payment_record(
    item: Item, payment_id: str, invoice: _Seen, *, owned: bool = False
) -> NativeRecord:
    """A payment in one native shape whether it came nested (``paid_at``, no ``invoice_id``)
    or from ``GET /invoices/{id}/payments`` (``owned``: ``item`` is nobody else's, and is
    made the record rather than copied)."""
    data = item if owned else dict(item)
    if not isinstance(data.get("invoice_id"), str):
        data["invoice_id"] = invoice.id
    if "processed_at" not in data and "paid_at" in data:
        data["processed_at"] = data.pop("paid_at")
    return NativeRecord(
        id=payment_id, data=data, location=f"payment {payment_id} of invoice {invoice.label}"
    )


def invoice_path(invoice_id: str) -> str:
    return f"/invoices/{quote(invoice_id, safe='')}"


def _label(data: Mapping[str, Any], invoice_id: str) -> str:
    number = data.get("invoice_number")
    return f"{number} ({invoice_id})" if isinstance(number, str) and number else invoice_id


def _taken(invoices: list[_Seen]) -> Iterator[_Seen]:
    """The invoices one by one, each let go of once taken: the payments kept with them are
    freed as they are read, not all at the end of the read."""
    queue = deque(invoices)
    invoices.clear()
    while queue:
        yield queue.popleft()


def _ready(future: Future[list[Item]] | None) -> bool:
    return future is None or future.done()


def _take(
    pending: deque[tuple[_Seen, Future[list[Item]] | None]],
) -> tuple[_Seen, list[Any]]:
    invoice, future = pending.popleft()
    if future is None:
        return invoice, invoice.nested()
    return invoice, future.result()
