"""The daemon's HTTP server, on ``--http HOST:PORT``: ``GET /healthz`` (is the scheduler
running, how is each pipeline), ``GET /metrics`` (Prometheus) and ``POST
/webhooks/hcp/{connector}`` (the webhook receiver, ``webhooks.py``)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import unquote

import structlog

from syncengine.daemon.scheduling import iso
from syncengine.daemon.webhooks import MAX_BODY, PATH_PREFIX, WebhookReceiver
from syncengine.errors import UsageError
from syncengine.metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = [
    "Health",
    "HttpAddress",
    "PipelineHealth",
    "StatusServer",
    "health_report",
    "parse_http_address",
]

log = structlog.get_logger("syncengine.daemon")


class HttpAddress(NamedTuple):
    """Where the server listens (port 0: any free port)."""

    host: str
    port: int


def parse_http_address(text: str) -> HttpAddress:
    """``HOST:PORT`` or ``PORT`` (127.0.0.1) -> the address; ``ValueError`` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http {text!r}: use HOST:PORT, e.g. 127.0.0.1:9464")
    return HttpAddress(host, int(port))


@dataclass(frozen=True)
class PipelineHealth:
    """One pipeline in ``/healthz``."""

    last_success: dt.datetime | None
    running: bool
    next_run: dt.datetime | None
    paused: bool
    failures: int

    def as_json(self) -> dict[str, Any]:
        return {
            "last_success": iso(self.last_success),
            "running": self.running,
            "next_run": iso(self.next_run),
            "paused": self.paused,
            "failures": self.failures,
        }


class Health(NamedTuple):
    """The answer of ``/healthz``: 200 when ``healthy``, else 503; ``body`` as JSON."""

    healthy: bool
    body: dict[str, Any]


def health_report(alive: bool, holder: str, pipelines: Mapping[str, PipelineHealth]) -> Health:
    """Healthy while the scheduler runs (``alive``), whatever the pipelines' standing."""
    body = {
        "status": "ok" if alive else "unavailable",
        "scheduler": "running" if alive else "stopped",
        "holder": holder,
        "pipelines": {name: p.as_json() for name, p in pipelines.items()},
    }
    return Health(alive, body)


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of deliveries waits to be accepted, not refused
    daemon_threads = True


class StatusServer:
    """Serves ``/healthz`` from ``health()``, ``/metrics`` from ``metrics`` and, with a
    ``webhooks`` receiver, ``POST /webhooks/hcp/{connector}``, on threads."""

    def __init__(
        self,
        health: Callable[[], Health],
        metrics: Metrics,
        webhooks: WebhookReceiver | None = None,
    ) -> None:
        self._health = health
        self._metrics = metrics
        self._webhooks = webhooks
        self._server: ThreadingHTTPServer | None = None

    def start(self, address: HttpAddress) -> None:
        """Listen and serve; ``UsageError`` when the address cannot be listened on."""
        health, metrics, webhooks = self._health, self._metrics, self._webhooks

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a sender's deliveries share a socket
            timeout = 30  # a client that stops sending (or an idle connection) is let go

            def do_GET(self) -> None:
                self._drain()  # a body sent with a GET is not the next request
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, body = health()
                    self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, metrics.render())
                else:
                    self._send(404, "application/json", b'{"error": "not found"}')

            def do_POST(self) -> None:
                path = self.path.split("?", 1)[0]
                if webhooks is None or not path.startswith(PATH_PREFIX):
                    self._drain()
                    self._send(404, "application/json", b'{"error": "not found"}')
                    return
                # a name no connector has (a slash in it, none at all) is the receiver's 404,
                # counted like any refused delivery
                name = unquote(path[len(PATH_PREFIX) :])
                body = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    answer = webhooks.receive(name, headers, body)
                except Exception as exc:  # a bug: the sender retries, the daemon goes on
                    log.error("webhook delivery failed", error=type(exc).__name__)
                    self._send(500, "application/json", b'{"error": "internal error"}')
                    return
                self._send(answer.status, "application/json", json.dumps(answer.body).encode())

            def _body(self) -> bytes | None:
                """The request's body; None when it is over ``MAX_BODY`` (then unread, and
                the connection is closed after the answer)."""
                length = self._length()
                if length is None or length > MAX_BODY:
                    self.close_connection = True
                    return None
                return self.rfile.read(length)

            def _length(self) -> int | None:
                """The body's length; None when it cannot be trusted: a chunked body (with
                or without a Content-Length: refused as too large rather than read without
                a bound), or a Content-Length that is not one number of ASCII digits."""
                if self.headers.get("Transfer-Encoding") is not None:
                    return None
                texts = {t.strip() for t in self.headers.get_all("Content-Length") or []}
                if not texts:
                    return 0
                text = texts.pop()
                if texts or not (text.isascii() and text.isdigit()) or len(text) > 18:
                    return None
                return int(text)

            def _drain(self) -> None:
                length = self._length()
                if length is None or length > MAX_BODY:
                    self.close_connection = True
                elif length:
                    self.rfile.read(length)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        host, port = address
        try:
            server = _Server((host, port), Handler)
        except OSError as exc:
            raise UsageError(
                f"--http {host}:{port}: cannot listen there: {exc.strerror or exc}"
            ) from None
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        bound_host, bound_port = server.server_address[:2]
        log.info(
            "http listening",
            url=f"http://{bound_host!s}:{bound_port}",
            endpoints=[
                "/healthz",
                "/metrics",
                *([f"{PATH_PREFIX}{{connector}}"] if webhooks else []),
            ],
        )

    @property
    def address(self) -> HttpAddress | None:
        """Where it listens (the real port when 0 was asked); None when not started."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return HttpAddress(str(host), int(port))

    def stop(self) -> None:
        """Stop serving and close the socket (when started)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
