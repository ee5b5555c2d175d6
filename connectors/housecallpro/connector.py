"""The Housecall Pro connector: customers over the HCP public REST API.

Built to ``spec/housecallpro-openapi.yaml`` and to what the live API is known to do
(``spec/HCP-REAL-API-NOTES.md``): the list envelope ``{customers, page, page_size,
total_pages, total_items}``, ``Authorization: Token KEY`` (or ``Bearer``), optional
``X-Company-Id``, inconsistent error bodies (parsed by ``syncengine.http``), and an HTML 404
for routes the live API does not have (``DELETE /customers/{id}``).

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
    concurrency = 4                             # concurrent writes (engine); reads page in order

Test hooks in ``ConnectorContext.extra``: ``transport`` (an ``httpx.BaseTransport``, e.g.
``httpx.MockTransport`` or an in-process sandbox) and ``sleep`` (replaces ``time.sleep`` for
backoff and rate limiting).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, field_validator

from syncengine import __version__
from syncengine.connector import (
    Capabilities,
    Connector,
    ConnectorContext,
    ConnectorOptions,
    NativeData,
    NativeRecord,
)
from syncengine.errors import FatalConnectorError, RetriableError
from syncengine.http import HttpClient, QueryParams, is_html

CUSTOMERS = "customers"
READ_ONLY_KEYS = frozenset({"id", "created_at", "updated_at"})
"""Top-level keys the API owns: never sent on create or update."""
_PATH_SPLIT = re.compile(r"[.\[]")


class HousecallProOptions(ConnectorOptions):
    """The ``[connectors.<name>]`` table of a Housecall Pro member."""

    type: str = "housecallpro"
    base_url: str = "https://api.housecallpro.com"
    api_key: SecretStr
    auth_scheme: Literal["Token", "Bearer"] = "Token"
    page_size: int = Field(default=100, ge=1, le=200)
    rate_limit: float = Field(default=2.0, ge=0)
    """Requests per second, enforced client side (the live API reportedly allows ~120/min).
    0 turns the client-side limit off (sandboxes, benchmarks)."""
    timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=20)
    company_id: str | None = None
    """Sent as ``X-Company-Id`` for multi-location accounts."""
    delete_customers: bool = False
    """The live API answers ``DELETE /customers/{id}`` with an HTML 404, so customer deletes
    are off unless the target supports them (the sandbox does)."""
    concurrency: int = Field(default=4, ge=1, le=32)
    """How many writes the engine may run at once against this member. The connector is
    thread-safe and every request, from any thread, goes through the one rate limiter; reads
    page sequentially."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(
                "must be an http:// or https:// URL, e.g. https://api.housecallpro.com"
            )
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _non_empty_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty (is the environment variable it refers to set?)")
        return value


