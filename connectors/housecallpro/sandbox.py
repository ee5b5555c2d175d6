"""A stateful local emulator of the Housecall Pro API, for the demo, the tests and the benchmarks.

It speaks the contract in ``spec/housecallpro-openapi.yaml`` and what the live API is known to
do (``spec/HCP-REAL-API-NOTES.md``) for the customers endpoints:

    GET    /customers                 page, page_size (max 200), q, sort_by, sort_direction
    POST   /customers                 201 + the record
    GET    /customers/{id}            200 / 404 {"error": {"message": "customer not found"}}
    PUT    /customers/{id}            partial update; ``addresses`` replaces the list
    DELETE /customers/{id}            204

Authentication is ``Authorization: Token KEY`` or ``Bearer KEY`` (401 ``{"message":
"Unauthorized"}`` otherwise); unknown routes get an HTML 404 page, like the real API.

Knobs (all deterministic given ``random_seed``): ``latency_ms`` per request, ``error_rate``
(injected 500s that never apply the write), ``rate_limit`` (a token bucket; 429 with
``Retry-After: 1``). Unauthenticated helper endpoints for tests and demos:

    GET    /_sandbox/health           {"ok": true}
    GET    /_sandbox/requests         {"requests": [{method, path, query, status}, ...]}
    DELETE /_sandbox/requests         clear that log
    POST   /_sandbox/reset            restore the seeded (or loaded) data

The data lives in a :class:`SandboxState` (``app.state.sandbox``) made of one
:class:`Collection` per resource, so that jobs, invoices and payments can be added beside
customers. :class:`SyncASGITransport` lets a synchronous ``httpx.Client`` talk to the app
in-process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hmac
import json
import math
import random
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncengine.errors import ConfigError, Problem

Record = dict[str, Any]
Errors = dict[str, list[str]]

EPOCH = int(dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp())
"""Seeded timestamps are offsets from this instant, never from the wall clock."""

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 200
REQUEST_LOG_LIMIT = 100_000
"""The request log keeps this many most recent entries."""

CUSTOMER_STRING_FIELDS = (
    "first_name",
    "last_name",
    "email",
    "mobile_number",
    "home_number",
    "work_number",
    "company",
    "lead_source",
)
CUSTOMER_NAME_FIELDS = ("first_name", "last_name", "email", "mobile_number", "company")
"""A customer needs at least one of these."""
CUSTOMER_SORT_FIELDS = ("created_at", "updated_at", "first_name", "last_name", "email")
ADDRESS_TYPES = ("billing", "service")
ADDRESS_STRING_FIELDS = ("street", "street_line_2", "city", "state", "zip", "country")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
_HEX_ID_BITS = 128


# ------------------------------------------------------------------------------------ time


def format_timestamp(seconds: int) -> str:
    """``2026-01-02T03:04:05Z`` for a Unix time in seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def parse_timestamp(text: str) -> int:
    """Unix seconds of an ISO 8601 timestamp with a zone (``Z`` or an offset)."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return int(value.timestamp())


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


# ------------------------------------------------------------------------------ validation


class ValidationFailed(Exception):
    """A request body or data record is invalid; ``errors`` maps each field to its messages."""

    def __init__(self, errors: Errors) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))


def _add(errors: Errors, key: str, message: str) -> None:
    errors.setdefault(key, []).append(message)


def _check_string(value: Any, key: str, errors: Errors) -> str | None:
    if value is None or isinstance(value, str):
        return value
    _add(errors, key, "must be a string")
    return None


def _check_address(value: Any, key: str, errors: Errors) -> Record | None:
    if not isinstance(value, dict):
        _add(errors, key, "must be an object")
        return None
    address: Record = {"id": value.get("id") if isinstance(value.get("id"), str) else None}
    kind = value.get("type", "service")
    if kind not in ADDRESS_TYPES:
        _add(errors, f"{key}.type", "must be billing or service")
    address["type"] = kind
    for name in ADDRESS_STRING_FIELDS:
        address[name] = _check_string(value.get(name), f"{key}.{name}", errors)
    return address


def check_customer_fields(body: Mapping[str, Any]) -> tuple[Record, Errors]:
    """The writable customer fields present in ``body``, checked; unknown keys are dropped.

    Returns the patch and the errors found (all of them, not just the first). Addresses keep
    a client-sent ``id`` for the caller to honour or replace.
    """
    patch: Record = {}
    errors: Errors = {}
    for name in CUSTOMER_STRING_FIELDS:
        if name not in body:
            continue
        value = _check_string(body[name], name, errors)
        if name == "email" and value is not None:
            value = value.strip() or None
            if value is not None and not _EMAIL.match(value):
                _add(errors, name, "is invalid")
        patch[name] = value
    if "notifications_enabled" in body:
        flag = body["notifications_enabled"]
        if isinstance(flag, bool):
            patch["notifications_enabled"] = flag
        else:
            _add(errors, "notifications_enabled", "must be true or false")
    if "tags" in body:
        tags = body["tags"]
        if tags is None:
            patch["tags"] = []
        elif isinstance(tags, list) and all(isinstance(t, str) for t in tags):
            patch["tags"] = list(tags)
        else:
            _add(errors, "tags", "must be an array of strings")
    if "addresses" in body:
        addresses = body["addresses"]
        if addresses is None:
            patch["addresses"] = []
        elif isinstance(addresses, list):
            checked = [
                _check_address(a, f"addresses[{i}]", errors) for i, a in enumerate(addresses)
            ]
            patch["addresses"] = [a for a in checked if a is not None]
        else:
            _add(errors, "addresses", "must be an array of objects")
    return patch, errors


def has_name(record: Mapping[str, Any]) -> bool:
    return any(
        isinstance(record.get(name), str) and record[name].strip() for name in CUSTOMER_NAME_FIELDS
    )


def blank_customer(customer_id: str, timestamp: str) -> Record:
    """A customer with every field of the spec's ``Customer``, all absent."""
    return {
        "id": customer_id,
        "first_name": None,
        "last_name": None,
        "email": None,
        "mobile_number": None,
        "home_number": None,
        "work_number": None,
        "company": None,
        "notifications_enabled": False,
        "lead_source": None,
        "tags": [],
        "addresses": [],
        "created_at": timestamp,
        "updated_at": timestamp,
    }


