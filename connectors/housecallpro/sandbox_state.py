"""Everything the HCP sandbox knows, behind one lock: ``SandboxState``.

Records live in one :class:`Collection` per resource (customers, jobs, invoices, payments),
keyed by id, with secondary indexes (a job's invoices, an invoice's payments, invoice numbers)
and cached sort orders, so that paging through 100k invoices costs a slice per request rather
than a sort. Stored records are never changed in place: a write stores a new dict, so the
seeded data can be shared with ``reset()`` and readers never race a writer.

An invoice's ``outstanding_balance`` is kept by the state: its amount less what its payments
still hold (``balance_of``), updated with every payment recorded (and the status becomes
``paid`` when nothing is owed any more) and every refund (which reopens it: back to ``sent``,
the spec's word for what the live API calls ``open``, once something is owed again).
"""

from __future__ import annotations

import gc
import math
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from syncengine.connectors.housecallpro.sandbox_customers import (
    CUSTOMER_SORT_FIELDS,
    blank_customer,
    check_customer_fields,
    copy_customer,
    customer_search_text,
    generate_customers,
    has_name,
)
from syncengine.connectors.housecallpro.sandbox_data import check_data, load_data_file
from syncengine.connectors.housecallpro.sandbox_fields import (
    Errors,
    Record,
    ValidationFailed,
    add_error,
    format_timestamp,
    hex_id,
    parse_timestamp,
    wire,
)
from syncengine.connectors.housecallpro.sandbox_lines import JobLines, generate_lines
from syncengine.connectors.housecallpro.sandbox_records import (
    INVOICE_CLOSED,
    balance_of,
    blank_invoice,
    blank_job,
    check_invoice_fields,
    check_job_fields,
    check_payment_fields,
    check_refund,
    check_schedule_order,
    copy_job,
    invoice_sort_keys,
    invoice_wire,
    job_sort_keys,
    job_wire,
    payment_wire,
    settle_totals,
    stamp_work,
)
from syncengine.connectors.housecallpro.sandbox_seed import (
    FIRST_JOB_NUMBER,
    generate_employees,
    generate_work,
)
from syncengine.connectors.housecallpro.sandbox_webhooks import (
    Listener,
    invoice_change_events,
    job_update_event,
    payment_events,
    refund_events,
)
from syncengine.errors import ConfigError, Problem

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 200
REQUEST_LOG_LIMIT = 100_000
"""The request log keeps this many most recent entries."""
SELECTION_CACHE_SIZE = 64
"""Filtered orders kept per collection (a filter paged through costs one scan, not one per
page)."""
COLLECTIONS = ("customers", "employees", "jobs", "invoices", "payments", "line_items")

SortKey = Callable[[Record], Any]
_ID = itemgetter("id")
Data = dict[str, list[Record]]


class Refused(Exception):
    """A valid request the sandbox will not carry out (422 ``{"error": {"message"}}``)."""


# ------------------------------------------------------------------------------------ time


