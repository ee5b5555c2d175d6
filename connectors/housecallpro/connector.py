"""The Housecall Pro connector: customers, jobs, invoices, payments and line items over the
HCP public REST API.

Built to ``spec/housecallpro-openapi.yaml`` and to what the live API is known to do
(``spec/HCP-REAL-API-NOTES.md``): the list envelope ``{<resource>, page, page_size,
total_pages, total_items}``, ``Authorization: Token KEY`` (or ``Bearer``), optional
``X-Company-Id``, inconsistent error bodies (parsed by ``syncengine.http``), and an HTML 404
for routes the live API does not have (``DELETE /customers/{id}``).

What it can do, per entity (the spec's operations)::

    customers   read, create, update, delete (only with delete_customers = true)
    jobs        read, create, update, delete
    invoices    read, create            (the API has no invoice update or delete)
    payments    read                    (the API takes no payments)
    line_items  read, create, update    (per job: one bulk_update per job written, held
                                        until the flush; no delete; see ``line_items.py``)

Native records: customers and invoices as the API sends them; a job with ``customer_id``
instead of the nested customer (``jobs.py``); an invoice without its nested ``payments`` and
with ``customer_id`` filled in from its job when the live API leaves it out; a payment with
``invoice_id`` and ``processed_at`` whichever shape it came in (``billing.py``). References
are HCP's own ids. Reads page oldest first (``sort_by=created_at&sort_direction=asc``).

Options (the ``[connectors.<name>]`` table)::

    type = "housecallpro"
    base_url = "https://api.housecallpro.com"   # or a sandbox
    api_key = "${HCP_API_KEY}"                  # secret: never logged
    auth_scheme = "Token"                       # or "Bearer" (OAuth access tokens)
    page_size = 100                             # 1..200
    rate_limit = 2.0                            # requests/second, client side; 0 disables
    timeout = 30.0                              # seconds per request
    max_retries = 5
    company_id = "..."                          # optional, sent as X-Company-Id
    delete_customers = false                    # the live API has no customer delete
    webhook_secret = "${HCP_WEBHOOK_SECRET}"    # optional: the daemon's webhook receiver
    webhook_tolerance = 300                     # seconds a delivery's timestamp may be off
    concurrency = 4                             # requests in flight at once: writes (the
                                                # engine), list pages read ahead, payment
                                                # reads per invoice when not nested
    incremental = []                            # entities read incrementally: some of
                                                # "customers", "jobs", "invoices"
    full_every_hours = 24.0                     # a complete pass at least this often

``incremental`` (off by default: every read complete) lists the entities whose reads list only
what changed since the last pass (``sort_by=updated_at&sort_direction=desc``, paged until past
the read mark), with a complete pass, which also sees deletes, at least every
``full_every_hours``; payments follow the invoices' passes. Support varies on the live API:
its invoices carry no ``updated_at``, so they are read completely each time anyway (logged
once). See ``incremental.py``. Line items are always read so, whatever ``incremental`` says (one
request per job changed since the last pass; a complete pass every ``full_every_hours``): see
``line_items.py``.

Test hooks in ``ConnectorContext.extra``: ``transport`` (an ``httpx.BaseTransport``, e.g.
``httpx.MockTransport`` or an in-process sandbox), ``sleep`` (replaces ``time.sleep`` for
backoff and rate limiting) and ``clock`` (replaces ``time.time``: when complete passes are
due).
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, field_validator

from syncengine.connector import (
    EMPTY_SECRET,
    Capabilities,
    Connector,
    ConnectorContext,
    ConnectorOptions,
    NativeData,
    NativeRecord,
    ReadPass,
)
from syncengine.connectors.housecallpro.billing import INVOICES, PAYMENTS, Billing
from syncengine.connectors.housecallpro.events import EventRead
from syncengine.connectors.housecallpro.incremental import IncrementalReads, check_entities
from syncengine.connectors.housecallpro.jobs import (
    JOBS,
    JobCustomers,
    identifying,
    job_body,
    job_path,
    job_record,
    same_job,
    search_params,
    top_key,
)
from syncengine.connectors.housecallpro.line_items import LINE_ITEMS, LineItems
from syncengine.connectors.housecallpro.paging import Pager
from syncengine.connectors.housecallpro.webhooks import DEFAULT_TOLERANCE
from syncengine.errors import FatalConnectorError
from syncengine.events import InboxEvent
from syncengine.http import connector_client, is_html
from syncengine.numbers import Float, Int

CUSTOMERS = "customers"
ENTITIES = (CUSTOMERS, JOBS, INVOICES, PAYMENTS, LINE_ITEMS)
MOVED_LINE = (
    "Housecall Pro keeps a line on the job it was added to, so it cannot move to another "
    "invoice: put the line back under its invoice, and add a new line (a row with a blank "
    "Sync ID) under the other one"
)
READ_ONLY_KEYS = frozenset({"id", "created_at", "updated_at"})
"""Top-level customer keys the API owns: never sent on create or update."""
_OLDEST_FIRST = {"sort_by": "created_at", "sort_direction": "asc"}


class HousecallProOptions(ConnectorOptions):
    """The ``[connectors.<name>]`` table of a Housecall Pro member."""

    type: str = "housecallpro"
    base_url: str = "https://api.housecallpro.com"
    api_key: SecretStr
    auth_scheme: Literal["Token", "Bearer"] = "Token"
    page_size: Int = Field(default=100, ge=1, le=200)
    rate_limit: Float = Field(default=2.0, ge=0)
    """Requests per second, enforced client side (the live API reportedly allows ~120/min).
    0 turns the client-side limit off (sandboxes, benchmarks)."""
    timeout: Float = Field(default=30.0, gt=0)
    max_retries: Int = Field(default=5, ge=0, le=20)
    company_id: str | None = None
    """Sent as ``X-Company-Id`` for multi-location accounts."""
    delete_customers: bool = False
    """The live API answers ``DELETE /customers/{id}`` with an HTML 404, so customer deletes
    are off unless the target supports them (the sandbox does)."""
    webhook_secret: SecretStr | None = None
    """The signing secret of the company's webhooks (HCP's App Store, Webhooks card): the
    daemon's ``/webhooks/hcp/<name>`` accepts only deliveries signed with it. Secret: never
    logged."""
    webhook_tolerance: Float = Field(default=DEFAULT_TOLERANCE, ge=1, le=86400)
    """Seconds a delivery's ``api-timestamp`` may be from the daemon's clock, either way."""
    concurrency: Int = Field(default=4, ge=1, le=32)
    """How many requests this member may have in flight at once, all within ``rate_limit``:
    the writes the engine runs at once, the list pages read ahead of the one being consumed
    (once page 1 gives ``total_pages``; ``paging``), and the payment reads per invoice when
    invoices do not nest them. One option for reads and writes because they never overlap
    (a sync reads an entity, then writes it) and both spend the same budget: the API's rate.
    1 reads one page ahead, one request at a time. The connector is thread-safe and every
    request, from any thread, goes through the one rate limiter."""

    incremental: list[str] = Field(default_factory=list)
    """Entities read incrementally (some of customers, jobs, invoices; payments follow
    invoices): only what changed since the last pass, with complete passes between. Empty:
    every read is complete."""
    full_every_hours: Float = Field(default=24.0, gt=0)
    """With ``incremental``: a complete pass (the only kind that sees deletes) at least this
    often."""

    @field_validator("incremental")
    @classmethod
    def _incremental_entities(cls, value: list[str]) -> list[str]:
        return check_entities(value)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(
                "must be an http:// or https:// URL, e.g. https://api.housecallpro.com"
            )
        return value.rstrip("/")

    @field_validator("api_key", "webhook_secret")
    @classmethod
    def _non_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(EMPTY_SECRET)
        return value


class HousecallProConnector(Connector):
    """Customers, jobs, invoices and payments on Housecall Pro. See the module docstring."""

    type_name: ClassVar[str] = "housecallpro"
    Options: ClassVar[type[ConnectorOptions]] = HousecallProOptions
    reads_ahead: ClassVar[bool] = True  # its HttpClient and rate limit are thread-safe
    reads_json: ClassVar[bool] = True  # records as the API's JSON decodes, ids and links added

    def __init__(self, options: ConnectorOptions, context: ConnectorContext) -> None:
        super().__init__(options, context)
        if not isinstance(options, HousecallProOptions):
            options = HousecallProOptions.model_validate(options.model_dump())
        self.opts: HousecallProOptions = options
        key = options.api_key.get_secret_value().strip()
        headers = {"Authorization": f"{options.auth_scheme} {key}"}
        if options.company_id:
            headers["X-Company-Id"] = options.company_id
        self.http = connector_client(
            context,
            options.base_url,
            headers=headers,
            timeout=options.timeout,
            max_retries=options.max_retries,
            rate_limit=options.rate_limit,
            secrets=(key,),
        )
        self.pager = Pager(self.http, self.name, options.page_size, concurrency=options.concurrency)
        self.job_customers = JobCustomers(self.pager)
        self.billing = Billing(
            self.pager, concurrency=options.concurrency, customer_of=self.job_customers.customer_of
        )
        self.events = EventRead(self, context.extra.get("clock", time.time))
        self.incremental = IncrementalReads(self, context.extra.get("clock", time.time))
        self.lines = LineItems(self, context.extra.get("clock", time.time))

    # -- description
    def entities(self) -> tuple[str, ...]:
        return ENTITIES

    def capabilities(self, entity: str) -> Capabilities:
        self._check_entity(entity)
        if entity == CUSTOMERS:
            return Capabilities(delete=self.opts.delete_customers)
        if entity == JOBS:
            return Capabilities()
        if entity == INVOICES:
            return Capabilities(update=False, delete=False)
        if entity == LINE_ITEMS:
            return Capabilities(delete=False, fixed={"invoice": MOVED_LINE})
        return Capabilities(create=False, update=False, delete=False)

    def will_sync(self, entities: Collection[str]) -> None:
        """A run without line items keeps no job -> invoice index (``JobInvoices``)."""
        self.billing.job_invoices.wanted = LINE_ITEMS in entities

    def buffers(self, entity: str) -> bool:
        """Line items are held until ``flush``: one ``bulk_update`` per job."""
        return entity == LINE_ITEMS

    # -- reading
    def read(self, entity: str) -> Iterator[NativeRecord]:
        """Every record, oldest first (``sort_by=created_at&sort_direction=asc``).

        Oldest-first keeps pagination stable while records are being added. If a list's total
        shrinks while paging, the read ends with a RetriableError (see ``paging``). Pages
        after the first are read ahead, ``concurrency`` at most, while the caller works
        through the records of the pages before. Payments come from the invoices this
        instance read last when those carried them.
        """
        self._check_entity(entity)
        if entity == CUSTOMERS:
            for item in self.pager.items(
                "/customers", CUSTOMERS, CUSTOMERS, _OLDEST_FIRST, guard_shrink=True
            ):
                yield _customer_record(item)
        elif entity == JOBS:
            for item in self.pager.items("/jobs", JOBS, JOBS, _OLDEST_FIRST, guard_shrink=True):
                record = job_record(item, str(item["id"]))
                self.job_customers.learn(record)
                yield record
            self.job_customers.complete = True
        elif entity == INVOICES:
            yield from self.billing.read_invoices()
        elif entity == LINE_ITEMS:
            yield from self.lines.read_all()
        else:
            yield from self.billing.read_payments()

    def read_incremental(self, entity: str, token: str | None) -> ReadPass | None:
        """Only what changed since the mark in ``token`` (or everything, when a complete pass
        is due) for an entity the option ``incremental`` lists, payments following invoices;
        None for the others: the engine then calls ``read``. See ``incremental.py``."""
        self._check_entity(entity)
        if entity == LINE_ITEMS:
            return self.lines.read(token)  # always: the request floor is one GET per job
        return self.incremental.read(entity, token)

    def read_events(self, entity: str, events: Sequence[InboxEvent]) -> ReadPass | None:
        """Only the records webhook events name: their payload where whole and fresh, else a
        ``GET`` by id (``events.py``). Line items have no events: None (they are read as in
        any run, which costs a request per job changed)."""
        self._check_entity(entity)
        if entity == LINE_ITEMS:
            return None
        return self.events.read(entity, events)

    def get(self, entity: str, native_id: str) -> NativeRecord | None:
        """One record by id; NotFoundError when it does not exist. Payments have no such
        endpoint: they are looked for among all payments (None when not there)."""
        self._check_entity(entity)
        if entity in (PAYMENTS, LINE_ITEMS):
            return super().get(entity, native_id)
        path = self._path(entity, native_id)
        if entity == INVOICES:
            return self.billing.get_invoice(native_id)
        body = self.http.get_json(path)
        if entity == JOBS:
            return self._job(body, f"GET {path}")
        return self._record(body, f"GET {path}")

    def find(self, entity: str, data: NativeData) -> list[NativeRecord]:
        """Records that carry ``data`` (resolving an interrupted create):

        - customers: equal on the non-empty top-level scalar fields, searched with ``q``
          (email, then mobile number, then "first last"); emails compare case-insensitively,
          phone numbers by their digits; without a search term, among all customers;
        - jobs: among the customer's jobs (``customer_id`` filter) starting at the scheduled
          start (``scheduled_start_min/max``), the ones with the same description, notes,
          number and scheduled times;
        - invoices: the ones with the invoice number (without one: the same job, customer,
          amount, due date and status), among the customer's (``customer_uuid[]``);
        - payments: never created here; looked for among all payments;
        - line items: the lines of its job that hold its values.
        """
        self._check_entity(entity)
        if entity == LINE_ITEMS:
            return self.lines.find(data)
        if entity == JOBS:
            return self._find_job(data)
        if entity == INVOICES:
            return self.billing.find_invoices(data)
        if entity == PAYMENTS:
            return super().find(entity, data)
        wanted = {
            k: v
            for k, v in data.items()
            if k not in READ_ONLY_KEYS
            and isinstance(v, str | int | float | bool)
            and not (isinstance(v, str) and not v.strip())
        }

        def matches(items: Iterator[dict[str, Any]]) -> list[NativeRecord]:
            records = (_customer_record(item) for item in items)
            return [
                r for r in records if all(_same(k, v, r.data.get(k)) for k, v in wanted.items())
            ]

        terms = _search_terms(data)
        if not terms:
            return matches(
                self.pager.items(
                    "/customers", CUSTOMERS, CUSTOMERS, _OLDEST_FIRST, guard_shrink=True
                )
            )
        for term in terms:
            found = matches(
                self.pager.items(
                    "/customers",
                    CUSTOMERS,
                    CUSTOMERS,
                    {"q": term, **_OLDEST_FIRST},
                    guard_shrink=False,
                )
            )
            if found:
                return found
        return []

    # -- writing
    def create(self, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        """POST the record. Never retried: if the outcome is unknown (timeout, 5xx) this
        raises RetriableError and the engine's journal resolves it later through ``find``."""
        self._check_entity(entity)
        if entity == INVOICES:
            return self.billing.create_invoice(data)
        if entity == LINE_ITEMS:
            return self.lines.create(data, key)
        if entity == PAYMENTS:
            raise self._cannot("create", entity)
        body = self._body(entity, data, data.keys(), clear=False)
        path = f"/{entity}"
        response = self.http.request("POST", path, json=body, retry=False)
        created = self.http.decode("POST", path, response)
        if entity == JOBS:
            return self._job(created, f"POST {path}")
        return self._record(created, f"POST {path}")

    def update(
        self,
        entity: str,
        native_id: str,
        patch: NativeData,
        *,
        full: NativeData,
        new_id: str | None = None,
    ) -> NativeRecord | None:
        """PUT the changed top-level keys of ``full`` (a change anywhere under ``addresses``
        or ``schedule`` sends that whole object). Returns the record as the API now has it,
        or None when nothing writable changed (no request is sent)."""
        self._check_entity(entity)
        if entity in (INVOICES, PAYMENTS):
            raise self._cannot("update", entity)
        if entity == LINE_ITEMS and new_id in (None, native_id):
            return self.lines.update(native_id, patch, full)
        if new_id is not None and new_id != native_id:
            raise FatalConnectorError(
                f"cannot give {entity} record {native_id} the id {new_id}: Housecall Pro "
                "assigns ids",
                connector=self.name,
                entity=entity,
            )
        top_keys = {top_key(path) for path in patch}
        source = {**{k: patch[k] for k in patch if k in top_keys}, **full}
        for missing in top_keys - source.keys():
            source[missing] = None  # removed on our side: clear it on theirs
        body = self._body(entity, source, top_keys, clear=True)
        if not body:
            return None
        path = self._path(entity, native_id)
        response = self.http.request("PUT", path, json=body)
        updated = self.http.decode("PUT", path, response)
        if updated is None:
            return None
        if entity == JOBS:
            return self._job(updated, f"PUT {path}")
        return self._record(updated, f"PUT {path}")

    def delete(self, entity: str, native_id: str) -> None:
        """DELETE the record; a JSON 404 means already deleted. An HTML 404 means the API has
        no such route (the live API's customers): that is a configuration problem, not
        success. A job that still has invoices is refused by HCP (a RecordError)."""
        self._check_entity(entity)
        if entity in (INVOICES, PAYMENTS, LINE_ITEMS):
            raise self._cannot("delete", entity)
        path = self._path(entity, native_id)
        response = self.http.request("DELETE", path, allow_status=(404,))
        if response.status_code == 404 and is_html(response):
            fix = (
                "set delete_customers = false for this connector"
                if entity == CUSTOMERS
                else ("stop propagating deletes of this entity to it")
            )
            raise FatalConnectorError(
                f"DELETE {path}: this API does not support deleting {entity} (HTML 404); {fix}",
                connector=self.name,
                entity=entity,
            )

    def flush(self, entity: str) -> None:
        """Send the line items held for their jobs (nothing else is held)."""
        if entity == LINE_ITEMS:
            self.lines.flush()

    def flushed(self, entity: str, answered: NativeRecord) -> NativeRecord:
        """A held line's record once its job's ``bulk_update`` was sent (its ``uuid``), or
        that job's failure."""
        if entity == LINE_ITEMS:
            return self.lines.flushed(answered)
        return answered

    def changed_by_writes(self, entity: str) -> Mapping[str, frozenset[str]]:
        """The invoices whose jobs' lines were just written (HCP totals an invoice from its
        job's lines): the engine reads them again by id in the same run."""
        if entity != LINE_ITEMS:
            return {}
        changed = self.lines.invoices_changed()
        return {INVOICES: changed} if changed else {}

    def close(self) -> None:
        self.http.close()

    # -- internals
    def _check_entity(self, entity: str) -> None:
        if entity not in ENTITIES:
            raise FatalConnectorError(
                f"unknown entity {entity!r} (this connector has: {', '.join(ENTITIES)})",
                connector=self.name,
                entity=entity,
            )

    def _cannot(self, op: str, entity: str) -> FatalConnectorError:
        return FatalConnectorError(
            f"Housecall Pro's API cannot {op} {entity}", connector=self.name, entity=entity
        )

    def _path(self, entity: str, native_id: str) -> str:
        noun = entity.removesuffix("s")
        if not native_id or "/" in native_id or native_id.strip() != native_id:
            raise FatalConnectorError(
                f"invalid {noun} id {native_id!r}", connector=self.name, entity=entity
            )
        if entity == JOBS:
            return job_path(native_id)
        return f"/{entity}/{quote(native_id, safe='')}"

    @staticmethod
    def _body(
        entity: str, source: Mapping[str, Any], keys: Iterable[str], *, clear: bool
    ) -> NativeData:
        if entity == JOBS:
            return job_body(source, keys, clear=clear)
        return _writable(source, keys, clear=clear)

    def _find_job(self, data: NativeData) -> list[NativeRecord]:
        params = search_params(data)
        if not identifying(data) and not params:
            return []  # nothing to tell one job from another
        found = []
        for item in self.pager.items(
            "/jobs", JOBS, JOBS, [*_OLDEST_FIRST.items(), *params], guard_shrink=False
        ):
            record = job_record(item, str(item["id"]))
            if same_job(data, record.data):
                found.append(record)
        return found

    def _job(self, body: Any, where: str) -> NativeRecord:
        job_id = self.pager.item_id(body, JOBS, f"{where}: the job in the response")
        record = job_record(body, job_id)
        self.job_customers.learn(record)
        return record

    def _record(self, body: Any, where: str) -> NativeRecord:
        if not isinstance(body, dict):
            raise FatalConnectorError(
                f"{where}: expected a customer object, got {type(body).__name__}",
                connector=self.name,
                entity=CUSTOMERS,
            )
        customer_id = body.get("id")
        if not isinstance(customer_id, str) or not customer_id:
            raise FatalConnectorError(
                f"{where}: the customer in the response has no id",
                connector=self.name,
                entity=CUSTOMERS,
            )
        return _customer_record(body)