def copy_customer(record: Record) -> Record:
    """A copy deep enough that the caller can change it without touching the store."""
    return {
        **record,
        "tags": list(record["tags"]),
        "addresses": [dict(a) for a in record["addresses"]],
    }


# ------------------------------------------------------------------------------ collection


class Collection:
    """One resource's records by id, in creation order, with cached sort orders.

    Stored records are never changed in place: every write stores a new dict, so readers can
    copy a record without racing a writer. The owner (``SandboxState``) holds the lock.
    """

    def __init__(
        self,
        name: str,
        id_prefix: str,
        sort_fields: tuple[str, ...],
        search_text: Callable[[Record], str],
        copy: Callable[[Record], Record],
    ) -> None:
        self.name = name
        self.id_prefix = id_prefix
        self.sort_fields = sort_fields
        self.copy = copy
        self._search_text = search_text
        self._records: dict[str, Record] = {}
        self._orders: dict[tuple[str, bool], list[Record]] = {}
        self._texts: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._records

    def get(self, record_id: str) -> Record | None:
        return self._records.get(record_id)

    def all(self) -> list[Record]:
        return list(self._records.values())

    def put(self, record: Record) -> None:
        self._records[record["id"]] = record
        self._texts.pop(record["id"], None)
        self._orders.clear()

    def remove(self, record_id: str) -> bool:
        if self._records.pop(record_id, None) is None:
            return False
        self._texts.pop(record_id, None)
        self._orders.clear()
        return True

    def replace_all(self, records: Iterable[Record]) -> None:
        self._records = {r["id"]: r for r in records}
        self._texts.clear()
        self._orders.clear()

    def ordered(self, sort_by: str, descending: bool) -> list[Record]:
        """Every record sorted by one field, ties broken by id; nulls sort last ascending."""
        key = (sort_by, descending)
        order = self._orders.get(key)
        if order is None:

            def sort_key(record: Record) -> tuple[bool, Any, str]:
                value = record.get(sort_by)
                if isinstance(value, str):
                    value = value.casefold()
                return (value is None, "" if value is None else value, record["id"])

            order = sorted(self._records.values(), key=sort_key, reverse=descending)
            self._orders[key] = order
        return order

    def matches(self, record: Record, needle: str) -> bool:
        """Whether the case-folded ``needle`` occurs in the record's searchable text."""
        text = self._texts.get(record["id"])
        if text is None:
            text = self._search_text(record).casefold()
            self._texts[record["id"]] = text
        return needle in text


