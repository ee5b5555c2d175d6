"""The daemon's HTTP server, on ``--http HOST:PORT``: a Starlette app served by uvicorn on a
thread of the daemon's process.

Routes::

    GET  /healthz                    is the scheduler running, how is each pipeline
    GET  /metrics                    Prometheus
    POST /webhooks/hcp/{connector}   the webhook receiver (``webhooks.py``)
    /...                             the web console, when one is given (``console.py``)

The receiver's decision (``WebhookReceiver.receive``) and its store work run on worker
threads, ``RECEIVERS`` at most at once, never on the event loop. The body is read here, at
most ``MAX_BODY`` bytes of it: a larger declared length, or a chunked body, is refused unread
and the connection closed. A request uvicorn's HTTP parser cannot take (a doubled or
non-numeric Content-Length, say) is answered 400 by uvicorn itself, before any route sees
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

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

BODY_TIMEOUT_S = 30.0
"""How long a sender may take to send a webhook body (then 408, and the connection closed)."""
START_TIMEOUT_S = 30.0
"""How long ``start()`` waits for uvicorn to serve."""
KEEP_ALIVE_S = 30
"""How long an idle kept-alive connection stays open (a sender's deliveries share one)."""
RECEIVERS = 4
"""How many deliveries are checked and stored at once, each on a worker thread: fewer than
the state store's pooled connections (5), and few enough that the event loop's thread, which
reads and answers every request, is not left waiting for the interpreter behind them."""
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
"""The webhook path answers every method itself (anything but POST: 404, no such path)."""
GRACE_S = 5
"""How long ``stop()`` lets requests in flight finish before closing their connections."""


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


def health_report(
    alive: bool,
    holder: str,
    pipelines: Mapping[str, PipelineHealth],
    store_error: str | None = None,
) -> Health:
    """Healthy while the scheduler runs (``alive``) and the state store can be used
    (``store_error``: why it cannot, already redacted), whatever the pipelines' standing: a
    store that is down stops every pipeline, a member that is down only its own."""
    healthy = alive and store_error is None
    body: dict[str, Any] = {
        "status": "ok" if healthy else "unavailable",
        "scheduler": "running" if alive else "stopped",
        "state_store": "ok" if store_error is None else "unavailable",
        "holder": holder,
        "pipelines": {name: p.as_json() for name, p in pipelines.items()},
    }
    if store_error is not None:
        body["state_store_error"] = store_error
    return Health(healthy, body)


# ------------------------------------------------------------------------------ routes


def _error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    """A JSON error; with ``close`` the connection is closed after it (a body left unread
    must not be taken for the next request)."""
    return JSONResponse({"error": message}, status, {"Connection": "close"} if close else None)


class _TooLarge(Exception):
    """The body is over ``MAX_BODY``, or its length cannot be known before reading it."""


async def _read_body(request: Request) -> bytes:
    """The request's body, never holding more than ``MAX_BODY`` bytes of it. ``_TooLarge``
    for a chunked body (with or without a Content-Length: refused rather than read without a
    bound) or a declared length over the limit (refused unread); uvicorn's parser already
    refused a Content-Length that is not one number."""
    headers = request.headers
    if "transfer-encoding" in headers:
        raise _TooLarge
    if int(headers.get("content-length", "0")) > MAX_BODY:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:  # the parser holds the sender to its Content-Length
            raise _TooLarge
    return bytes(body)


def _routes(
    health: Callable[[], Health],
    metrics: Metrics,
    webhooks: WebhookReceiver | None,
    console: ASGIApp | None,
) -> list[BaseRoute]:
    """The server's routes; the console, when given, takes every path the others do not."""
    receiving = anyio.CapacityLimiter(RECEIVERS)

    def healthz(request: Request) -> Response:  # sync: Starlette runs it on a worker thread
        ok, body = health()
        return JSONResponse(body, 200 if ok else 503)

    def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def webhook(request: Request) -> Response:
        """One delivery: its body read within the limits, then ``receive()`` on a worker
        thread. Any other method on the path is a 404, as a path nobody serves."""
        if webhooks is None or request.method != "POST":
            return _error(404, "not found")
        # any name after the prefix (a slash in it, none at all) is the receiver's to
        # refuse (404 unknown_connector, counted like any refused delivery)
        name = request.path_params["connector"]
        try:
            with anyio.fail_after(BODY_TIMEOUT_S):
                body: bytes | None = await _read_body(request)
        except _TooLarge:
            body = None
        except TimeoutError:
            return _error(408, "the body was not sent in time", close=True)
        except ClientDisconnect:  # the sender went away mid-body: no one to answer
            return _error(400, "the body ended early", close=True)
        headers = dict(request.headers.items())
        try:
            answer = await anyio.to_thread.run_sync(
                webhooks.receive, name, headers, body, limiter=receiving
            )
        except Exception as exc:  # a bug: the sender retries, the daemon goes on
            log.error("webhook delivery failed", error=type(exc).__name__)
            return _error(500, "internal error")
        return JSONResponse(
            answer.body, answer.status, {"Connection": "close"} if body is None else None
        )

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route(PATH_PREFIX + "{connector:path}", webhook, methods=ANY_METHOD),
    ]
    if console is not None:
        routes.append(Mount("/", app=console))
    return routes


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, "not found")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, "method not allowed")