# ------------------------------------------------------------------------------ helpers


def _customer_record(item: dict[str, Any]) -> NativeRecord:
    customer_id = str(item["id"])
    return NativeRecord(id=customer_id, data=item, location=f"customer {customer_id}")


_LIST_KEYS = frozenset({"tags", "addresses"})
_UNCLEARABLE = frozenset({"notifications_enabled"})


def _writable(source: Mapping[str, Any], keys: Any, *, clear: bool = False) -> dict[str, Any]:
    """The keys of ``source`` the API accepts on a write, in the shapes the spec allows.

    Read-only keys are dropped. The spec's fields are not nullable, so a value of None is left
    out of a create; on an update (``clear``) it becomes the field's empty value ("" or []),
    which is how a field is cleared. Address ids that are None (new addresses) are dropped:
    the API assigns them.
    """
    body: dict[str, Any] = {}
    for key in keys:
        if key in READ_ONLY_KEYS or key not in source:
            continue
        value = source[key]
        if value is None:
            if not clear or key in _UNCLEARABLE:
                continue
            value = [] if key in _LIST_KEYS else ""
        if key == "addresses" and isinstance(value, list):
            value = [
                {
                    k: ("" if v is None else v)
                    for k, v in a.items()
                    if v is not None or (clear and k != "id")
                }
                if isinstance(a, Mapping)
                else a
                for a in value
            ]
        body[key] = value
    return body


def _search_terms(data: Mapping[str, Any]) -> list[str]:
    """What to search for, best first: email, mobile number, "first last"."""
    terms: list[str] = []
    for key in ("email", "mobile_number"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            terms.append(value.strip())
    names = [data.get("first_name"), data.get("last_name")]
    name = " ".join(n.strip() for n in names if isinstance(n, str) and n.strip())
    if name:
        terms.append(name)
    return terms


def _is_email_key(key: str) -> bool:
    return "email" in key


def _is_phone_key(key: str) -> bool:
    return key.endswith("_number") or "phone" in key or "mobile" in key


def _digits(value: str) -> str:
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) == 11 and digits.startswith("1"):  # NANP country code
        digits = digits[1:]
    return digits


def _same(key: str, wanted: Any, actual: Any) -> bool:
    if isinstance(wanted, str):
        if not isinstance(actual, str):
            return False
        if _is_email_key(key):
            return wanted.strip().lower() == actual.strip().lower()
        if _is_phone_key(key):
            return _digits(wanted) == _digits(actual) and bool(_digits(wanted))
        return wanted.strip() == actual.strip()
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return wanted is actual
    return bool(wanted == actual)
