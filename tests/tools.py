"""Helpers for tests that need external tools or servers.

- ``tool_missing(reason)``: skip the test, or fail it when ``SYNCENGINE_REQUIRE_TOOLS=1``
  (CI sets it, so that a missing tool can never turn the contract tests into silent skips).
- ``ensure_prism()``: Stoplight Prism (the OpenAPI validating proxy the contract tests run),
  found or installed by ``testbed.npm``, or ``tool_missing``.
- ``RecordingTransport``: a real httpx transport that keeps every exchange, with Prism's
  findings (``sl-violations`` header, ``application/problem+json`` errors) readable on each.
- ``FakeUpstream``: an in-thread HTTP server with canned replies per (method, path).

Server processes (``ServerProcess``, ``free_port``) are in ``testbed.processes``, the HCP
sandbox process in ``testbed.sandbox``: the benchmarks use them too.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn, Self

import httpx
import pytest

from testbed import ToolUnavailable
from testbed.npm import PRISM, ensure_tool

REQUIRE_TOOLS_ENV = "SYNCENGINE_REQUIRE_TOOLS"
PROBLEM_JSON = "application/problem+json"


# ------------------------------------------------------------------------ missing tools


def tools_required() -> bool:
    """Whether a missing external tool must fail the tests (CI) instead of skipping them."""
    return os.environ.get(REQUIRE_TOOLS_ENV, "").strip() == "1"


def tool_missing(reason: str) -> NoReturn:
    """Skip the calling test (or fixture) for ``reason``; fail it instead under
    ``SYNCENGINE_REQUIRE_TOOLS=1``."""
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_TOOLS_ENV}=1, so this is a failure)", pytrace=False)
    print(f"skipping: {reason}", file=sys.stderr)
    pytest.skip(reason)


# ------------------------------------------------------------------------ Prism


def ensure_prism() -> str:
    """The path of a working Prism 5 (``testbed.npm``: found, or installed with npm).

    When it can be neither found nor installed, the test is skipped with the reason (failed
    under ``SYNCENGINE_REQUIRE_TOOLS=1``).
    """
    try:
        return ensure_tool(PRISM)
    except ToolUnavailable as exc:
        tool_missing(f"{exc}; the contract tests need it")


# ------------------------------------------------------------------------ HTTP recording


@dataclass
class Exchange:
    """One request and the response it got (from Prism, when it goes through Prism)."""

    method: str
    url: httpx.URL
    request_body: bytes
    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def path(self) -> str:
        return self.url.path

    def violations(self) -> list[dict[str, Any]]:
        """Prism's findings: the ``sl-violations`` header (passed-through responses) or the
        ``validation`` list of its problem+json error."""
        found: list[dict[str, Any]] = []
        header = self.response.headers.get("sl-violations")
        if header:
            found.extend(json.loads(header))
        problem = self.problem()
        if problem is not None and not header:
            found.extend(problem.get("validation", []))
        return found

    def problem(self) -> dict[str, Any] | None:
        """Prism's own error (``application/problem+json``), None for an upstream response."""
        if PROBLEM_JSON not in self.response.headers.get("content-type", ""):
            return None
        try:
            body = self.response.json()
        except ValueError:
            return {"title": self.response.text[:500]}
        return body if isinstance(body, dict) else {"title": repr(body)}

    def describe(self) -> str:
        text = f"{self.method} {self.url.raw_path.decode()} -> {self.status}"
        if self.request_body:
            text += f"\n  request body: {self.request_body.decode(errors='replace')[:500]}"
        problem = self.problem()
        if problem is not None:
            text += f"\n  Prism error: {problem.get('type')} {problem.get('title')}"
        for violation in self.violations():
            where = ".".join(str(p) for p in violation.get("location", []))
            text += f"\n  [{violation.get('severity')}] {where}: {violation.get('message')}"
        return text


class RecordingTransport(httpx.BaseTransport):
    """A real HTTP transport that remembers every exchange (give it to an ``httpx.Client``, or
    to a connector through ``ConnectorContext.extra["transport"]``)."""

    def __init__(self, **transport_options: Any) -> None:
        """``transport_options`` go to the ``httpx.HTTPTransport`` that does the work."""
        self.inner = httpx.HTTPTransport(**transport_options)
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        upstream = self.inner.handle_request(request)
        try:
            raw = b"".join(upstream.iter_raw())
        finally:
            upstream.close()
        # content= makes the response already read: the client and the test both see it
        response = httpx.Response(
            upstream.status_code, headers=upstream.headers, content=raw, request=request
        )
        self.exchanges.append(Exchange(request.method, request.url, body, response))
        return response

    def close(self) -> None:
        self.inner.close()

    def flagged(self) -> list[Exchange]:
        """Exchanges Prism objected to: its own errors, or any violation, even a warning."""
        return [e for e in self.exchanges if e.problem() is not None or e.violations()]

    def report(self, exchanges: list[Exchange] | None = None) -> str:
        chosen = self.flagged() if exchanges is None else exchanges
        return "\n".join(e.describe() for e in chosen) or "(Prism flagged nothing)"

    def clear(self) -> None:
        self.exchanges.clear()


# ------------------------------------------------------------------------ a fake upstream


Reply = tuple[int, str, bytes]
"""status, content type, body"""


class FakeUpstream:
    """A tiny HTTP server in a thread answering each ``(method, path)`` with a canned reply
    (anything else: 404), e.g. responses that break a contract on purpose. ``seen`` lists the
    requests it got. Use it as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, replies: Mapping[tuple[str, str], Reply]) -> None:
        self.replies = dict(replies)
        self.seen: list[tuple[str, str]] = []
        handler = self._handler()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                upstream.seen.append((self.command, path))
                status, content_type, body = upstream.replies.get(
                    (self.command, path), (404, "application/json", b'{"message": "no reply"}')
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _reply

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def json_reply(body: Any, status: int = 200) -> Reply:
    return status, "application/json", json.dumps(body).encode()