def create_app(
    health: Callable[[], Health],
    metrics: Metrics,
    webhooks: WebhookReceiver | None = None,
    console: Starlette | None = None,
) -> Starlette:
    """The daemon's ASGI app. A mounted console's own startup and shutdown (its lifespan)
    run with the server's, as they would were it served alone."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if console is None:
            yield
            return
        async with console.router.lifespan_context(console):
            yield

    return Starlette(
        routes=_routes(health, metrics, webhooks, console),
        exception_handlers={404: _not_found, 405: _not_allowed},
        lifespan=lifespan,
    )


# ---------------------------------------------------------------------------- lifecycle


class StatusServer:
    """Serves the daemon's app (``create_app``) with uvicorn on a thread of its own, from
    ``start()`` to ``stop()``."""

    def __init__(
        self,
        health: Callable[[], Health],
        metrics: Metrics,
        webhooks: WebhookReceiver | None = None,
    ) -> None:
        self._health = health
        self._metrics = metrics
        self._webhooks = webhooks
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._address: HttpAddress | None = None

    def start(self, address: HttpAddress, console: Starlette | None = None) -> None:
        """Listen and serve (with ``console`` at ``/``); ``UsageError`` when the address
        cannot be listened on. Returns once uvicorn serves."""
        sock = _listen(address)
        app = create_app(self._health, self._metrics, self._webhooks, console)
        config = uvicorn.Config(
            app,
            http="h11",
            loop="asyncio",
            lifespan="on" if console is not None else "off",
            log_config=None,  # the daemon's logging stays as configured
            access_log=False,
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=GRACE_S,
        )
        server = uvicorn.Server(config)
        failed: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # told to start(), which is waiting for it
                failed.append(exc)
            finally:
                sock.close()

        thread = threading.Thread(target=serve, name="http", daemon=True)
        thread.start()
        ready = _wait(lambda: server.started or not thread.is_alive(), START_TIMEOUT_S)
        if not ready or not server.started:
            server.should_exit = True
            thread.join(GRACE_S)
            why = repr(failed[0]) if failed else "it did not start"
            raise UsageError(f"--http {address.host}:{address.port}: cannot serve there: {why}")
        self._server, self._thread = server, thread
        host, port = sock.getsockname()[:2]
        self._address = HttpAddress(str(host), int(port))
        log.info(
            "http listening",
            url=f"http://{host}:{port}",
            endpoints=[
                "/healthz",
                "/metrics",
                *([f"{PATH_PREFIX}{{connector}}"] if self._webhooks else []),
                *(["/ (console)"] if console is not None else []),
            ],
        )

    @property
    def address(self) -> HttpAddress | None:
        """Where it listens (the real port when 0 was asked); None when not started."""
        return self._address

    def stop(self) -> None:
        """Stop taking connections, let requests in flight finish (``GRACE_S`` at most),
        and wait for the server's thread (when started)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(GRACE_S + 5.0)
        self._server = self._thread = None


def _listen(address: HttpAddress) -> socket.socket:
    """A listening socket on ``address`` (made here, so that a port in use is the user's
    error before anything else starts)."""
    host, port = address
    sock: socket.socket | None = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, where = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(2048)  # a burst of deliveries waits to be accepted, not refused
    except OSError as exc:
        if sock is not None:
            sock.close()
        why = exc.strerror or str(exc)
        raise UsageError(f"--http {host}:{port}: cannot listen there: {why}") from None
    return sock


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    """Poll ``done`` every 10 ms until it is true (True) or ``timeout`` passed (False)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
