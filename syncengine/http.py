"""The one HTTP client layer every HTTP connector talks through.

``HttpClient`` wraps an ``httpx.Client`` and adds what a sync engine needs from HTTP:

- a client-side rate limit (a thread-safe token bucket, requests per second);
- retries with exponential backoff and jitter on 429, 500, 502, 503, 504 and transport
  errors, honouring ``Retry-After`` (seconds or an HTTP date), bounded by ``max_retries``;
  only idempotent methods retry by default: a POST is never retried blindly, because a
  create whose outcome is unknown must be resolved by looking it up, not by sending it again;
- one exception to the backoff: a connection refused by this machine (a loopback address:
  nothing listens on the port) is tried again only briefly (``REFUSED_RETRY_DELAYS``, for a
  server still starting), quietly, and then fails with one message naming the address;
- error translation at the boundary, so that no httpx exception reaches the core::

      401, 403                    AuthError
      404                         NotFoundError       (a RecordError: skip the record)
      400, 422                    RecordError         with the server's message
      429, 5xx, transport error   RetriableError      once retries are exhausted (or not allowed)
      anything else               FatalConnectorError

- redaction: every value in ``secrets`` (and the ``Authorization`` header's value) is replaced
  by ``***`` in every message and log line this module produces (``syncengine.redact``; its
  ``Redactor`` is re-exported here);
- counters (``stats``) for benchmarks and metrics.

``connector_client`` builds the client of an HTTP connector (default headers, options, test
hooks) the same way for every connector.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import ipaddress
import json as jsonlib
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import httpx
import structlog

from syncengine import __version__
from syncengine.errors import (
    AuthError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
    RetriableError,
    SyncStopped,
)
from syncengine.redact import Redactor

if TYPE_CHECKING:
    from syncengine.connector import ConnectorContext

__all__ = [
    "REFUSED_RETRY_DELAYS",
    "RETRY_STATUSES",
    "HttpClient",
    "HttpStats",
    "QueryParams",
    "RateLimiter",
    "Redactor",
    "array_params",
    "connector_client",
    "error_message",
    "parse_retry_after",
]

QueryScalar = str | int | float | bool | None
QueryParams = Mapping[str, QueryScalar] | Sequence[tuple[str, QueryScalar]]
"""Query parameters: a mapping, or a sequence of pairs (for repeated ``name[]`` keys).
``None`` values are left out of the query string."""

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REFUSED_RETRY_DELAYS = (0.25, 0.75)
"""Seconds waited before each new try of a connection refused on a loopback address (within
``max_retries``): enough for a local server that is still starting, and then one clear error
instead of a long backoff against a server that is not running."""
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
MAX_MESSAGE = 300


def array_params(name: str, values: Iterable[QueryScalar]) -> list[tuple[str, QueryScalar]]:
    """Query pairs for an array parameter the way the Housecall Pro API wants them.

    ``array_params("status", ["paid", "open"])`` gives ``[("status[]", "paid"),
    ("status[]", "open")]``; pass it (possibly concatenated with other pairs) as ``params``.
    """
    key = name if name.endswith("[]") else f"{name}[]"
    return [(key, value) for value in values]


# ------------------------------------------------------------------------------ rate limit


class RateLimiter:
    """A thread-safe token bucket: at most ``rate`` acquisitions per second on average, with
    bursts of up to ``burst``. Each caller reserves its slot under the lock and sleeps outside
    it, so concurrent callers are spaced out rather than woken all at once."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = burst
        self._updated = clock()

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._updated = now
            self._tokens -= 1.0
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self.rate

    def acquire(self) -> float:
        """Block until a request may be sent; return the time waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait


# ------------------------------------------------------------------------------ stats


@dataclass
class HttpStats:
    """Counters of one client. Updated under a lock; read them freely."""

    requests: int = 0
    """Requests sent (every attempt counts, retries included)."""
    retries: int = 0
    """Attempts that were repeated after a retriable failure."""
    throttled: int = 0
    """429 responses received."""
    failures: int = 0
    """Requests that ended in an exception raised to the caller."""
    waited: float = 0.0
    """Seconds spent sleeping for the rate limit and for backoff."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, amount in counts.items():
                setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "throttled": self.throttled,
                "failures": self.failures,
                "waited": round(self.waited, 6),
            }


