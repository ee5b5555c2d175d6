"""An in-process REST CRM for tests: one collection served over ``httpx.MockTransport``,
really paginating in every style the connector knows, with knobs for misbehaving servers.

::

    crm = FakeCrm(style="cursor", records_key="data")
    crm.add({"name": "Ada"})
    context = ConnectorContext("crm", extra={"transport": crm.transport()})
    connector = RestConnector(options, context)

Routes (``/<collection>``, default ``/contacts``): ``GET`` the list (filtered by any query
parameter naming a top-level field, and by ``updated_since``), ``POST`` a record; ``GET``,
``PUT`` (replace), ``PATCH`` (merge top-level keys), ``DELETE`` ``/<collection>/<id>``.

Pagination styles (``style``): ``none``, ``page`` (``page``/``per_page``), ``offset``
(``offset``/``limit``), ``cursor`` (``cursor``/``limit``, the next cursor at ``next_cursor`` in
the body), ``link`` (``page``/``per_page`` and a ``Link`` header with ``rel="next"``),
``total_count`` (``page``/``per_page`` and ``X-Total-Count``). Knobs: ``max_page_size`` (the
server caps the page size), ``ignore_paging`` (always the first page), ``cursor_loop`` (the
cursor after the second page points back at the first), ``link_loop`` (the same),
``trailing_empty_page`` (the last full page still announces a next one, which is empty),
``send_total`` (``X-Total-Count`` on page and offset lists too), ``omit_last_link`` (no
``Link`` header at all on the last page, as some APIs do on a single page),
``wrap_key`` (bodies and responses as ``{wrap_key: record}``), ``records_key`` (the list
inside an object; empty: a bare list), ``require`` (headers or query parameters that must be
present, else 401). ``requests`` records every request.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import httpx

__all__ = ["FakeCrm"]

STYLES = ("none", "page", "offset", "cursor", "link", "total_count")


class FakeCrm:
    """See the module docstring."""

    def __init__(
        self,
        *,
        style: str = "page",
        collection: str = "contacts",
        records_key: str = "",
        wrap_key: str = "",
        max_page_size: int | None = None,
        default_page_size: int = 10,
        ignore_paging: bool = False,
        cursor_loop: bool = False,
        link_loop: bool = False,
        trailing_empty_page: bool = False,
        require_headers: Mapping[str, str] | None = None,
        require_params: Mapping[str, str] | None = None,
        base_url: str = "http://crm.test",
        id_prefix: str = "",
        stamp_updates: bool = True,
        send_total: bool = False,
        omit_last_link: bool = False,
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
        if style == "cursor" and not records_key:
            raise ValueError("the cursor style needs records_key (the body is an object)")
        self.style = style
        self.collection = collection
        self.records_key = records_key
        self.wrap_key = wrap_key
        self.max_page_size = max_page_size
        self.default_page_size = default_page_size
        self.ignore_paging = ignore_paging
        self.cursor_loop = cursor_loop
        self.link_loop = link_loop
        self.trailing_empty_page = trailing_empty_page
        self.require_headers = dict(require_headers or {})
        self.require_params = dict(require_params or {})
        self.base_url = base_url.rstrip("/")
        self.id_prefix = id_prefix
        self.stamp_updates = stamp_updates
        self.send_total = send_total
        self.omit_last_link = omit_last_link
        self.records: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self._next_id = 1
        self._tick = 0
        self._lock = threading.Lock()
        self.before: Callable[[httpx.Request], httpx.Response | None] | None = None
        """Called first with every request; a response it returns is sent instead."""

    # ------------------------------------------------------------------ test-side helpers
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def now(self) -> str:
        with self._lock:
            self._tick += 1
            moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self._tick)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def add(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Store a record as a person would (an id is assigned when it has none)."""
        record = copy.deepcopy(dict(data))
        with self._lock:
            if "id" not in record:
                record["id"] = self._new_id()
        if self.stamp_updates and "updated_at" not in record:
            record["updated_at"] = self.now()
        self.records[str(record["id"])] = record
        return record

    def edit(self, native_id: str, **changes: Any) -> None:
        record = self.records[native_id]
        record.update(changes)
        if self.stamp_updates:
            record["updated_at"] = self.now()

    def list_requests(self) -> list[httpx.Request]:
        return [
            r for r in self.requests if r.method == "GET" and r.url.path == f"/{self.collection}"
        ]

    def writes(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    def _new_id(self) -> str | int:
        value = self._next_id
        self._next_id += 1
        return f"{self.id_prefix}{value}" if self.id_prefix else value

    # ------------------------------------------------------------------------- the server
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.before is not None:
            answer = self.before(request)
            if answer is not None:
                return answer
        for name, value in self.require_headers.items():
            if request.headers.get(name) != value:
                return _json(401, {"error": "unauthorized"})
        for name, value in self.require_params.items():
            if request.url.params.get(name) != value:
                return _json(401, {"error": "unauthorized"})
        parts = [p for p in request.url.path.split("/") if p]
        if not parts or parts[0] != self.collection or len(parts) > 2:
            return _json(404, {"error": "no such route"})
        if len(parts) == 1:
            if request.method == "GET":
                return self._list(request)
            if request.method == "POST":
                return self._create(request)
            return _json(405, {"error": "method not allowed"})
        native_id = parts[1]
        record = self.records.get(native_id)
        if record is None:
            return _json(404, {"error": f"{native_id} not found"})
        if request.method == "GET":
            return self._one(200, record)
        if request.method in ("PUT", "PATCH"):
            body = self._body(request)
            if body is None:
                return _json(422, {"error": f"the body must be {{{self.wrap_key!r}: {{...}}}}"})
            if request.method == "PUT":
                replaced = {**body, "id": record["id"]}
                self.records[native_id] = replaced
                record = replaced
            else:
                record.update({k: v for k, v in body.items() if k != "id"})
            if self.stamp_updates:
                record["updated_at"] = self.now()
            return self._one(200, record)
        if request.method == "DELETE":
            del self.records[native_id]
            return httpx.Response(204)
        return _json(405, {"error": "method not allowed"})

    def _body(self, request: httpx.Request) -> dict[str, Any] | None:
        try:
            body = json.loads(request.content or b"null")
        except ValueError:
            return None
        if self.wrap_key:
            body = body.get(self.wrap_key) if isinstance(body, dict) else None
        return body if isinstance(body, dict) else None

    def _one(self, status: int, record: dict[str, Any]) -> httpx.Response:
        body: Any = {self.wrap_key: record} if self.wrap_key else record
        return _json(status, body)

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = self._body(request)
        if body is None:
            return _json(422, {"error": f"the body must be {{{self.wrap_key!r}: {{...}}}}"})
        with self._lock:
            body["id"] = self._new_id()
        if self.stamp_updates:
            body["updated_at"] = self.now()
        self.records[str(body["id"])] = body
        return self._one(201, body)

    def _matching(self, params: httpx.QueryParams) -> list[dict[str, Any]]:
        paging = {"page", "per_page", "offset", "limit", "cursor", *self.require_params}
        found = []
        for record in self.records.values():
            ok = True
            for name, value in params.multi_items():
                if name in paging:
                    continue
                if name == "updated_since":
                    ok = ok and str(record.get("updated_at", "")) >= value
                elif str(record.get(name)) != value:
                    ok = False
            if ok:
                found.append(record)
        return found

    def _size(self, params: httpx.QueryParams, name: str) -> int:
        size = int(params.get(name, self.default_page_size))
        if self.max_page_size is not None:
            size = min(size, self.max_page_size)
        return max(1, size)

    def _list(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        records = self._matching(params)
        headers: dict[str, str] = {}
        extra: dict[str, Any] = {}
        style = self.style
        if style == "none":
            chosen = records
        elif style in ("page", "link", "total_count"):
            size = self._size(params, "per_page")
            number = 1 if self.ignore_paging else int(params.get("page", 1))
            chosen = records[(number - 1) * size : number * size]
            if style == "total_count" or self.send_total:
                headers["X-Total-Count"] = str(len(records))
            if style == "link":
                last = max(1, -(-len(records) // size))
                if self.trailing_empty_page and len(records) % size == 0:
                    last += 1
                target = number + 1
                if self.link_loop and number == 2:
                    target = 1
                first = f'<{self.base_url}/{self.collection}?page=1>; rel="first"'
                if number < last:
                    pairs: list[tuple[str, str | int | float | bool | None]] = [
                        (k, v) for k, v in params.multi_items() if k != "page"
                    ]
                    query = httpx.QueryParams([*pairs, ("page", str(target))])
                    headers["Link"] = (
                        f'<{self.base_url}/{self.collection}?{query}>; rel="next", {first}'
                    )
                elif not self.omit_last_link:
                    headers["Link"] = first
        elif style == "offset":
            size = self._size(params, "limit")
            start = 0 if self.ignore_paging else int(params.get("offset", 0))
            chosen = records[start : start + size]
            if self.send_total:
                headers["X-Total-Count"] = str(len(records))
        else:  # cursor
            size = self._size(params, "limit")
            start = 0
            cursor = params.get("cursor")
            if cursor and not self.ignore_paging:
                start = int(base64.urlsafe_b64decode(cursor.encode()).decode())
            chosen = records[start : start + size]
            after = start + size
            if self.cursor_loop and start >= size:
                after = size  # points back at the second page, for ever
            more = after < len(records) or (
                self.trailing_empty_page and after == len(records) and bool(chosen)
            )
            extra["next_cursor"] = (
                base64.urlsafe_b64encode(str(after).encode()).decode() if more else None
            )
        body: Any = chosen
        if self.records_key:
            body = {self.records_key: chosen, **extra, "count": len(records)}
        return _json(200, body, headers)


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=dict(headers or {}))
