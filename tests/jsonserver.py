"""json-server for tests: a real, unmodified REST server (npm ``json-server@0.17.4``) run on
loopback over a ``db.json`` the test writes.

- ``find_json_server()`` / ``ensure_json_server()``: locate it (on PATH, in ``<repo>/.ci/node``
  where CI installs it, in ``<repo>/.cache/node``), installing it with npm into
  ``<repo>/.cache/node`` when missing (under a file lock, so parallel workers install once).
  When it can be neither found nor installed the test is skipped, or failed under
  ``SYNCENGINE_REQUIRE_TOOLS=1`` (``tests.tools.tool_missing``).
- ``JsonServer``: one server process over one folder. ``start()`` writes ``db.json`` and waits
  until the port accepts connections; ``db()`` reads the file back (json-server writes it on
  every change); ``client`` talks to it directly, as a person editing the CRM would.

What json-server 0.17 speaks, as the connector is configured for it: a bare JSON list per
collection; ``_page``/``_limit`` with ``Link`` (``rel="next"``) and ``X-Total-Count`` headers;
``_start``/``_limit`` (offset) with ``X-Total-Count``; filters by any field (``?email=...``);
``POST`` assigns integer ids (the largest + 1); ``PUT`` replaces, ``PATCH`` merges top-level keys;
404 with ``{}`` for a missing record.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

from tests.tools import (
    CACHE_DIR,
    NPM_INSTALL_TIMEOUT,
    REPO_ROOT,
    ServerProcess,
    ServerStartError,
    _executable,
    _file_lock,
    free_port,
    tool_missing,
)

JSON_SERVER_PACKAGE = "json-server@0.17.4"
JSON_SERVER_VERSION = "0.17.4"
START_ATTEMPTS = 3


# --------------------------------------------------------------------------- finding it


def _candidates() -> list[Path]:
    found: list[Path] = []
    on_path = shutil.which("json-server")
    if on_path:
        found.append(Path(on_path))
    for base in (REPO_ROOT / ".ci" / "node", CACHE_DIR / "node"):
        found.append(base / "node_modules" / ".bin" / "json-server")
    return found


def json_server_version(binary: str) -> str | None:
    """What ``json-server --version`` prints, or None when it does not run."""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def find_json_server() -> str | None:
    """The first json-server 0.17.4 found, or None."""
    for candidate in _candidates():
        if _executable(candidate) and json_server_version(str(candidate)) == JSON_SERVER_VERSION:
            return str(candidate)
    return None


def _npm_install() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH (install Node.js and npm)")
    prefix = CACHE_DIR / "node"
    try:
        done = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--prefix",
                str(prefix),
                JSON_SERVER_PACKAGE,
            ],
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"npm install {JSON_SERVER_PACKAGE} took too long") from None
    except OSError as exc:
        raise RuntimeError(f"cannot run npm: {exc}") from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-2000:]
        raise RuntimeError(f"npm install {JSON_SERVER_PACKAGE} failed: {output}")
    binary = prefix / "node_modules" / ".bin" / "json-server"
    if not _executable(binary) or json_server_version(str(binary)) != JSON_SERVER_VERSION:
        raise RuntimeError(f"npm install {JSON_SERVER_PACKAGE} finished but {binary} does not run")
    return str(binary)


def ensure_json_server() -> str:
    """The path of json-server 0.17.4, installed with npm when missing; skips the test (fails
    it under ``SYNCENGINE_REQUIRE_TOOLS=1``) when it can be neither found nor installed."""
    found = find_json_server()
    if found is not None:
        return found
    with _file_lock(CACHE_DIR / "node.lock"):
        found = find_json_server()
        if found is not None:
            return found
        try:
            return _npm_install()
        except RuntimeError as exc:
            reason = str(exc)
    tool_missing(
        f"json-server {JSON_SERVER_VERSION} is not installed and npm could not "
        f"install it: {reason}; the REST connector tests need it"
    )


# ------------------------------------------------------------------------------ running it


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


def json_server_options(
    url: str, path: str = "/customers", *, style: str = "link", page_size: int = 100, **entity: Any
) -> dict[str, Any]:
    """``[connectors.X]`` options of a ``rest`` member describing json-server 0.17, with the
    named pagination style: ``link`` (``_page``/``_limit``, following ``Link``),
    ``total_count`` (``_page``/``_limit``, ``X-Total-Count``), ``page`` (``_page``/``_limit``),
    ``offset`` (``_start``/``_limit``) or ``none``."""
    styles: dict[str, dict[str, Any]] = {
        "link": {"style": "link", "page_param": "_page", "size_param": "_limit"},
        "total_count": {"style": "total_count", "page_param": "_page", "size_param": "_limit"},
        "page": {"style": "page", "page_param": "_page", "size_param": "_limit"},
        "offset": {"style": "offset", "offset_param": "_start", "limit_param": "_limit"},
        "none": {"style": "none"},
    }
    table: dict[str, Any] = {
        "path": path,
        "find_params": {"email": "email"},
        "pagination": styles[style],
        **entity,
    }
    return {
        "type": "rest",
        "base_url": url,
        "rate_limit": 0,
        "max_retries": 1,
        "page_size": page_size,
        "entities": {"customers": table},
    }