def customer_search_text(record: Record) -> str:
    """What ``q`` searches: names, email, mobile (as stored and as digits), streets, cities."""
    first, last = record.get("first_name") or "", record.get("last_name") or ""
    mobile = record.get("mobile_number") or ""
    parts = [first, last, f"{first} {last}", record.get("email") or "", mobile]
    parts.append("".join(c for c in mobile if c.isdigit()))
    for address in record.get("addresses") or []:
        parts.append(address.get("street") or "")
        parts.append(address.get("city") or "")
    return "\n".join(parts)


# ------------------------------------------------------------------------------ seed data

_FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Carlos", "Karen", "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Sandra", "Mark", "Ashley",
    "Wei", "Priya", "Luis", "Fatima", "Kevin", "Emily", "Brian", "Maria", "Jose", "Aisha",
    "Andrew", "Olivia",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Nguyen", "Patel", "Kim", "Chen",
)  # fmt: skip
_COMPANIES = (
    "Acme Property Management", "Blue Oak Realty", "Summit Dental Group", "Riverside Cafe",
    "Northwind Offices", "Greenleaf Apartments", "Cedar Point HOA", "Lakeside Storage",
    "Pioneer Auto Body", "Harbor View Hotel",
)  # fmt: skip
_CITIES = (
    ("Austin", "TX", "787"), ("Denver", "CO", "802"), ("Phoenix", "AZ", "850"),
    ("Raleigh", "NC", "276"), ("Portland", "OR", "972"), ("Columbus", "OH", "432"),
    ("Nashville", "TN", "372"), ("Tampa", "FL", "336"), ("Boise", "ID", "837"),
    ("Madison", "WI", "537"),
)  # fmt: skip
_STREETS = (
    "Oak", "Maple", "Cedar", "Pine", "Elm", "Lakeview", "Sunset", "Highland", "Willow", "Park",
    "Mill", "Ridge", "Meadow", "Church", "Spring",
)  # fmt: skip
_STREET_SUFFIXES = ("St", "Ave", "Rd", "Ln", "Dr", "Blvd", "Ct", "Way")
_TAGS = ("vip", "residential", "commercial", "maintenance-plan", "referral", "warranty")
_LEAD_SOURCES = ("Google", "Yelp", "Referral", "Facebook", "Angi", "Nextdoor", "Website")


def _hex_id(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.getrandbits(_HEX_ID_BITS):032x}"


def _phone(rng: random.Random, used: set[str]) -> str:
    """A unique 555 number in one of the formats people type: (555) 201-3344, 555-201-3344,
    +15552013344."""
    while True:
        exchange, line = rng.randint(200, 999), rng.randint(0, 9999)
        digits = f"555{exchange:03d}{line:04d}"
        if digits not in used:
            used.add(digits)
            break
    style = rng.randrange(3)
    if style == 0:
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    if style == 1:
        return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"
    return f"+1{digits}"