class HousecallProConnector(Connector):
    """Customers on Housecall Pro. See the module docstring for options and behaviour."""

    type_name: ClassVar[str] = "housecallpro"
    Options: ClassVar[type[ConnectorOptions]] = HousecallProOptions

    def __init__(self, options: ConnectorOptions, context: ConnectorContext) -> None:
        super().__init__(options, context)
        if not isinstance(options, HousecallProOptions):
            options = HousecallProOptions.model_validate(options.model_dump())
        self.opts: HousecallProOptions = options
        key = options.api_key.get_secret_value().strip()
        headers = {
            "Authorization": f"{options.auth_scheme} {key}",
            "Accept": "application/json",
            "User-Agent": f"syncengine/{__version__}",
        }
        if options.company_id:
            headers["X-Company-Id"] = options.company_id
        transport = context.extra.get("transport")
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise FatalConnectorError(
                "context.extra['transport'] must be an httpx.BaseTransport", connector=self.name
            )
        sleep: Callable[[float], None] = context.extra.get("sleep", time.sleep)
        self.http = HttpClient(
            options.base_url,
            headers=headers,
            timeout=options.timeout,
            max_retries=options.max_retries,
            rate_limit=options.rate_limit or None,
            transport=transport,
            secrets=(key, *context.secrets),
            name=self.name,
            sleep=sleep,
        )

    # -- description
    def entities(self) -> tuple[str, ...]:
        return (CUSTOMERS,)

    def capabilities(self, entity: str) -> Capabilities:
        self._check_entity(entity)
        return Capabilities(
            read=True,
            create=True,
            update=True,
            delete=self.opts.delete_customers,
            assigns_ids=False,
        )

    # -- reading
    def read(self, entity: str) -> Iterator[NativeRecord]:
        """Every customer, oldest first (``sort_by=created_at&sort_direction=asc``).

        Oldest-first keeps pagination stable while customers are being added. If the total
        shrinks while paging (a customer deleted mid-read shifts later ones onto pages already
        read, so one may have been skipped), the read ends with a RetriableError rather than
        letting the engine take a skipped customer for a deleted one.
        """
        self._check_entity(entity)
        yield from self._paginate(
            {"sort_by": "created_at", "sort_direction": "asc"}, guard_shrink=True
        )

    def get(self, entity: str, native_id: str) -> NativeRecord:
        """One customer by id; NotFoundError when it does not exist."""
        self._check_entity(entity)
        path = self._customer_path(native_id)
        body = self.http.get_json(path)
        return self._record(body, f"GET {path}")

    def find(self, entity: str, data: NativeData) -> list[NativeRecord]:
        """Customers equal to ``data`` on its non-empty top-level scalar fields, found through
        the API's search (``q`` = email, then mobile number, then "first last", each tried
        until one finds a match). Emails compare case-insensitively, phone numbers by their
        digits. Without any search term it falls back to reading every customer."""
        self._check_entity(entity)
        wanted = {
            k: v
            for k, v in data.items()
            if k not in READ_ONLY_KEYS
            and isinstance(v, str | int | float | bool)
            and not (isinstance(v, str) and not v.strip())
        }

        def matches(records: Iterator[NativeRecord]) -> list[NativeRecord]:
            return [
                r for r in records if all(_same(k, v, r.data.get(k)) for k, v in wanted.items())
            ]

        terms = _search_terms(data)
        if not terms:
            return matches(self.read(entity))
        for term in terms:
            found = matches(
                self._paginate(
                    {"q": term, "sort_by": "created_at", "sort_direction": "asc"},
                    guard_shrink=False,
                )
            )
            if found:
                return found
        return []

    # -- writing
    def create(self, entity: str, data: NativeData, *, key: str) -> NativeRecord:
        """POST /customers. Never retried: if the outcome is unknown (timeout, 5xx) this
        raises RetriableError and the engine's journal resolves it later through ``find``."""
        self._check_entity(entity)
        body = _writable(data, data.keys())
        response = self.http.request("POST", "/customers", json=body, retry=False)
        created = self.http.decode("POST", "/customers", response)
        return self._record(created, "POST /customers")

    def update(
        self,
        entity: str,
        native_id: str,
        patch: NativeData,
        *,
        full: NativeData,
        new_id: str | None = None,
    ) -> NativeRecord | None:
        """PUT /customers/{id} with the changed top-level keys of ``full`` (a change anywhere
        under ``addresses`` sends the whole ``addresses`` list). Returns the customer as the
        API now has it, or None when nothing writable changed (no request is sent)."""
        self._check_entity(entity)
        if new_id is not None and new_id != native_id:
            raise FatalConnectorError(
                f"cannot give customer {native_id} the id {new_id}: Housecall Pro assigns ids",
                connector=self.name,
                entity=entity,
            )
        top_keys = {_top_key(path) for path in patch}
        source = {**{k: patch[k] for k in patch if k in top_keys}, **full}
        for missing in top_keys - source.keys():
            source[missing] = None  # removed on our side: clear it on theirs
        body = _writable(source, top_keys, clear=True)
        if not body:
            return None
        path = self._customer_path(native_id)
        response = self.http.request("PUT", path, json=body)
        updated = self.http.decode("PUT", path, response)
        if updated is None:
            return None
        return self._record(updated, f"PUT {path}")

    def delete(self, entity: str, native_id: str) -> None:
        """DELETE /customers/{id}; a JSON 404 means already deleted. An HTML 404 means the
        API has no such route (the live API): that is a configuration problem, not success."""
        self._check_entity(entity)
        path = self._customer_path(native_id)
        response = self.http.request("DELETE", path, allow_status=(404,))
        if response.status_code == 404 and is_html(response):
            raise FatalConnectorError(
                f"DELETE {path}: this API does not support deleting customers (HTML 404); "
                "set delete_customers = false for this connector",
                connector=self.name,
                entity=entity,
            )

    def close(self) -> None:
        self.http.close()

    # -- internals
    def _check_entity(self, entity: str) -> None:
        if entity != CUSTOMERS:
            raise FatalConnectorError(
                f"unknown entity {entity!r} (this connector has: {CUSTOMERS})",
                connector=self.name,
                entity=entity,
            )

    def _customer_path(self, native_id: str) -> str:
        if not native_id or "/" in native_id or native_id.strip() != native_id:
            raise FatalConnectorError(
                f"invalid customer id {native_id!r}", connector=self.name, entity=CUSTOMERS
            )
        return f"/customers/{quote(native_id, safe='')}"

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
        return NativeRecord(id=customer_id, data=body, location=f"customer {customer_id}")

    def _paginate(self, params: Mapping[str, str], *, guard_shrink: bool) -> Iterator[NativeRecord]:
        """Page through ``GET /customers`` with the HCP envelope.

        Stops after ``total_pages``, at an empty page, or, when the envelope lacks
        ``total_pages``, once ``total_items`` customers were seen or (lacking that too) at a
        page shorter than the page size. A page holding only customers
        already seen (a server ignoring ``page``) is a FatalConnectorError, not an endless loop;
        a customer repeated on a later page (the list shifted while paging) is yielded once.
        """
        size = self.opts.page_size
        seen: set[str] = set()
        first_total: int | None = None
        last_total: int | None = None
        page = 1
        while True:
            query: QueryParams = {**params, "page": page, "page_size": size}
            body = self.http.get_json("/customers", params=query)
            where = f"GET /customers page {page}"
            items, envelope = self._page_items(body, where)
            total = envelope.get("total_items")
            if isinstance(total, int) and not isinstance(total, bool):
                first_total = total if first_total is None else first_total
                last_total = total
            if not items:
                break
            fresh: list[NativeRecord] = []
            for index, item in enumerate(items):
                record = self._page_record(item, where, index)
                if record.id in seen:
                    continue
                seen.add(record.id)
                fresh.append(record)
            if not fresh:
                raise FatalConnectorError(
                    f"{where}: the server returned only customers from earlier pages "
                    "(it seems to ignore the page parameter); stopped instead of looping",
                    connector=self.name,
                    entity=CUSTOMERS,
                )
            yield from fresh
            total_pages = envelope.get("total_pages")
            if isinstance(total_pages, int) and not isinstance(total_pages, bool):
                if page >= total_pages:
                    break
            elif isinstance(total, int) and not isinstance(total, bool):
                if len(seen) >= total:
                    break
            else:
                served = envelope.get("page_size")
                expected = served if isinstance(served, int) and served > 0 else size
                if len(items) < min(expected, size):
                    break
            page += 1
        shrank = first_total is not None and last_total is not None and last_total < first_total
        if guard_shrink and shrank:
            raise RetriableError(
                f"the customer list shrank from {first_total} to {last_total} while it was "
                "being read, so a customer may have been skipped; read it again",
                connector=self.name,
                entity=CUSTOMERS,
            )

    def _page_items(self, body: Any, where: str) -> tuple[list[Any], dict[str, Any]]:
        if not isinstance(body, dict):
            raise FatalConnectorError(
                f"{where}: expected a JSON object with a 'customers' list, "
                f"got {type(body).__name__}",
                connector=self.name,
                entity=CUSTOMERS,
            )
        items = body.get(CUSTOMERS)
        if items is None:
            items = body.get("data")  # tolerate a generic envelope
        if not isinstance(items, list):
            raise FatalConnectorError(
                f"{where}: the response has no 'customers' list (keys: {', '.join(sorted(body))})",
                connector=self.name,
                entity=CUSTOMERS,
            )
        return items, body

    def _page_record(self, item: Any, where: str, index: int) -> NativeRecord:
        if not isinstance(item, dict):
            raise FatalConnectorError(
                f"{where}: item {index} is not an object", connector=self.name, entity=CUSTOMERS
            )
        customer_id = item.get("id")
        if not isinstance(customer_id, str) or not customer_id:
            raise FatalConnectorError(
                f"{where}: item {index} has no id", connector=self.name, entity=CUSTOMERS
            )
        return NativeRecord(id=customer_id, data=item, location=f"customer {customer_id}")


# ------------------------------------------------------------------------------ helpers


def _top_key(path: str) -> str:
    """``addresses.0.city`` / ``addresses[0].city`` -> ``addresses``."""
    return _PATH_SPLIT.split(path, maxsplit=1)[0]


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