# ------------------------------------------------------------------------------ parsing


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.I)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns ``None`` when the header is absent or unreadable, ``0.0`` for a date in the past.
    ``now`` is the current POSIX time (defaults to ``time.time()``).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):  # delay-seconds; otherwise an HTTP date
        seconds = float(text)
        if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
            return None
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; be lenient with a missing zone
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


_TAG = re.compile(r"<[^>]+>")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")
_SCRIPT = re.compile(r"<(script|style)[^>]*>.*?</\1>", re.IGNORECASE | re.DOTALL)


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(_describe(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_describe(v)}" for k, v in value.items())
    return json_dumps(value)


def json_dumps(value: Any) -> str:
    return jsonlib.dumps(value, default=str, ensure_ascii=False)


def _message_from_json(body: Any) -> str:
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            inner = error.get("message") or error.get("detail")
            if inner:
                return _describe(inner)
            return _describe(error)
        if isinstance(error, str) and error:
            message = body.get("message")
            return f"{error}: {_describe(message)}" if message else error
        errors = body.get("errors")
        if isinstance(errors, Mapping) and errors:
            return "; ".join(f"{k}: {_describe(v)}" for k, v in errors.items())
        if isinstance(errors, list | tuple) and errors:
            return "; ".join(
                _message_from_json(e) if isinstance(e, Mapping) else _describe(e) for e in errors
            )
        if isinstance(errors, str) and errors:
            return errors
        for key in ("message", "detail", "title"):
            message = body.get(key)
            if message:
                return _describe(message)
        return _describe(body) if body else ""
    if isinstance(body, list | tuple):
        return _describe(body)
    if body is None:
        return ""
    return str(body)


def error_message(response: httpx.Response) -> str:
    """The server's own explanation of a failed response, read defensively.

    Understands ``{"error": {"message": ...}}``, ``{"errors": {field: [..] | str}}``,
    ``{"message": ...}``, HTML pages (their ``<title>`` or text) and plain text. Never raises;
    returns ``""`` when the body says nothing.
    """
    try:
        text = response.text
    except (httpx.HTTPError, UnicodeDecodeError, LookupError):
        return ""
    if not text.strip():
        return ""
    content_type = response.headers.get("content-type", "").lower()
    stripped = text.lstrip()
    if "json" in content_type or stripped[:1] in ("{", "["):
        with contextlib.suppress(ValueError):  # not JSON after all: read it as text below
            return _clip(_message_from_json(jsonlib.loads(text)))
    if "html" in content_type or stripped[:1] == "<":
        title = _TITLE.search(text)
        if title and title.group(1).strip():
            return _clip(_TAG.sub(" ", title.group(1)))
        return _clip(_TAG.sub(" ", _SCRIPT.sub(" ", text)))
    return _clip(text)


def is_html(response: httpx.Response) -> bool:
    """True when a response is an HTML page (e.g. a web server's 404 for an unknown route)."""
    if "html" in response.headers.get("content-type", "").lower():
        return True
    try:
        return response.text.lstrip()[:1] == "<"
    except (httpx.HTTPError, UnicodeDecodeError, LookupError):
        return False


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """The one verifying TLS context every client of this process uses.

    httpx builds a new context per client unless it is given one, and each context loads the
    CA bundle again. On Linux that memory is not all given back when the client closes
    (CPython issue 84904): a daemon that opens a client per run grew by about 1 MiB a run,
    to gigabytes in hours. Built once, with httpx's own defaults (its CA bundle, and
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set), and only read after that, so threads may
    share it. A CA bundle changed while a daemon runs is therefore read at its next start.
    """
    return httpx.create_ssl_context()


_READ: Final = httpx.ByteStream(b"")
"""The stream of a response whose body is read (``Response.content``)."""


def _unbound(response: httpx.Response) -> httpx.Response:
    """``response``, read whole, without the stream httpx binds to it. That stream refers
    back to the response, so a response let go of was freed only by the cycle collector,
    with its body: a page of a first sync (100 KB and more) stayed until a pass came, or,
    caught in a sync's frozen objects (``collector``), until the sync ended."""
    response.read()
    response.stream = _READ
    return response


def _params_list(params: QueryParams | None) -> list[tuple[str, QueryScalar]]:
    if params is None:
        return []
    pairs: Iterable[tuple[str, QueryScalar]]
    pairs = params.items() if isinstance(params, Mapping) else params
    out: list[tuple[str, QueryScalar]] = []
    for key, value in pairs:
        if value is None:
            continue
        if isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        else:
            out.append((key, value))
    return out


# ------------------------------------------------------------------------------ the client


class HttpClient:
    """A connector's HTTP client. See the module docstring for what it adds to httpx.

    ``sleep`` and ``clock`` are injectable so that tests never really wait; ``transport`` lets
    tests (``httpx.MockTransport``) and in-process sandboxes stand in for the network.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        rate_limit: float | None = None,
        transport: httpx.BaseTransport | None = None,
        secrets: Sequence[str] = (),
        name: str = "http",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.name = name
        self.stop = stop
        """The run's stop event (a daemon shutting down): once it is set, no wait (backoff,
        rate limit) holds the run. A read waiting to be sent or retried raises
        ``SyncStopped`` (it is read again next run); a write is sent or retried without the
        wait, so that its batch ends, is committed and flushed, and the run stops at the
        batch's end as ``Engine.stop`` promises."""
        if stop is not None:
            sleep = _until(stop, sleep)
        self.base_url = base_url
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.stats = HttpStats()
        self._sleep = sleep
        self._jitter = jitter
        header_map = dict(headers or {})
        self.redact = Redactor(secrets)
        for key, value in header_map.items():
            if key.lower() in ("authorization", "proxy-authorization", "x-api-key", "api-key"):
                self.redact.add([value, *value.split(None, 1)[1:]])
        self.limiter = (
            RateLimiter(rate_limit, clock=clock, sleep=sleep)
            if rate_limit is not None and rate_limit > 0
            else None
        )
        self._client = httpx.Client(
            base_url=base_url,
            headers=header_map,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            verify=shared_tls_context(),
        )

    # -- lifecycle
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests
    def request(
        self,
        method: str,
        path: str,
        *,
        params: QueryParams | None = None,
        json: Any = None,
        retry: bool | None = None,
        allow_status: Collection[int] = (),
    ) -> httpx.Response:
        """Send one request (with retries when allowed) and return its successful response.

        ``retry`` defaults to True for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE)
        and False otherwise (POST, PATCH). A status in ``allow_status`` is returned to the
        caller instead of raised (e.g. 404 for an idempotent delete).
        Raises only ``syncengine.errors`` exceptions.
        """
        method = method.upper()
        may_retry = method in IDEMPOTENT_METHODS if retry is None else retry
        query = _params_list(params)
        attempt = 0
        while True:
            if self.limiter is not None:
                waited = self.limiter.acquire()
                if waited:
                    self.stats.add(waited=waited)
            if self.stop is not None and self.stop.is_set() and method in _READS:
                raise SyncStopped("a stop was requested while a read waited its turn to be sent")
            self.stats.add(requests=1)
            try:
                response = _unbound(
                    self._client.request(method, path, params=query or None, json=json)
                )
            except httpx.UnsupportedProtocol as exc:
                raise self._fail(FatalConnectorError, method, path, self._exc_text(exc)) from None
            except httpx.TransportError as exc:
                reason = self._exc_text(exc)
                local = self._refused_locally(exc)
                if local is not None:
                    tries = min(self.max_retries, len(REFUSED_RETRY_DELAYS))
                    if may_retry and attempt < tries:
                        delay = REFUSED_RETRY_DELAYS[attempt]
                        attempt += 1
                        self._pause(method, path, attempt, delay, error=reason, level="debug")
                        continue
                    raise self._fail(
                        RetriableError,
                        method,
                        path,
                        f"cannot connect to {local} (connection refused): nothing is "
                        "listening there; start that server, or check the base_url",
                    ) from None
                if may_retry and attempt < self.max_retries:
                    attempt += 1
                    self._pause(method, path, attempt, self._backoff(attempt), error=reason)
                    continue
                raise self._gave_up(method, path, attempt, may_retry, reason) from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise self._fail(FatalConnectorError, method, path, self._exc_text(exc)) from None

            status = response.status_code
            if status < 300 or status in allow_status:
                return response
            if status == 429:
                self.stats.add(throttled=1)
            if status in RETRY_STATUSES:
                reason = self._status_text(response)
                delay = self._backoff(attempt + 1)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if retry_after is not None:
                    delay = retry_after
                if may_retry and attempt < self.max_retries:
                    if delay > self.retry_after_max:
                        raise self._gave_up(
                            method,
                            path,
                            attempt,
                            may_retry,
                            f"{reason} (the server asked to wait {delay:.0f}s, more than "
                            f"{self.retry_after_max:.0f}s)",
                        )
                    attempt += 1
                    self._pause(method, path, attempt, delay, status=status, error=reason)
                    continue
                raise self._gave_up(
                    method, path, attempt, may_retry, reason, applied_unknown=status != 429
                )
            raise self._translate(method, path, response)

    def request_json(
        self,
        method: str,
        path: str,
        *,
        params: QueryParams | None = None,
        json: Any = None,
        retry: bool | None = None,
    ) -> Any:
        """``request`` and decode the JSON body (``None`` for an empty body, e.g. 204)."""
        response = self.request(method, path, params=params, json=json, retry=retry)
        return self.decode(method, path, response)

    def get_json(
        self, path: str, *, params: QueryParams | None = None, retry: bool | None = None
    ) -> Any:
        """GET ``path`` and return its decoded JSON body."""
        return self.request_json("GET", path, params=params, retry=retry)

    def decode(self, method: str, path: str, response: httpx.Response) -> Any:
        """The JSON body of a response; a body that is not JSON is a FatalConnectorError."""
        try:
            content = response.content
        except httpx.HTTPError as exc:
            raise self._fail(FatalConnectorError, method, path, self._exc_text(exc)) from None
        if not content.strip():
            return None
        try:
            return jsonlib.loads(content)
        except ValueError:
            snippet = _clip(response.text, 80)
            raise self._fail(
                FatalConnectorError,
                method,
                path,
                f"HTTP {response.status_code}: expected JSON, got {snippet!r}",
            ) from None

    # -- internals
    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of base * 2**(attempt-1),
        capped at ``backoff_max``."""
        exponent = min(max(0, attempt - 1), 60)
        ceiling = min(self.backoff_max, self.backoff_base * 2.0**exponent)
        return ceiling * (0.5 + 0.5 * self._jitter())

    def _pause(
        self,
        method: str,
        path: str,
        attempt: int,
        delay: float,
        *,
        status: int | None = None,
        error: str = "",
        level: str = "warning",
    ) -> None:
        self.stats.add(retries=1, waited=delay)
        self._log(
            level,
            "http.retry",
            method=method,
            path=path,
            attempt=attempt,
            max_retries=self.max_retries,
            delay=round(delay, 3),
            status=status,
            error=error,
        )
        if delay > 0:
            self._sleep(delay)

    def _log(self, level: str, event: str, **fields: Any) -> None:
        clean = {k: self.redact.value(v) for k, v in fields.items() if v is not None}
        logger = structlog.get_logger("syncengine.http")
        getattr(logger, level)(self.redact(event), connector=self.redact(self.name), **clean)

    def _refused_locally(self, exc: httpx.TransportError) -> str | None:
        """``scheme://host:port`` when ``exc`` is a connection refused by a loopback address
        (nothing listens on that port of this machine), else None."""
        cause: BaseException | None = exc
        seen: set[int] = set()
        while cause is not None and not isinstance(cause, ConnectionRefusedError):
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
            if cause is not None and id(cause) in seen:  # a chain that loops
                cause = None
        if cause is None:
            return None
        try:
            url = exc.request.url
        except RuntimeError:  # raised without a request (a test transport)
            url = self._client.base_url
        host = url.host
        if host == "localhost" or host.endswith(".localhost"):
            local = True
        else:
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = False
        return f"{url.scheme}://{url.netloc.decode('ascii')}" if local else None

    def _exc_text(self, exc: Exception) -> str:
        detail = str(exc).strip()
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__

    def _status_text(self, response: httpx.Response) -> str:
        message = error_message(response)
        reason = f"HTTP {response.status_code}"
        return f"{reason}: {message}" if message else reason

    def _fail(
        self,
        kind: type[AuthError] | type[FatalConnectorError] | type[RetriableError],
        method: str,
        path: str,
        reason: str,
    ) -> Exception:
        self.stats.add(failures=1)
        return kind(self.redact(f"{method} {path}: {reason}"), connector=self.redact(self.name))

    def _gave_up(
        self,
        method: str,
        path: str,
        attempts: int,
        may_retry: bool,
        reason: str,
        *,
        applied_unknown: bool = True,
    ) -> Exception:
        if may_retry:
            note = f"gave up after {attempts + 1} attempts"
        elif applied_unknown:
            note = "not retried: the server may have applied it, look it up before resending"
        else:
            note = "not retried"
        self._log("warning", "http.gave_up", method=method, path=path, error=reason, note=note)
        return self._fail(RetriableError, method, path, f"{reason}; {note}")

    def _translate(self, method: str, path: str, response: httpx.Response) -> Exception:
        status = response.status_code
        reason = self._status_text(response)
        if status in (401, 403):
            return self._fail(AuthError, method, path, reason)
        if status in (404, 410, 400, 422):
            self.stats.add(failures=1)
            kind = NotFoundError if status in (404, 410) else RecordError
            return kind(self.redact(reason), location=self.redact(f"{self.name} {method} {path}"))
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            reason = f"{reason} (unexpected redirect to {location or 'nowhere'})"
        return self._fail(FatalConnectorError, method, path, reason)


# ------------------------------------------------------------------------------ connectors


_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def _until(stop: threading.Event, sleep: Callable[[float], None]) -> Callable[[float], None]:
    """``sleep``, ended as soon as ``stop`` is set (returns early, raises nothing: the
    request decides what a stop means for it, see ``HttpClient.stop``)."""

    def wait(seconds: float) -> None:
        if sleep is time.sleep:
            stop.wait(seconds)
        elif not stop.is_set():
            sleep(seconds)

    return wait


def connector_client(
    context: ConnectorContext,
    base_url: str,
    *,
    headers: Mapping[str, str],
    timeout: float,
    max_retries: int,
    rate_limit: float,
    secrets: Iterable[str] = (),
) -> HttpClient:
    """The ``HttpClient`` of an HTTP connector, built the one way every connector builds it.

    ``headers`` come after ``Accept: application/json`` and syncengine's ``User-Agent`` (and
    may override them). A ``rate_limit`` of 0 turns the client-side limit off. The client
    redacts ``secrets`` and the context's secrets, and is named after the connector. The
    context's test hooks are honoured: ``extra["transport"]`` (an ``httpx.BaseTransport``,
    e.g. ``httpx.MockTransport`` or an in-process sandbox; anything else is a
    ``FatalConnectorError``) and ``extra["sleep"]`` (replaces ``time.sleep``). So is the
    run's ``extra["stop"]`` (a ``threading.Event``, ``Engine.stop``: see ``HttpClient``).
    """
    transport = context.extra.get("transport")
    if transport is not None and not isinstance(transport, httpx.BaseTransport):
        raise FatalConnectorError(
            "context.extra['transport'] must be an httpx.BaseTransport", connector=context.name
        )
    stop = context.extra.get("stop")
    sleep: Callable[[float], None] = context.extra.get("sleep", time.sleep)
    return HttpClient(
        base_url,
        headers={
            "Accept": "application/json",
            "User-Agent": f"syncengine/{__version__}",
            **headers,
        },
        timeout=timeout,
        max_retries=max_retries,
        rate_limit=rate_limit or None,
        transport=transport,
        secrets=(*secrets, *context.secrets),
        name=context.name,
        sleep=sleep,
        stop=stop if isinstance(stop, threading.Event) else None,
    )
