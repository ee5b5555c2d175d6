"""json-server (npm ``json-server@0.17.4``): a real, unmodified REST server run on loopback
over a ``db.json`` the caller writes, for the tests and the REST benchmark.

``JsonServer`` is one server process over one folder: ``start()`` writes ``db.json`` and waits
until the port accepts connections; ``db()`` reads the file back (json-server writes it on
every change); ``client`` talks to it directly, as a person editing the CRM would. Its binary
comes from ``testbed.npm.ensure_tool(JSON_SERVER)`` (``tests/jsonserver.py``'s
``ensure_json_server()`` in tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

from testbed.processes import ServerProcess, ServerStartError, free_port

START_ATTEMPTS = 3


class JsonServer:
    """json-server over ``folder/db.json`` on a free loopback port. Use as a context manager
    (or ``start()`` / ``stop()``)."""

    def __init__(self, binary: str, folder: Path, db: dict[str, Any]) -> None:
        self.binary = binary
        self.folder = folder
        self.path = folder / "db.json"
        self.initial = db
        self.server: ServerProcess | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle
    def start(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.initial, indent=2), encoding="utf-8")
        failures: list[str] = []
        for _ in range(START_ATTEMPTS):
            port = free_port()
            server = ServerProcess(
                [
                    self.binary,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--quiet",
                    str(self.path),
                ],
                name="json-server",
                port=port,
                cwd=self.folder,
                timeout=60,
            )
            try:
                self.server = server.start()
                break
            except ServerStartError as exc:  # the port was taken meanwhile: another one
                failures.append(str(exc))
        else:
            raise ServerStartError("\n\n".join(failures))
        self._client = httpx.Client(base_url=self.url, timeout=30)
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- looking at it
    @property
    def url(self) -> str:
        assert self.server is not None, "json-server is not started"
        return self.server.url

    @property
    def client(self) -> httpx.Client:
        assert self._client is not None, "json-server is not started"
        return self._client

    def db(
        self, until: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The data as json-server last wrote it to ``db.json``. json-server writes the file
        after it answers, so a test expecting a change passes ``until`` (a condition on the
        data) to wait for it; the last data read is returned when it does not come."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:  # caught in the middle of a write
                data = None
            done = isinstance(data, dict) and (until is None or until(data))
            if done or time.monotonic() > deadline:
                assert isinstance(data, dict), f"{self.path} is not a JSON object"
                return data
            time.sleep(0.05)

    def db_bytes(self, settle: float = 0.3) -> bytes:
        """The bytes of ``db.json`` once they stopped changing for ``settle`` seconds (a write
        json-server answered may still be on its way to the file)."""
        last = self.path.read_bytes()
        stable_since = time.monotonic()
        while time.monotonic() - stable_since < settle:
            time.sleep(0.05)
            now = self.path.read_bytes()
            if now != last:
                last, stable_since = now, time.monotonic()
        return last

    def records(self, collection: str = "customers") -> list[dict[str, Any]]:
        """The collection through the API (what a person sees)."""
        response = self.client.get(f"/{collection}")
        response.raise_for_status()
        found = response.json()
        assert isinstance(found, list)
        return found

    def by_email(self, email: str, collection: str = "customers") -> dict[str, Any]:
        matches = [
            r for r in self.records(collection) if str(r.get("email", "")).lower() == email.lower()
        ]
        assert len(matches) == 1, f"expected one {collection} record with email {email}: {matches}"
        return matches[0]

    # -- editing it, as a person would
    def post(self, record: dict[str, Any], collection: str = "customers") -> dict[str, Any]:
        response = self.client.post(f"/{collection}", json=record)
        response.raise_for_status()
        created = response.json()
        assert isinstance(created, dict)
        return created

    def patch(
        self, native_id: int | str, changes: dict[str, Any], collection: str = "customers"
    ) -> dict[str, Any]:
        response = self.client.patch(f"/{collection}/{native_id}", json=changes)
        response.raise_for_status()
        changed = response.json()
        assert isinstance(changed, dict)
        return changed

    def delete(self, native_id: int | str, collection: str = "customers") -> None:
        self.client.delete(f"/{collection}/{native_id}").raise_for_status()
