"""A CRM shaped like the big hosted ones, as a real HTTP server process on loopback: records
nest their fields under ``properties``, lists page by a cursor at ``paging.next.after``,
updates are ``PATCH`` with ``{"properties": {...}}``, read-only and unknown properties are
refused with 400, a create whose e-mail exists is refused with 409 naming the existing id, and
the lookup is a ``POST .../search`` with a filter body. Every request is kept in a log.

Run it: ``python -m testbed.nestedcrm --port 0`` prints ``nested crm listening on
http://127.0.0.1:PORT``. Routes, under ``/crm/v3/objects/contacts``:

- ``GET`` (``limit``, ``after``): ``{"results": [...], "paging": {"next": {"after": "4"}}}``,
  no ``paging`` on the last page;
- ``POST`` ``{"properties": {...}}``: 201 and the record; ``GET`` / ``PATCH`` / ``DELETE``
  ``/<id>`` (404 when there is none);
- ``POST /search`` ``{"filterGroups": [{"filters": [{"propertyName": "email", "operator":
  "EQ", "value": "..."}]}], "limit": 100}``: ``{"total": n, "results": [...]}``.

Test hooks: ``GET /_log`` (every request so far: method, path, query, JSON body), ``DELETE
/_log``, and ``POST /_race`` ``{"properties": {...}}``: the next create with that e-mail finds
this record created just before it (as a person editing the CRM meanwhile would), and is
refused as a duplicate. ``NestedCrm`` starts the process and talks to it from a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import httpx

from testbed.processes import ServerProcess

BASE = "/crm/v3/objects/contacts"
WRITABLE = frozenset(
    {"firstname", "lastname", "email", "phone", "company", "address", "city", "state", "zip"}
)
"""The properties a client may write; any other is refused as unknown."""
READ_ONLY = frozenset({"hs_object_id", "createdate", "lastmodifieddate"})
"""The properties the CRM sets itself; sending one is refused."""
READY = r"nested crm listening on http://127\.0\.0\.1:(?P<port>\d+)"
MAX_LIMIT = 100
_PYTHONPATH = os.environ.get("PYTHONPATH", "")


class Store:
    """The CRM's contacts and its request log, shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.races: dict[str, dict[str, Any]] = {}
        self.next_id = 101
        self.tick = 0

    def stamp(self) -> str:
        self.tick += 1
        return (
            f"2026-01-01T{self.tick // 3600:02d}:{self.tick // 60 % 60:02d}:{self.tick % 60:02d}Z"
        )

    def make(self, properties: dict[str, Any]) -> dict[str, Any]:
        native_id = str(self.next_id)
        self.next_id += 1
        now = self.stamp()
        props = {**properties, "hs_object_id": native_id, "createdate": now}
        props["lastmodifieddate"] = now
        record = {
            "id": native_id,
            "properties": props,
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
        }
        self.records[native_id] = record
        return record

    def by_email(self, email: Any) -> dict[str, Any] | None:
        wanted = str(email or "").strip().casefold()
        if not wanted:
            return None
        for record in self.records.values():
            if str(record["properties"].get("email") or "").strip().casefold() == wanted:
                return record
        return None


def _refusal(properties: Any) -> str | None:
    """Why a ``properties`` object cannot be written, or None."""
    if not isinstance(properties, dict):
        return 'the body must be {"properties": {...}}'
    read_only = sorted(set(properties) & READ_ONLY)
    if read_only:
        return f"Property values were not valid: {', '.join(read_only)} is a read only property"
    unknown = sorted(set(properties) - WRITABLE)
    if unknown:
        return f"Property values were not valid: Property {unknown[0]!r} does not exist"
    return None