def _address(rng: random.Random, kind: str) -> Record:
    city, state, zip_prefix = rng.choice(_CITIES)
    line_2 = None
    if rng.random() < 0.1:
        line_2 = f"{rng.choice(('Apt', 'Suite', 'Unit'))} {rng.randint(1, 400)}"
    return {
        "id": _hex_id(rng, "adr_"),
        "type": kind,
        "street": f"{rng.randint(100, 9999)} {rng.choice(_STREETS)} {rng.choice(_STREET_SUFFIXES)}",
        "street_line_2": line_2,
        "city": city,
        "state": state,
        "zip": f"{zip_prefix}{rng.randint(0, 99):02d}",
        "country": "US",
    }


def generate_customers(count: int, random_seed: int = 0) -> list[Record]:
    """``count`` realistic customers; the same arguments always give identical records."""
    rng = random.Random(random_seed)
    phones: set[str] = set()
    customers: list[Record] = []
    created = EPOCH
    for n in range(1, count + 1):
        created += rng.randint(60, 3600)
        updated = created if rng.random() < 0.6 else created + rng.randint(60, 90 * 86400)
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        record = blank_customer(_hex_id(rng, "cus_"), format_timestamp(created))
        record["updated_at"] = format_timestamp(updated)
        record["first_name"], record["last_name"] = first, last
        if rng.random() < 0.92:
            record["email"] = f"{first}.{last}{n}@example.com".lower()
        if rng.random() < 0.9:
            record["mobile_number"] = _phone(rng, phones)
        if rng.random() < 0.2:
            record["home_number"] = _phone(rng, phones)
        if rng.random() < 0.15:
            record["work_number"] = _phone(rng, phones)
        if rng.random() < 0.25:
            record["company"] = rng.choice(_COMPANIES)
        record["notifications_enabled"] = rng.random() < 0.7
        if rng.random() < 0.6:
            record["lead_source"] = rng.choice(_LEAD_SOURCES)
        record["tags"] = rng.sample(_TAGS, rng.choice((0, 0, 1, 1, 2)))
        addresses = []
        if rng.random() < 0.85:
            addresses.append(_address(rng, "service"))
        if rng.random() < 0.25:
            addresses.append(_address(rng, "billing"))
        record["addresses"] = addresses
        customers.append(record)
    return customers


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


# ------------------------------------------------------------------------------ the state