class Clock:
    """Hands out write timestamps that strictly increase, one second apart at least.

    ``tick()`` returns ``max(now, last + 1s)``, so two writes in the same second still order
    by ``updated_at``. The caller serialises access (the state lock).
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self.last = 0

    def advance_to(self, seconds: int) -> None:
        """Never hand out a timestamp at or before ``seconds`` from now on."""
        self.last = max(self.last, seconds)

    def tick(self) -> str:
        self.last = max(int(self._now()), self.last + 1)
        return format_timestamp(self.last)

    def current(self) -> str:
        """The last timestamp handed out, or now when that is later (nothing is handed out)."""
        return format_timestamp(max(int(self._now()), self.last))


# -------------------------------------------------------------------------- rate limiting


class TokenBucket:
    """``rate`` requests per second on average, bursts of up to ``burst`` (default: one
    second's worth, at least one request)."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self._monotonic = monotonic
        self._updated = monotonic()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# ------------------------------------------------------------------------------ collection


class Collection:
    """One resource's records by id, in creation order, with secondary indexes and cached
    sort orders (plain and filtered). The owner (``SandboxState``) holds the lock."""

    def __init__(
        self,
        name: str,
        copy: Callable[[Record], Record],
        *,
        sort_keys: Mapping[str, SortKey] | None = None,
        search_text: Callable[[Record], str] | None = None,
        indexes: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.copy = copy
        self._sort_keys = dict(sort_keys or {})
        self._search_text = search_text
        self._records: dict[str, Record] = {}
        self._orders: dict[tuple[str, bool], list[Record]] = {}
        self._selections: OrderedDict[Hashable, list[Record]] = OrderedDict()
        self._texts: dict[str, str] = {}
        self._indexes: dict[str, dict[Any, dict[str, None]] | None] = dict.fromkeys(indexes)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._records

    def get(self, record_id: str) -> Record | None:
        return self._records.get(record_id)

    def all(self) -> list[Record]:
        return list(self._records.values())

    def lookup(self, field: str, value: Any) -> list[Record]:
        """The records whose indexed ``field`` equals ``value``, in the order they got it.
        An index is built on its first lookup after ``replace_all`` and then kept."""
        buckets = self._indexes[field]
        if buckets is None:
            buckets = self._indexes[field] = {}
            for record_id, record in self._records.items():
                key = record.get(field)
                if key is not None:
                    buckets.setdefault(key, {})[record_id] = None
        bucket = buckets.get(value)
        if not bucket:
            return []
        return [self._records[record_id] for record_id in bucket]

    def put(self, record: Record) -> None:
        record_id = record["id"]
        old = self._records.get(record_id)
        self._records[record_id] = record
        for field, buckets in self._indexes.items():
            if buckets is None:
                continue
            before = None if old is None else old.get(field)
            after = record.get(field)
            if old is not None and before == after:
                continue
            if before is not None:
                self._unindex(buckets, before, record_id)
            if after is not None:
                buckets.setdefault(after, {})[record_id] = None
        self._texts.pop(record_id, None)
        self._changed()

    def remove(self, record_id: str) -> bool:
        old = self._records.pop(record_id, None)
        if old is None:
            return False
        for field, buckets in self._indexes.items():
            value = old.get(field)
            if buckets is not None and value is not None:
                self._unindex(buckets, value, record_id)
        self._texts.pop(record_id, None)
        self._changed()
        return True

    def replace_all(self, records: Sequence[Record]) -> None:
        self._records = dict(zip(map(_ID, records), records, strict=True))
        self._indexes = dict.fromkeys(self._indexes)
        self._texts.clear()
        self._changed()

    def latest(self, *fields: str) -> str:
        """The greatest value of these timestamp fields over every record ("" when none)."""
        found = ""
        for field in fields:
            values = [v for v in map(itemgetter(field), self._records.values()) if v]
            if values:
                found = max(found, max(values))
        return found

    def ordered(self, sort_by: str, descending: bool) -> list[Record]:
        """Every record sorted by one field, ties broken by id; nulls sort last ascending.
        Text compares case-insensitively."""
        key = (sort_by, descending)
        order = self._orders.get(key)
        if order is None:
            get = self._sort_keys.get(sort_by) or (lambda r: r.get(sort_by))

            def sort_key(record: Record) -> tuple[bool, Any, str]:
                value = get(record)
                if isinstance(value, str):
                    value = value.casefold()
                return (value is None, "" if value is None else value, record["id"])

            order = sorted(self._records.values(), key=sort_key, reverse=descending)
            self._orders[key] = order
        return order

    def select(
        self,
        sort_by: str,
        descending: bool,
        key: Hashable,
        keep: Callable[[Record], bool] | None,
    ) -> list[Record]:
        """``ordered()`` narrowed to the records ``keep`` accepts; ``key`` identifies the
        filter, so paging through one costs a single scan until the next write."""
        if keep is None:
            return self.ordered(sort_by, descending)
        cache_key = (sort_by, descending, key)
        found = self._selections.get(cache_key)
        if found is None:
            found = [r for r in self.ordered(sort_by, descending) if keep(r)]
            self._selections[cache_key] = found
            if len(self._selections) > SELECTION_CACHE_SIZE:
                self._selections.popitem(last=False)
        else:
            self._selections.move_to_end(cache_key)
        return found

    def matches(self, record: Record, needle: str) -> bool:
        """Whether the case-folded ``needle`` occurs in the record's searchable text."""
        if self._search_text is None:
            return False
        text = self._texts.get(record["id"])
        if text is None:
            text = self._search_text(record).casefold()
            self._texts[record["id"]] = text
        return needle in text

    @staticmethod
    def _unindex(buckets: dict[Any, dict[str, None]], value: Any, record_id: str) -> None:
        bucket = buckets.get(value)
        if bucket is not None:
            bucket.pop(record_id, None)
            if not bucket:
                del buckets[value]

    def _changed(self) -> None:
        self._orders.clear()
        self._selections.clear()


# ------------------------------------------------------------------------------ seed data


def generate_data(count: int, random_seed: int = 0) -> Data:
    """``count`` generated customers with their jobs, invoices and payments (deterministic)."""
    customers = generate_customers(count, random_seed)
    employees = generate_employees(random_seed)
    work = generate_work(customers, employees, random_seed)
    return {
        "customers": customers,
        "employees": employees,
        "jobs": work.jobs,
        "invoices": work.invoices,
        "payments": work.payments,
        "line_items": generate_lines(work.jobs, work.invoices, random_seed),
    }


@contextmanager
def _bulk() -> Iterator[None]:
    """Seeding makes a million long-lived objects and no reference cycles: the cycle
    collector has nothing to find meanwhile, yet its passes over them would take about as
    long as the seeding itself. It is paused (process-wide, for those seconds only)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _between(get: SortKey, low: str | None, high: str | None) -> Callable[[Record], bool]:
    def inside(record: Record) -> bool:
        value = get(record)
        if value is None:
            return False
        return (low is None or value >= low) and (high is None or value <= high)

    return inside


def _all_of(conditions: list[Callable[[Record], bool]]) -> Callable[[Record], bool] | None:
    if not conditions:
        return None
    return lambda record: all(condition(record) for condition in conditions)


# ------------------------------------------------------------------------------ the state


class SandboxState:
    """Everything the sandbox knows, behind one lock: data, knobs, request log.

    Methods lock for themselves; ``lock`` is re-entrant, so a test may hold it around several
    calls. Customer methods return stored-form copies; job, invoice and payment methods return
    the wire form (which depends on ``nest_payments`` and ``live_invoices``).

    Live-API emulation (attributes; a test may flip them at any time):

    - ``nest_payments`` (default True): invoices carry their payments as the live API nests
      them, ``payments: [{id, status, payment_method, amount, note, paid_at, category}]``
      (an extra property the spec allows);
    - ``live_invoices`` (default False): invoices leave out ``customer_id`` and
      ``updated_at`` as the live API does (a client reaches the customer through the job).

    ``listener`` (default None; the webhook sender) hears of every change the methods make,
    in order: loading, seeding and ``reset()`` are not changes it hears of.
    """

    def __init__(
        self,
        *,
        api_key: str = "",
        seed: int | None = None,
        data_file: str | None = None,
        random_seed: int = 0,
        latency_ms: int = 0,
        error_rate: float = 0.0,
        rate_limit: float | None = None,
        nest_payments: bool = True,
        live_invoices: bool = False,
        now: Callable[[], float] = time.time,
    ) -> None:
        problems = []
        if seed is not None and seed < 0:
            problems.append(Problem("sandbox.seed", f"must be 0 or more, not {seed}"))
        if seed is not None and data_file is not None:
            problems.append(Problem("sandbox", "give either seed or data_file, not both"))
        if latency_ms < 0:
            problems.append(Problem("sandbox.latency_ms", f"must be 0 or more, not {latency_ms}"))
        if not 0.0 <= error_rate <= 1.0:
            problems.append(
                Problem("sandbox.error_rate", f"must be between 0 and 1, not {error_rate}")
            )
        if rate_limit is not None and rate_limit <= 0:
            problems.append(Problem("sandbox.rate_limit", f"must be positive, not {rate_limit}"))
        if problems:
            raise ConfigError(problems)

        self.lock = threading.RLock()
        self.api_key = api_key
        self.latency_ms = latency_ms
        self.error_rate = error_rate
        self.nest_payments = nest_payments
        self.live_invoices = live_invoices
        self._initial_options = self.options()
        self.limiter: TokenBucket | None = TokenBucket(rate_limit) if rate_limit else None
        self.clock = Clock(now)
        self.customers = Collection(
            "customers",
            copy_customer,
            sort_keys={name: itemgetter(name) for name in CUSTOMER_SORT_FIELDS},
            search_text=customer_search_text,
        )
        self.jobs = Collection("jobs", copy_job, sort_keys=job_sort_keys())
        self.invoices = Collection(
            "invoices", dict, sort_keys=invoice_sort_keys(), indexes=["job_id", "invoice_number"]
        )
        self.payments = Collection("payments", dict, indexes=["invoice_id"])
        self.collections: dict[str, Collection] = {
            "customers": self.customers,
            "jobs": self.jobs,
            "invoices": self.invoices,
            "payments": self.payments,
        }
        self.employees: dict[str, Record] = {}
        self.lines = JobLines()
        """Each job's line items (``sandbox_lines``)."""
        self._next_number: int | None = None
        """The next job (and job-less invoice) number; found on first use."""
        self._ids = random.Random(f"ids:{random_seed}")
        self._taken: set[str] = set()
        """Every id this state has held or handed out (records, employees, addresses):
        ``new_id`` never returns one of them. Data installed is added on the first
        ``new_id`` after it (``_unscanned``), so that a state nobody writes to never pays for
        the scan."""
        self._unscanned: list[Mapping[str, list[Record]]] = []
        self._faults = random.Random(f"faults:{random_seed}")
        self._log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self.listener: Listener | None = None

        with _bulk():
            if data_file is not None:
                initial = load_data_file(data_file)
            else:
                initial = generate_data(seed or 0, random_seed)
            self._initial = initial
            self._install(initial)

    # -- data as a whole

    def _install(self, data: Mapping[str, list[Record]], *, new: bool = True) -> None:
        """Make ``data`` the current data. Its records are shared, not copied: nothing
        changes a stored record in place. ``new=False``: its ids are known already."""
        with self.lock:
            if new:
                self._unscanned.append(data)
            for name, collection in self.collections.items():
                collection.replace_all(data.get(name, []))
            self.employees = {e["id"]: e for e in data.get("employees", [])}
            self.lines.replace_all(data.get("line_items", []))
            latest = max(
                self.customers.latest("created_at", "updated_at"),
                self.jobs.latest("created_at", "updated_at"),
                self.invoices.latest("created_at", "updated_at"),
                self.payments.latest("created_at", "processed_at"),
            )
            if latest:
                self.clock.advance_to(parse_timestamp(latest))
            self._next_number = None

    def load(self, data: Any, *, source: str = "data") -> None:
        """Replace all data with ``data`` (the shape ``dump()`` returns), checked first.

        Raises ``ConfigError`` naming ``source`` and every bad record. ``reset()`` afterwards
        comes back to this data.
        """
        checked = check_data(data, source)
        with self.lock:
            self._initial = checked
            self._install(checked)

    def dump(self) -> dict[str, list[Record]]:
        """All data as ``{"customers", "employees", "jobs", "invoices", "payments",
        "line_items"}``, each in
        creation order; ``load()`` and ``--data`` accept it."""
        with self.lock:
            return {
                "customers": [copy_customer(r) for r in self.customers.all()],
                "employees": [dict(e) for e in self.employees.values()],
                "jobs": [copy_job(r) for r in self.jobs.all()],
                "invoices": [dict(r) for r in self.invoices.all()],
                "payments": [dict(r) for r in self.payments.all()],
                "line_items": self.lines.dump(),
            }

    def reset(self) -> None:
        """Back to the seeded (or loaded) data and the live-API emulation options the state
        was made with. Ids handed out later stay unique."""
        with self.lock:
            self._install(self._initial, new=False)
            self.set_options(self._initial_options)

    def options(self) -> dict[str, bool]:
        """The live-API emulation options (see the class docstring)."""
        with self.lock:
            return {"nest_payments": self.nest_payments, "live_invoices": self.live_invoices}

    def set_options(self, body: Mapping[str, Any]) -> dict[str, bool]:
        """Change some of the options; raises ``ValidationFailed`` on unknown names or values
        that are not true or false."""
        errors: Errors = {}
        for name, value in body.items():
            if name not in ("nest_payments", "live_invoices"):
                add_error(errors, name, "is not an option (nest_payments, live_invoices)")
            elif not isinstance(value, bool):
                add_error(errors, name, "must be true or false")
        if errors:
            raise ValidationFailed(errors)
        with self.lock:
            self.nest_payments = bool(body.get("nest_payments", self.nest_payments))
            self.live_invoices = bool(body.get("live_invoices", self.live_invoices))
            return self.options()

    def faults(self) -> dict[str, float]:
        """The fault injection knobs a test may change while the sandbox runs."""
        with self.lock:
            return {"error_rate": self.error_rate}

    def set_faults(self, body: Mapping[str, Any]) -> dict[str, float]:
        """Change ``error_rate`` (the share of API requests answered 500, 0..1) while the
        sandbox runs; raises ``ValidationFailed`` on unknown names or values out of range."""
        errors: Errors = {}
        for name, value in body.items():
            if name != "error_rate":
                add_error(errors, name, "is not a fault knob (error_rate)")
            elif (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0.0 <= value <= 1.0
            ):
                add_error(errors, name, "must be a number from 0 to 1")
        if errors:
            raise ValidationFailed(errors)
        with self.lock:
            self.error_rate = float(body.get("error_rate", self.error_rate))
            return self.faults()

    def new_id(self, prefix: str) -> str:
        """``prefix`` and 32 hex digits from the state's own random generator, never an id the
        state holds or has held: a state loaded from a data file (``--data``) draws from the
        same sequence as the session that saved it, so the ids that session made come round
        again and are skipped. The same random seed and data give the same ids."""
        with self.lock:
            taken = self._taken_ids()
            while True:
                candidate = hex_id(self._ids, prefix)
                if candidate not in taken:
                    taken.add(candidate)
                    return candidate

    def _taken_ids(self) -> set[str]:
        """``_taken``, with the ids of the data installed since the last call added."""
        taken = self._taken
        for data in self._unscanned:
            for name in COLLECTIONS:
                taken.update(map(_ID, data.get(name, [])))
            for customer in data.get("customers", []):
                taken.update(map(_ID, customer.get("addresses") or []))
            for job in data.get("jobs", []):
                address = job.get("address")
                if address is not None:
                    taken.add(address["id"])
        self._unscanned.clear()
        return taken

    # -- paging

    @staticmethod
    def _page(
        name: str,
        ordered: list[Record],
        page: int,
        page_size: int,
        render: Callable[[Record], Record],
    ) -> Record:
        page_size = min(page_size, MAX_PAGE_SIZE)
        start = (page - 1) * page_size
        total = len(ordered)
        return {
            name: [render(r) for r in ordered[start : start + page_size]],
            "page": page,
            "page_size": page_size,
            "total_pages": math.ceil(total / page_size),
            "total_items": total,
        }

    # -- customers

    def list_customers(
        self,
        *,
        page: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
        q: str | None = None,
        sort_by: str = "created_at",
        sort_direction: str = "desc",
    ) -> Record:
        """One page in the API's envelope. Arguments must already be valid."""
        with self.lock:
            keep = None
            if q:
                needle = q.casefold()

                def keep(record: Record) -> bool:
                    return self.customers.matches(record, needle)

            ordered = self.customers.select(sort_by, sort_direction == "desc", ("q", q), keep)
            return self._page("customers", ordered, page, page_size, copy_customer)

    def get_customer(self, customer_id: str) -> Record | None:
        with self.lock:
            record = self.customers.get(customer_id)
            return None if record is None else copy_customer(record)

    def create_customer(self, body: Mapping[str, Any]) -> Record:
        """Create from a request body; raises ``ValidationFailed``."""
        patch, errors = check_customer_fields(body)
        if not has_name(patch):
            add_error(errors, "name", "is missing")
        if errors:
            raise ValidationFailed(errors)
        with self.lock:
            record = blank_customer(self.new_id("cus_"), self.clock.tick())
            record.update(patch)
            record["addresses"] = self._address_ids(patch.get("addresses", []), [])
            self.customers.put(record)
            self._notify(["customer.created"], record)
            return copy_customer(record)

    def update_customer(self, customer_id: str, body: Mapping[str, Any]) -> Record | None:
        """Change only the fields present in ``body``; ``None`` when there is no such customer.
        Raises ``ValidationFailed``."""
        patch, errors = check_customer_fields(body)
        if errors:
            raise ValidationFailed(errors)
        with self.lock:
            current = self.customers.get(customer_id)
            if current is None:
                return None
            record = copy_customer(current)
            record.update(patch)
            if not has_name(record):
                raise ValidationFailed({"name": ["is missing"]})
            if "addresses" in patch:
                record["addresses"] = self._address_ids(patch["addresses"], current["addresses"])
            record["updated_at"] = self.clock.tick()
            self.customers.put(record)
            self._notify(["customer.updated"], record)
            return copy_customer(record)

    def delete_customer(self, customer_id: str) -> bool:
        """Delete a customer. Like the API's, it does not cascade: the customer's jobs and
        invoices keep its id (a job then embeds just ``{"id": ...}``)."""
        with self.lock:
            record = self.customers.get(customer_id)
            if record is None:
                return False
            self._notify(["customer.deleted"], record)
            return self.customers.remove(customer_id)

    def _address_ids(self, addresses: list[Record], current: list[Record]) -> list[Record]:
        """Sent addresses keep an id that this customer already had; others get a new one."""
        known = {a["id"] for a in current}
        result = []
        for address in addresses:
            given = address.get("id")
            keep = given if given in known else None
            known.discard(keep)
            result.append({**address, "id": keep or self.new_id("adr_")})
        return result

    # -- jobs

    def list_jobs(
        self,
        *,
        page: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
        sort_by: str = "created_at",
        sort_direction: str = "desc",
        customer_id: str | None = None,
        employee_ids: Sequence[str] = (),
        work_status: Sequence[str] = (),
        scheduled_start_min: str | None = None,
        scheduled_start_max: str | None = None,
        scheduled_end_min: str | None = None,
        scheduled_end_max: str | None = None,
    ) -> Record:
        """One page of jobs in the API's envelope. Arguments must already be valid
        (timestamps in the stored form)."""
        conditions: list[Callable[[Record], bool]] = []
        if customer_id is not None:
            conditions.append(lambda j: j["customer_id"] == customer_id)
        if employee_ids:
            wanted = frozenset(employee_ids)
            conditions.append(lambda j: any(e["id"] in wanted for e in j["assigned_employees"]))
        if work_status:
            statuses = frozenset(work_status)
            conditions.append(lambda j: j["work_status"] in statuses)
        keys = job_sort_keys()
        for field, low, high in (
            ("scheduled_start", scheduled_start_min, scheduled_start_max),
            ("scheduled_end", scheduled_end_min, scheduled_end_max),
        ):
            if low is not None or high is not None:
                conditions.append(_between(keys[field], low, high))
        key = (
            customer_id,
            tuple(sorted(employee_ids)),
            tuple(sorted(work_status)),
            scheduled_start_min,
            scheduled_start_max,
            scheduled_end_min,
            scheduled_end_max,
        )
        with self.lock:
            ordered = self.jobs.select(sort_by, sort_direction == "desc", key, _all_of(conditions))
            return self._page("jobs", ordered, page, page_size, self._job_wire)

    def get_job(self, job_id: str) -> Record | None:
        with self.lock:
            job = self.jobs.get(job_id)
            return None if job is None else self._job_wire(job)

    def create_job(self, body: Mapping[str, Any]) -> Record:
        """Create from a request body; raises ``ValidationFailed``."""
        patch, errors = check_job_fields(body)
        with self.lock:
            customer_id = patch.get("customer_id")
            if customer_id is None:
                if not {"customer_id", "customer", "customer.id"} & errors.keys():
                    add_error(errors, "customer_id", "is missing")
            elif customer_id not in self.customers:
                add_error(errors, "customer_id", f"customer {customer_id} does not exist")
            employees = self._employees(patch, errors)
            schedule = {"scheduled_start": None, "scheduled_end": None, "arrival_window": None}
            schedule.update(patch.get("schedule", {}))
            check_schedule_order(schedule, errors)
            if errors or customer_id is None:
                raise ValidationFailed(errors)
            now = self.clock.tick()
            number = patch.get("invoice_number") or self._take_number()
            job = blank_job(self.new_id("job_"), customer_id, number, now)
            self._apply_job_patch(job, patch, schedule, employees)
            if "work_status" not in patch and schedule["scheduled_start"] is not None:
                job["work_status"] = "scheduled"
            stamp_work(job, job["work_status"], now)
            self.jobs.put(job)
            self._notify(["job.created"], job)
            return self._job_wire(job)

    def update_job(self, job_id: str, body: Mapping[str, Any]) -> Record | None:
        """Change only the fields present in ``body`` (``schedule`` key by key); ``None`` when
        there is no such job. Raises ``ValidationFailed``."""
        patch, errors = check_job_fields(body)
        if errors:
            raise ValidationFailed(errors)
        with self.lock:
            current = self.jobs.get(job_id)
            if current is None:
                return None
            customer_id = patch.get("customer_id")
            if customer_id is not None and customer_id not in self.customers:
                add_error(errors, "customer_id", f"customer {customer_id} does not exist")
            elif customer_id not in (None, current["customer_id"]) and self.invoices.lookup(
                "job_id", job_id
            ):
                add_error(errors, "customer_id", "cannot change: the job has invoices")
            employees = self._employees(patch, errors)
            schedule = {**current["schedule"], **patch.get("schedule", {})}
            check_schedule_order(schedule, errors)
            if errors:
                raise ValidationFailed(errors)
            job = copy_job(current)
            self._apply_job_patch(job, patch, schedule, employees)
            now = self.clock.tick()
            if job["work_status"] != current["work_status"]:
                stamp_work(job, job["work_status"], now)
            job["updated_at"] = now
            self.jobs.put(job)
            self._notify([job_update_event(current, job)], job)
            return self._job_wire(job)

    def delete_job(self, job_id: str) -> bool:
        """Delete a job; False when there is none. A job with invoices is ``Refused``."""
        with self.lock:
            if job_id not in self.jobs:
                return False
            if self.invoices.lookup("job_id", job_id):
                raise Refused("job has invoices and cannot be deleted")
            self._notify(["job.deleted"], self.jobs.get(job_id))
            self.lines.drop(job_id)
            return self.jobs.remove(job_id)

    def _apply_job_patch(
        self, job: Record, patch: Record, schedule: Record, employees: list[Record] | None
    ) -> None:
        for name in ("description", "notes", "invoice_number", "customer_id", "tags"):
            if name in patch:
                job[name] = patch[name]
        if "work_status" in patch:
            job["work_status"] = patch["work_status"]
        if "address" in patch:
            address = patch["address"]
            if address is not None and address["id"]:
                self._taken.add(address["id"])
            job["address"] = (
                None if address is None else {**address, "id": address["id"] or self.new_id("adr_")}
            )
        job["schedule"] = schedule
        if employees is not None:
            job["assigned_employees"] = employees

    def _employees(self, patch: Record, errors: Errors) -> list[Record] | None:
        if "assigned_employees" not in patch:
            return None
        found = []
        for employee_id in patch["assigned_employees"]:
            employee = self.employees.get(employee_id)
            if employee is None:
                add_error(errors, "assigned_employees", f"unknown employee {employee_id}")
            else:
                found.append(employee)
        return found

    def _job_wire(self, job: Record) -> Record:
        total = balance = 0
        for invoice in self.invoices.lookup("job_id", job["id"]):
            if invoice["status"] not in INVOICE_CLOSED:
                total += invoice["amount"]
                balance += invoice["outstanding_balance"]
        return job_wire(job, self.customers.get(job["customer_id"]), total, balance)

    def _take_number(self) -> str:
        if self._next_number is None:
            numbers = [
                int(head)
                for collection in (self.jobs, self.invoices)
                for head in (r["invoice_number"].partition("-")[0] for r in collection.all())
                if head.isdigit()
            ]
            self._next_number = max([FIRST_JOB_NUMBER - 1, *numbers]) + 1
        number = str(self._next_number)
        self._next_number += 1
        return number

    # -- invoices

    def list_invoices(
        self,
        *,
        page: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
        sort_by: str = "created_at",
        sort_direction: str = "desc",
        status: Sequence[str] = (),
        customer_uuid: Sequence[str] = (),
        created_at_min: str | None = None,
        created_at_max: str | None = None,
        due_at_min: str | None = None,
        due_at_max: str | None = None,
        paid_at_min: str | None = None,
        paid_at_max: str | None = None,
    ) -> Record:
        """One page of invoices in the API's envelope. Arguments must already be valid."""
        conditions: list[Callable[[Record], bool]] = []
        if status:
            statuses = frozenset(status)
            conditions.append(lambda r: r["status"] in statuses)
        if customer_uuid:
            customers = frozenset(customer_uuid)
            conditions.append(lambda r: r["customer_id"] in customers)
        bounds = (
            ("created_at", created_at_min, created_at_max),
            ("due_at", due_at_min, due_at_max),
            ("paid_at", paid_at_min, paid_at_max),
        )
        for field, low, high in bounds:
            if low is not None or high is not None:
                conditions.append(_between(itemgetter(field), low, high))
        key = (tuple(sorted(status)), tuple(sorted(customer_uuid)), bounds)
        with self.lock:
            ordered = self.invoices.select(
                sort_by, sort_direction == "desc", key, _all_of(conditions)
            )
            return self._page("invoices", ordered, page, page_size, self._invoice_wire)

    def get_invoice(self, invoice_id: str) -> Record | None:
        with self.lock:
            invoice = self.invoices.get(invoice_id)
            return None if invoice is None else self._invoice_wire(invoice)

    def create_invoice(self, body: Mapping[str, Any]) -> Record:
        """Create from a request body; raises ``ValidationFailed``.

        The customer comes from ``customer_id`` or the job's; an invoice number not given is
        the job's number (``1043``, then ``1043-2`` …) or the next free number.
        """
        patch, errors = check_invoice_fields(body, creating=True)
        totals = settle_totals(None, patch, errors) if not errors else {}
        with self.lock:
            job = self._check_invoice_refs(patch, errors)
            number = patch.get("invoice_number")
            if number is not None and self.invoices.lookup("invoice_number", number):
                add_error(errors, "invoice_number", "has already been taken")
            if errors:
                raise ValidationFailed(errors)
            now = self.clock.tick()
            invoice = blank_invoice(
                self.new_id("inv_"), number or self._invoice_number(job), totals["amount"], now
            )
            invoice.update(totals)
            invoice["customer_id"] = patch.get("customer_id") or (job and job["customer_id"])
            invoice["job_id"] = patch.get("job_id")
            invoice["due_at"] = patch.get("due_at")
            invoice["status"] = patch.get("status", "draft")
            if invoice["status"] in ("sent", "paid"):
                invoice["sent_at"] = now
            if invoice["status"] == "paid":
                invoice["paid_at"] = now
            self.invoices.put(invoice)
            self._notify(["invoice.created"], invoice)
            return self._invoice_wire(invoice)

    def change_invoice(self, invoice_id: str, body: Mapping[str, Any]) -> Record | None:
        """What a person does in HCP's web app (the API cannot): change an invoice's
        ``status``, ``amount`` (or its ``subtotal`` and ``tax_amount``: ``settle_totals``),
        ``due_at`` or ``invoice_number``. ``None`` when there is no such invoice; raises
        ``ValidationFailed``."""
        patch, errors = check_invoice_fields(body, creating=False)
        with self.lock:
            current = self.invoices.get(invoice_id)
            if current is None:
                return None
            if not errors:
                patch.update(settle_totals(current, patch, errors))
            number = patch.get("invoice_number")
            if number not in (None, current["invoice_number"]) and self.invoices.lookup(
                "invoice_number", number
            ):
                add_error(errors, "invoice_number", "has already been taken")
            payments = self.payments.lookup("invoice_id", invoice_id)
            invoice = {**current, **patch}
            invoice["outstanding_balance"] = balance_of(invoice["amount"], payments)
            if invoice["outstanding_balance"] < 0:
                add_error(errors, "amount", "is less than the payments received")
            if errors:
                raise ValidationFailed(errors)
            now = self.clock.tick()
            if "status" not in patch:
                invoice["status"] = self._settled_status(invoice)
            self._stamp_invoice(invoice, current, now)
            self.invoices.put(invoice)
            self._notify(invoice_change_events(current, invoice), invoice)
            return self._invoice_wire(invoice)

    def _check_invoice_refs(self, patch: Record, errors: Errors) -> Record | None:
        job = None
        job_id = patch.get("job_id")
        if job_id is not None:
            job = self.jobs.get(job_id)
            if job is None:
                add_error(errors, "job_id", f"job {job_id} does not exist")
        customer_id = patch.get("customer_id")
        if customer_id is not None:
            if customer_id not in self.customers:
                add_error(errors, "customer_id", f"customer {customer_id} does not exist")
            elif job is not None and job["customer_id"] != customer_id:
                add_error(errors, "customer_id", "is not the customer of the job")
        return job

    def _invoice_number(self, job: Record | None) -> str:
        if job is not None:
            base = job["invoice_number"]
            candidate, n = base, 1
            while self.invoices.lookup("invoice_number", candidate):
                n += 1
                candidate = f"{base}-{n}"
            return str(candidate)
        while True:
            candidate = self._take_number()
            if not self.invoices.lookup("invoice_number", candidate):
                return candidate

    @staticmethod
    def _settled_status(invoice: Record) -> str:
        """``paid`` once nothing is owed, back to ``sent`` when something is owed again."""
        status = str(invoice["status"])
        if invoice["outstanding_balance"] == 0 and status in ("draft", "sent"):
            return "paid"
        if invoice["outstanding_balance"] > 0 and status == "paid":
            return "sent"
        return status

    @staticmethod
    def _stamp_invoice(invoice: Record, before: Record, now: str) -> None:
        if invoice["status"] in ("sent", "paid") and invoice["sent_at"] is None:
            invoice["sent_at"] = now
        if invoice["status"] == "paid" and before["status"] != "paid":
            invoice["paid_at"] = now
        elif invoice["status"] != "paid":
            invoice["paid_at"] = None
        invoice["updated_at"] = now

    def _invoice_wire(self, invoice: Record) -> Record:
        payments = None
        if self.nest_payments:
            payments = self.payments.lookup("invoice_id", invoice["id"])
        return invoice_wire(invoice, payments, live=self.live_invoices)

    # -- payments

    def list_payments(
        self, invoice_id: str, *, page: int = 1, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Record | None:
        """One page of an invoice's payments, oldest first; ``None`` when there is no such
        invoice."""
        with self.lock:
            if invoice_id not in self.invoices:
                return None
            payments = self.payments.lookup("invoice_id", invoice_id)
            return self._page("payments", payments, page, page_size, payment_wire)

    def record_payment(self, invoice_id: str, body: Mapping[str, Any]) -> Record | None:
        """Record a payment on an invoice (what a customer paying does; the API cannot).

        Updates the invoice's ``outstanding_balance`` and marks it ``paid`` when nothing is
        owed any more. Returns the payment as ``GET /invoices/{id}/payments`` shows it, or
        ``None`` when there is no such invoice; raises ``ValidationFailed`` (a closed invoice,
        more than is owed).
        """
        payment, errors = check_payment_fields(body)
        with self.lock:
            current = self.invoices.get(invoice_id)
            if current is None:
                return None
            if current["status"] in INVOICE_CLOSED:
                add_error(errors, "invoice", f"is {current['status']} and takes no payments")
            owed = current["outstanding_balance"]
            amount = payment["amount"]
            if payment["status"] == "succeeded" and amount is not None:
                amount -= payment["refunded_amount"]  # what it still holds
                if amount > owed:
                    add_error(errors, "amount", f"is more than the outstanding balance ({owed})")
            if errors:
                raise ValidationFailed(errors)
            now = self.clock.tick()
            payment = {
                "id": self.new_id("pay_"),
                "invoice_id": invoice_id,
                **payment,
                "processed_at": payment["processed_at"] or now,
                "created_at": now,
            }
            self.payments.put(payment)
            invoice = dict(current)
            if payment["status"] == "succeeded":
                invoice["outstanding_balance"] = owed - amount
            invoice["status"] = self._settled_status(invoice)
            self._stamp_invoice(invoice, current, now)
            if invoice["status"] == "paid" and current["status"] != "paid":
                invoice["paid_at"] = payment["processed_at"]
            self.invoices.put(invoice)
            self._notify(payment_events(payment, current, invoice), invoice)
            return payment_wire(payment)

    def refund_payment(self, payment_id: str, body: Mapping[str, Any]) -> Record | None:
        """Give back ``body["amount"]`` cents of a succeeded payment (omitted: all that is
        left of it), as HCP does when a pro refunds (the API cannot).

        Refunds add up on the payment's ``refunded_amount``, never past its amount; one that
        gives back the rest makes the payment ``refunded``. The payment keeps its id. Its
        invoice's balance goes up by the refund (a ``paid`` invoice is ``sent`` again, owing)
        and its ``updated_at`` moves; one ``invoice.refund.succeeded`` event is sent. Returns
        the payment as ``GET /invoices/{id}/payments`` shows it, or ``None`` when there is no
        such payment; raises ``ValidationFailed`` (a payment that did not succeed, more than
        it can give back).
        """
        with self.lock:
            current = self.payments.get(payment_id)
            if current is None:
                return None
            amount, errors = check_refund(current, body)
            if errors:
                raise ValidationFailed(errors)
            now = self.clock.tick()
            payment = dict(current)
            payment["refunded_amount"] = current["refunded_amount"] + amount
            if payment["refunded_amount"] == payment["amount"]:
                payment["status"] = "refunded"
            self.payments.put(payment)
            before = self.invoices.get(payment["invoice_id"])
            if before is not None:
                invoice = dict(before)
                invoice["outstanding_balance"] = before["outstanding_balance"] + amount
                invoice["status"] = self._settled_status(invoice)
                self._stamp_invoice(invoice, before, now)
                self.invoices.put(invoice)
                self._notify(refund_events(), invoice)
            return payment_wire(payment)

    # -- webhooks

    def _notify(self, events: list[str], record: Record | None) -> None:
        """Tell the listener of a change: each of ``events`` with the stored ``record`` as
        GET would return it now (customers, jobs and invoices by the events' prefix) and the
        change's time. The caller holds the lock, so the listener hears changes in order."""
        listener = self.listener
        if listener is None or not events or record is None:
            return
        prefix = events[0].split(".", 1)[0]
        if prefix == "customer":
            shown = wire(copy_customer(record))
        elif prefix == "job":
            shown = self._job_wire(record)
        else:
            shown = self._invoice_wire(record)
        occurred_at = self.clock.current()
        for event in events:
            listener(event, shown, occurred_at)

    # -- knobs and log

    def take_token(self) -> bool:
        with self.lock:
            return self.limiter is None or self.limiter.take()

    def inject_fault(self) -> bool:
        """Whether to answer this request with an injected 500 (deterministic sequence)."""
        with self.lock:
            return self.error_rate > 0 and self._faults.random() < self.error_rate

    def log_request(self, method: str, path: str, query: str, status: int) -> None:
        with self.lock:
            self._log.append({"method": method, "path": path, "query": query, "status": status})

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(entry) for entry in self._log]

    def clear_requests(self) -> None:
        with self.lock:
            self._log.clear()