class Handler(BaseHTTPRequestHandler):
    store: Store

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _answer(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, category: str) -> None:
        self._answer(status, {"status": "error", "message": message, "category": category})

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._error(400, "Invalid input JSON", "VALIDATION_ERROR")
            return
        query = dict(parse_qsl(url.query))
        store = self.store
        with store.lock:
            if url.path == "/_log":
                if self.command == "DELETE":
                    store.log.clear()
                    self._answer(204)
                else:
                    self._answer(200, store.log)
                return
            if url.path == "/_race" and self.command == "POST":
                props = body["properties"]
                store.races[str(props["email"]).casefold()] = props
                self._answer(204)
                return
            store.log.append(
                {"method": self.command, "path": url.path, "query": query, "body": body}
            )
            self._route(url.path, query, body)

    def _route(self, path: str, query: dict[str, str], body: Any) -> None:
        store = self.store
        if path == BASE:
            if self.command == "GET":
                self._list(query)
            elif self.command == "POST":
                self._create(body)
            else:
                self._error(405, "method not allowed", "METHOD_NOT_ALLOWED")
            return
        if path == f"{BASE}/search" and self.command == "POST":
            self._search(body)
            return
        if not path.startswith(f"{BASE}/"):
            self._error(404, f"no route {path}", "OBJECT_NOT_FOUND")
            return
        native_id = path[len(BASE) + 1 :]
        record = store.records.get(native_id)
        if record is None:
            self._error(404, f"resource not found: {native_id}", "OBJECT_NOT_FOUND")
            return
        if self.command == "GET":
            self._answer(200, record)
        elif self.command == "PATCH":
            if not isinstance(body, dict) or set(body) != {"properties"}:
                self._error(400, 'the body must be {"properties": {...}}', "VALIDATION_ERROR")
                return
            why = _refusal(body["properties"])
            if why is not None:
                self._error(400, why, "VALIDATION_ERROR")
                return
            now = store.stamp()
            record["properties"].update(body["properties"])
            record["properties"]["lastmodifieddate"] = now
            record["updatedAt"] = now
            self._answer(200, record)
        elif self.command == "DELETE":
            del store.records[native_id]
            self._answer(204)
        else:
            self._error(405, "method not allowed", "METHOD_NOT_ALLOWED")

    def _list(self, query: dict[str, str]) -> None:
        limit = max(1, min(MAX_LIMIT, int(query.get("limit", 10))))
        start = int(query.get("after", 0))
        ordered = list(self.store.records.values())
        page = ordered[start : start + limit]
        answer: dict[str, Any] = {"results": page}
        if start + limit < len(ordered):
            answer["paging"] = {"next": {"after": str(start + limit)}}
        self._answer(200, answer)

    def _create(self, body: Any) -> None:
        store = self.store
        if not isinstance(body, dict) or set(body) - {"properties", "associations"}:
            self._error(400, 'the body must be {"properties": {...}}', "VALIDATION_ERROR")
            return
        props = body.get("properties")
        why = _refusal(props)
        if why is not None:
            self._error(400, why, "VALIDATION_ERROR")
            return
        assert isinstance(props, dict)
        email = str(props.get("email") or "").casefold()
        raced = store.races.pop(email, None)
        if raced is not None:
            store.make(raced)
        existing = store.by_email(email)
        if existing is not None:
            self._error(409, f"Contact already exists. Existing ID: {existing['id']}", "CONFLICT")
            return
        self._answer(201, store.make(props))

    def _search(self, body: Any) -> None:
        try:
            groups = body["filterGroups"]
            limit = int(body.get("limit", 10))
            filters = [f for g in groups for f in g["filters"]]
        except (KeyError, TypeError, ValueError):
            self._error(400, "Invalid search request", "VALIDATION_ERROR")
            return
        found = []
        for record in self.store.records.values():
            props = record["properties"]
            if all(
                f.get("operator") == "EQ"
                and str(props.get(f["propertyName"]) or "").casefold()
                == str(f.get("value")).casefold()
                for f in filters
            ):
                found.append(record)
        self._answer(200, {"total": len(found), "results": found[:limit]})

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.nestedcrm", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data", help="a JSON file: a list of properties objects to start with")
    args = parser.parse_args(argv)
    store = Store()
    if args.data:
        with open(args.data, encoding="utf-8") as handle:
            for props in json.load(handle):
                store.make(props)
    handler = type("BoundHandler", (Handler,), {"store": store})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    print(f"nested crm listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


class NestedCrm:
    """The nested CRM as a process, for a test: ``url``, what it holds, its request log, and
    edits as a person would make them. Use as a context manager."""

    def __init__(self, people: list[dict[str, Any]] | None = None, *, folder: str = "") -> None:
        command = [sys.executable, "-m", "testbed.nestedcrm", "--port", "0"]
        if people is not None:
            assert folder, "people need a folder for the data file"
            path = f"{folder}/nestedcrm.json"
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(people, handle)
            command += ["--data", path]
        root = str(Path(__file__).resolve().parents[1])  # where the testbed package is
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, _PYTHONPATH]))}
        self.process = ServerProcess(command, name="nested-crm", ready=READY, timeout=60, env=env)
        self._client: httpx.Client | None = None

    def __enter__(self) -> Self:
        self.process.start()
        self._client = httpx.Client(base_url=self.process.url, timeout=30)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._client is not None:
            self._client.close()
        self.process.stop()

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def client(self) -> httpx.Client:
        assert self._client is not None, "the nested CRM is not started"
        return self._client

    def records(self) -> list[dict[str, Any]]:
        """Every contact (these reads are logged too: clear the log before a sync)."""
        found: list[dict[str, Any]] = []
        after: str | None = "0"
        while after is not None:
            answer = self.client.get(BASE, params={"limit": MAX_LIMIT, "after": after}).json()
            found.extend(answer["results"])
            after = answer.get("paging", {}).get("next", {}).get("after")
        return found

    def by_email(self, email: str) -> dict[str, Any]:
        matches = [
            r
            for r in self.records()
            if str(r["properties"].get("email", "")).casefold() == email.casefold()
        ]
        assert len(matches) == 1, f"expected one contact with email {email}: {matches}"
        return matches[0]

    def log(self) -> list[dict[str, Any]]:
        answer = self.client.get("/_log").json()
        assert isinstance(answer, list)
        return answer

    def clear_log(self) -> None:
        self.client.delete("/_log").raise_for_status()

    def post(self, properties: dict[str, Any]) -> dict[str, Any]:
        answer = self.client.post(BASE, json={"properties": properties})
        answer.raise_for_status()
        created = answer.json()
        assert isinstance(created, dict)
        return created

    def patch(self, native_id: str, properties: dict[str, Any]) -> None:
        self.client.patch(f"{BASE}/{native_id}", json={"properties": properties}).raise_for_status()

    def delete(self, native_id: str) -> None:
        self.client.delete(f"{BASE}/{native_id}").raise_for_status()

    def race(self, properties: dict[str, Any]) -> None:
        """The next create with this e-mail finds ``properties`` created just before it."""
        self.client.post("/_race", json={"properties": properties}).raise_for_status()


if __name__ == "__main__":
    raise SystemExit(main())