class SandboxState:
    """Everything the sandbox knows, behind one lock: data, knobs, request log.

    Methods lock for themselves; ``lock`` is re-entrant, so a test may hold it around several
    calls. Records returned are copies.
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
        self.limiter: TokenBucket | None = TokenBucket(rate_limit) if rate_limit else None
        self.clock = Clock(now)
        self.customers = Collection(
            "customers", "cus_", CUSTOMER_SORT_FIELDS, customer_search_text, copy_customer
        )
        self.collections: dict[str, Collection] = {"customers": self.customers}
        self._ids = random.Random(f"ids:{random_seed}")
        self._faults = random.Random(f"faults:{random_seed}")
        self._log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)

        if data_file is not None:
            initial = load_data_file(data_file)
        else:
            initial = {"customers": generate_customers(seed or 0, random_seed)}
        self._initial = initial
        self._install(initial)

    # -- data as a whole

    def _install(self, data: Mapping[str, list[Record]]) -> None:
        with self.lock:
            for name, collection in self.collections.items():
                records = [collection.copy(r) for r in data.get(name, [])]
                collection.replace_all(records)
                for record in records:
                    self.clock.advance_to(parse_timestamp(record["updated_at"]))
                    self.clock.advance_to(parse_timestamp(record["created_at"]))

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
        """All data as ``{"customers": [...]}``, in creation order; ``load()`` accepts it."""
        with self.lock:
            return {name: [c.copy(r) for r in c.all()] for name, c in self.collections.items()}

    def reset(self) -> None:
        """Back to the seeded (or loaded) data. Ids handed out later stay unique."""
        self._install(self._initial)

    def new_id(self, prefix: str) -> str:
        with self.lock:
            return _hex_id(self._ids, prefix)

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
        page_size = min(page_size, MAX_PAGE_SIZE)
        with self.lock:
            ordered = self.customers.ordered(sort_by, sort_direction == "desc")
            if q:
                needle = q.casefold()
                ordered = [r for r in ordered if self.customers.matches(r, needle)]
            start = (page - 1) * page_size
            items = [copy_customer(r) for r in ordered[start : start + page_size]]
            total = len(ordered)
        return {
            "customers": items,
            "page": page,
            "page_size": page_size,
            "total_pages": math.ceil(total / page_size),
            "total_items": total,
        }

    def get_customer(self, customer_id: str) -> Record | None:
        with self.lock:
            record = self.customers.get(customer_id)
            return None if record is None else copy_customer(record)

    def create_customer(self, body: Mapping[str, Any]) -> Record:
        """Create from a request body; raises ``ValidationFailed``."""
        patch, errors = check_customer_fields(body)
        if not has_name(patch):
            _add(errors, "name", "is missing")
        if errors:
            raise ValidationFailed(errors)
        with self.lock:
            record = blank_customer(self.new_id("cus_"), self.clock.tick())
            record.update(patch)
            record["addresses"] = self._address_ids(patch.get("addresses", []), [])
            self.customers.put(record)
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
            return copy_customer(record)

    def delete_customer(self, customer_id: str) -> bool:
        with self.lock:
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


# ------------------------------------------------------------------------------ data files


def check_data(data: Any, source: str) -> dict[str, list[Record]]:
    """Check a ``{"customers": [...]}`` document and return it in stored form.

    Missing ids and timestamps are filled in deterministically (timestamps from ``EPOCH``).
    Raises ``ConfigError`` listing every problem, each located in ``source``.
    """
    if not isinstance(data, dict):
        raise ConfigError('must be a JSON object like {"customers": [...]}', location=source)
    problems: list[Problem] = []
    for key in data:
        if key != "customers":
            problems.append(
                Problem(source, f"unknown collection {key!r}", fix="known collections: customers")
            )
    customers = data.get("customers", [])
    if not isinstance(customers, list):
        problems.append(Problem(f"{source}: customers", "must be an array"))
        customers = []
    ids = random.Random("sandbox-data")
    seen: set[str] = set()
    result: list[Record] = []
    for index, item in enumerate(customers):
        where = f"{source}: customers[{index}]"
        if not isinstance(item, dict):
            problems.append(Problem(where, "must be an object"))
            continue
        patch, errors = check_customer_fields(item)
        if not has_name(patch):
            _add(errors, "name", "is missing")
        record_id = item.get("id")
        if record_id is None:
            record_id = _hex_id(ids, "cus_")
        elif not isinstance(record_id, str) or not record_id:
            _add(errors, "id", "must be a non-empty string")
        elif record_id in seen:
            _add(errors, "id", f"duplicate id {record_id!r}")
        stamps: dict[str, str] = {}
        for name in ("created_at", "updated_at"):
            value = item.get(name)
            if value is None:
                stamps[name] = stamps.get("created_at") or format_timestamp(EPOCH + index)
                continue
            try:
                stamps[name] = format_timestamp(parse_timestamp(value))
            except (TypeError, ValueError):
                _add(errors, name, "must be an ISO 8601 timestamp with a time zone")
        for field, messages in errors.items():
            problems.extend(Problem(f"{where}.{field}", m) for m in messages)
        if errors:
            continue
        seen.add(record_id)
        record = blank_customer(record_id, stamps["created_at"])
        record.update(patch)
        record["updated_at"] = stamps["updated_at"]
        record["addresses"] = [
            {**a, "id": a["id"] or _hex_id(ids, "adr_")} for a in patch.get("addresses", [])
        ]
        result.append(record)
    if problems:
        raise ConfigError(problems)
    return {"customers": result}


def load_data_file(path: str) -> dict[str, list[Record]]:
    """Read and check a sandbox data file; ``ConfigError`` naming the file when it is bad."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read sandbox data file: {exc}", location=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", location=path
        ) from None
    return check_data(data, path)


# ------------------------------------------------------------------------------ the app

_NOT_FOUND_PAGE = """<!DOCTYPE html>
<html>
<head><title>Page not found (404)</title></head>
<body>
<h1>Page not found</h1>
<p>The page you requested does not exist.</p>
</body>
</html>
"""

Endpoint = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def _invalid(errors: Errors) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=422)


def _authorized(header: str | None, api_key: str) -> bool:
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("token", "bearer"):
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


async def _json_object(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _list_params(request: Request) -> tuple[dict[str, Any], Errors]:
    params = request.query_params
    errors: Errors = {}
    values: dict[str, Any] = {}
    for name, default in (("page", 1), ("page_size", DEFAULT_PAGE_SIZE)):
        raw = params.get(name)
        if raw is None or raw == "":
            values[name] = default
            continue
        try:
            number = int(raw)
        except ValueError:
            _add(errors, name, "must be an integer")
            continue
        if number < 1:
            _add(errors, name, "must be greater than 0")
        values[name] = number
    sort_by = params.get("sort_by") or "created_at"
    if sort_by not in CUSTOMER_SORT_FIELDS:
        _add(errors, "sort_by", f"must be one of {', '.join(CUSTOMER_SORT_FIELDS)}")
    values["sort_by"] = sort_by
    direction = (params.get("sort_direction") or "desc").lower()
    if direction not in ("asc", "desc"):
        _add(errors, "sort_direction", "must be asc or desc")
    values["sort_direction"] = direction
    values["q"] = params.get("q") or None
    return values, errors


def _wire(value: Any) -> Any:
    """A record as the API sends it: keys without a value are left out, because the spec's
    OpenAPI 3.1 string fields do not allow null (Prism's response validation holds us to it)."""
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def _customer_routes(state: SandboxState) -> list[Route]:
    async def list_customers(request: Request) -> Response:
        values, errors = _list_params(request)
        if errors:
            return _invalid(errors)
        return JSONResponse(_wire(state.list_customers(**values)))

    async def create_customer(request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return _invalid({"body": ["must be a JSON object"]})
        try:
            return JSONResponse(_wire(state.create_customer(body)), status_code=201)
        except ValidationFailed as exc:
            return _invalid(exc.errors)

    async def get_customer(request: Request) -> Response:
        record = state.get_customer(request.path_params["customer_id"])
        if record is None:
            return _error(404, "customer not found")
        return JSONResponse(_wire(record))

    async def update_customer(request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return _invalid({"body": ["must be a JSON object"]})
        try:
            record = state.update_customer(request.path_params["customer_id"], body)
        except ValidationFailed as exc:
            return _invalid(exc.errors)
        if record is None:
            return _error(404, "customer not found")
        return JSONResponse(_wire(record))

    async def delete_customer(request: Request) -> Response:
        if not state.delete_customer(request.path_params["customer_id"]):
            return _error(404, "customer not found")
        return Response(status_code=204)

    def api(endpoint: Endpoint) -> Endpoint:
        """Auth, rate limit and fault injection in front of an API endpoint, in that order."""

        async def guarded(request: Request) -> Response:
            if not _authorized(request.headers.get("authorization"), state.api_key):
                return JSONResponse({"message": "Unauthorized"}, status_code=401)
            if not state.take_token():
                response = _error(429, "rate limit exceeded")
                response.headers["Retry-After"] = "1"
                return response
            if state.inject_fault():
                return _error(500, "internal server error (injected)")
            return await endpoint(request)

        return guarded

    return [
        Route("/customers", api(list_customers), methods=["GET"]),
        Route("/customers", api(create_customer), methods=["POST"]),
        Route("/customers/{customer_id}", api(get_customer), methods=["GET"]),
        Route("/customers/{customer_id}", api(update_customer), methods=["PUT"]),
        Route("/customers/{customer_id}", api(delete_customer), methods=["DELETE"]),
    ]


def _sandbox_routes(state: SandboxState) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def list_requests(request: Request) -> Response:
        return JSONResponse({"requests": state.requests()})

    async def clear_requests(request: Request) -> Response:
        state.clear_requests()
        return JSONResponse({"ok": True})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    return [
        Route("/_sandbox/health", health, methods=["GET"]),
        Route("/_sandbox/requests", list_requests, methods=["GET"]),
        Route("/_sandbox/requests", clear_requests, methods=["DELETE"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ]


async def _html_not_found(request: Request, exc: Exception) -> Response:
    return HTMLResponse(_NOT_FOUND_PAGE, status_code=404)


class _LogAndDelay:
    """Outermost middleware: adds ``latency_ms`` and logs every non-``/_sandbox/`` request
    with the status it got."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.state.latency_ms > 0:
                await anyio.sleep(self.state.latency_ms / 1000)
            await self.app(scope, receive, send_and_note)
        finally:
            self.state.log_request(
                scope["method"], scope["path"], scope["query_string"].decode("latin-1"), status
            )


def create_app(
    api_key: str,
    *,
    seed: int | None = None,
    latency_ms: int = 0,
    error_rate: float = 0.0,
    rate_limit: float | None = None,
    data_file: str | None = None,
    random_seed: int = 0,
) -> Starlette:
    """The sandbox as an ASGI app; its ``SandboxState`` is ``app.state.sandbox``.

    ``seed`` is the number of generated customers (none when ``None``); ``data_file`` loads
    ``{"customers": [...]}`` instead. Bad arguments or a bad data file raise ``ConfigError``.
    """
    if not api_key:
        raise ConfigError("the sandbox needs a non-empty API key", location="sandbox.api_key")
    state = SandboxState(
        api_key=api_key,
        seed=seed,
        data_file=data_file,
        random_seed=random_seed,
        latency_ms=latency_ms,
        error_rate=error_rate,
        rate_limit=rate_limit,
    )
    app = Starlette(
        routes=[*_sandbox_routes(state), *_customer_routes(state)],
        middleware=[Middleware(_LogAndDelay, state=state)],
        exception_handlers={404: _html_not_found, 405: _html_not_found},
    )
    app.router.redirect_slashes = False
    app.state.sandbox = state
    return app


# ------------------------------------------------------------------------------ serving


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    api_key: str,
    seed: int | None = None,
    latency_ms: int = 0,
    error_rate: float = 0.0,
    rate_limit: float | None = None,
    data_file: str | None = None,
    random_seed: int = 0,
) -> None:
    """Run the sandbox with uvicorn until interrupted (SIGINT/SIGTERM).

    Prints ``sandbox listening on http://HOST:PORT`` once it accepts connections; with
    ``port=0`` the line carries the port the system chose.
    """
    app = create_app(
        api_key,
        seed=seed,
        latency_ms=latency_ms,
        error_rate=error_rate,
        rate_limit=rate_limit,
        data_file=data_file,
        random_seed=random_seed,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    _AnnouncingServer(config).run()


class _AnnouncingServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        bound = self.servers[0].sockets[0].getsockname() if self.servers else None
        port = bound[1] if bound else self.config.port
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        sys.stdout.write(f"sandbox listening on http://{shown}:{port}\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------ in-process


class SyncASGITransport(httpx.BaseTransport):
    """Lets a synchronous ``httpx.Client`` call an ASGI app in-process.

    One private event loop runs in a daemon thread for the transport's life; each request is
    handed to it with ``run_coroutine_threadsafe``. Safe to use from several threads.
    ``close()`` (called by ``Client.close()``) stops the loop; a later request starts a new one.
    """

    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self._inner = httpx.ASGITransport(app=app, client=client)
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="sandbox-asgi-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        future = asyncio.run_coroutine_threadsafe(self._call(request), self._running_loop())
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            status, headers, content = future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise httpx.ReadTimeout(
                "the ASGI app did not answer in time", request=request
            ) from None
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _call(self, request: httpx.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self._inner.handle_async_request(request)
        content = await response.aread()
        return response.status_code, response.headers.raw, content

    def close(self) -> None:
        with self._guard:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
