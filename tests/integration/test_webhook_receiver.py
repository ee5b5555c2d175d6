"""The daemon's HCP webhook receiver under attack (issue 13): a real ``Daemon`` serving
``POST /webhooks/hcp/{connector}`` on loopback, its state store a SQLite file in a temporary
folder, and real HTTP requests (httpx, or bytes written to a socket where httpx will not write
the request: a lying Content-Length, a header with trailing blanks, a non-ASCII header).

``BAD`` is the table of bad deliveries: forged, truncated or re-cased signatures, missing
headers, bodies changed after signing, stale and future timestamps, bodies too large or
chunked, bodies that are no JSON or no event, wrong content types, unknown connectors and
paths. Each one must get its status code, add one to the refusal counter of its reason and
store nothing (the few malformed webhook paths the server itself answers 404 are counted
nowhere; a request whose framing uvicorn's HTTP parser refuses before any route sees it is
answered 400 or its connection closed, also counted nowhere). Then what a genuine sender
sees: the ping, a delivery that is committed before its 200, a redelivery stored once, a
replay after the tolerance window refused; a signed delivery smuggled in the body of a GET
is not taken for a second request; and after a flood of everything, ``/healthz`` still
answers and the secret is nowhere (log, stderr, responses, ``/metrics``).

The daemon's scheduled runs and event-driven runs are kept out of the way (``every 1h``, a
debounce of an hour, a sync function that does nothing): the receiver is what is tested.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from syncengine.api import open_store
from syncengine.config import Config, Pipeline, load_config
from syncengine.connector import Connector
from syncengine.connectors.housecallpro.webhooks import check, sign
from syncengine.daemon import Daemon, server
from syncengine.daemon.webhooks import MAX_BODY
from syncengine.engine import SyncResult
from syncengine.plan import Plan
from syncengine.state import StateStore

pytestmark = pytest.mark.integration

SECRET = "whsec-7c1e-receiver-under-test-52b9"
"""The signing secret of the connector ``hcp`` (the one deliveries are sent to)."""
FAST_SECRET = "whsec-4a0d-fast-window-e83f"
"""The secret of ``fast``, another HCP connector, whose tolerance is two seconds."""
TOLERANCE = 30
FAST_TOLERANCE = 2
PATH = "/webhooks/hcp/hcp"
REASONS = (
    "signature",
    "stale",
    "unknown_connector",
    "too_large",
    "content_type",
    "not_json",
    "not_event",
    "store_failed",
)
OUTCOMES = ("stored", "duplicate", "ping")
CONFIG = f"""\
[state]
url = "sqlite:///{{state}}"

[daemon]
schedule = "every 1h"
webhook_debounce = 3600

[connectors.hcp]
type = "housecallpro"
base_url = "http://127.0.0.1:9"
api_key = "${{HCP_API_KEY}}"
webhook_secret = "${{HCP_WEBHOOK_SECRET}}"
webhook_tolerance = {TOLERANCE}

[connectors.fast]
type = "housecallpro"
base_url = "http://127.0.0.1:9"
api_key = "${{HCP_API_KEY}}"
webhook_secret = "${{FAST_WEBHOOK_SECRET}}"
webhook_tolerance = {FAST_TOLERANCE}

[connectors.plain]
type = "housecallpro"
base_url = "http://127.0.0.1:9"
api_key = "${{HCP_API_KEY}}"

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = ["customers"]
"""


# ---------------------------------------------------------------------- the requests


@dataclass(frozen=True)
class Delivery:
    """One request to the daemon: sent with httpx, or ``raw`` bytes written to a socket."""

    path: str = PATH
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunked: bool = False
    """Send the body with ``Transfer-Encoding: chunked`` (httpx, from a generator)."""
    raw: bytes | None = None
    """The whole request as written on the wire (``path``, ``headers`` and ``body`` unused)."""
    half_close: bool = False
    """With ``raw``: shut the socket's sending side once written (the body ends early)."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Ctx:
    """What a case builds its delivery from, at the moment it is sent."""

    now: int
    """The clock, in whole seconds (what HCP puts in ``api-timestamp``)."""
    tag: str
    """The case's id: every case's event differs, so a wrong acceptance shows as stored."""

    @property
    def ts(self) -> str:
        return str(self.now)

    @property
    def body(self) -> bytes:
        """A genuine-looking HCP event, unique to the case."""
        return event_body(self.tag)


def event_body(tag: str, **extra: Any) -> bytes:
    payload = {
        "event": "customer.updated",
        "event_occurred_at": "2026-12-04T10:00:00Z",
        "company_id": "c0mpany-0001",
        "customer": {"id": f"cus_{tag}", "first_name": "Ada", "last_name": tag},
        **extra,
    }
    return json.dumps(payload).encode()


def hcp_headers(
    ts: str | None, signature: str | None, content_type: str | None = "application/json"
) -> dict[str, str]:
    """HCP's headers; None leaves a header out."""
    out: dict[str, str] = {}
    if content_type is not None:
        out["content-type"] = content_type
    if ts is not None:
        out["api-timestamp"] = ts
    if signature is not None:
        out["api-signature"] = signature
    return out


def signed(
    body: bytes,
    ts: str,
    *,
    path: str = PATH,
    content_type: str | None = "application/json",
    secret: str = SECRET,
) -> Delivery:
    """A delivery signed as HCP signs it."""
    return Delivery(path, hcp_headers(ts, sign(secret, ts, body), content_type), body)


def forged(c: Ctx, signature: str | None, body: bytes | None = None) -> Delivery:
    """``c``'s event (or ``body``) sent now with ``signature`` (None: no signature)."""
    return Delivery(
        PATH, hcp_headers(c.ts, signature, "application/json"), c.body if body is None else body
    )


def wire(
    path: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    *,
    content_length: str | None = "auto",
) -> bytes:
    """A request as bytes, headers written as given (latin-1)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    if content_length == "auto":
        lines.append(f"Content-Length: {len(body)}")
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def signed_wire(c: Ctx, *, content_length: str | None = "auto", body: bytes | None = None) -> bytes:
    """``c``'s event, correctly signed, as bytes (to lie about its framing)."""
    body = c.body if body is None else body
    headers = [
        ("Content-Type", "application/json"),
        ("api-timestamp", c.ts),
        ("api-signature", sign(SECRET, c.ts, body)),
    ]
    return wire(PATH, headers, body, content_length=content_length)


CLOSED = 0
"""The status of a ``Reply`` when the server closed the connection without answering."""


def exchange(port: int, data: bytes, *, half_close: bool = False) -> Reply:
    """Write ``data`` to a fresh connection and read the first response (``CLOSED``: none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                assert received == b"", f"the connection closed mid-response: {received!r}"
                return Reply(CLOSED, {}, b"")
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return Reply(status, headers, rest[:length])


def read_all(port: int, data: bytes) -> bytes:
    """Write ``data`` to a fresh connection, say it is all, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


# ------------------------------------------------------------------------ the daemon


def idle_sync(
    config: Config,
    store: StateStore,
    pipeline: Pipeline,
    stop: threading.Event,
    connectors: list[Connector],
) -> SyncResult:
    """The daemon's sync: records the call and does nothing."""
    SYNC_CALLS.append(pipeline.name)
    return SyncResult(pipeline.name, False, "", Plan(pipeline.name, False))


SYNC_CALLS: list[str] = []


@dataclass
class Receiver:
    """The running daemon, its store and how to talk to it."""

    daemon: Daemon
    store: StateStore
    config: Config
    client: httpx.Client

    @property
    def port(self) -> int:
        address = self.daemon.http_address
        assert address is not None
        return address.port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, delivery: Delivery) -> Reply:
        if delivery.raw is not None:
            return exchange(self.port, delivery.raw, half_close=delivery.half_close)
        content: bytes | Iterator[bytes] = delivery.body
        if delivery.chunked:
            content = iter([delivery.body[:100], delivery.body[100:]])
        response = self.client.post(
            self.base + delivery.path, headers=delivery.headers, content=content
        )
        return Reply(response.status_code, dict(response.headers), response.content)

    def get(self, path: str) -> httpx.Response:
        return self.client.get(self.base + path)

    def refused(self, reason: str) -> float:
        value = self.daemon.metrics.value("syncengine_webhook_refused_total", {"reason": reason})
        return float(value or 0.0)

    def refusals(self) -> dict[str, float]:
        return {reason: self.refused(reason) for reason in REASONS}

    def outcome(self, connector: str, outcome: str) -> float:
        value = self.daemon.metrics.value(
            "syncengine_webhook_deliveries_total", {"connector": connector, "outcome": outcome}
        )
        return float(value or 0.0)

    def outcomes(self) -> dict[tuple[str, str], float]:
        names = ("hcp", "fast", "plain", "books", "nope")
        return {(c, o): self.outcome(c, o) for c in names for o in OUTCOMES}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    folder = tmp_path_factory.mktemp("webhook-receiver")
    (folder / "books").mkdir()
    path = folder / "config.toml"
    path.write_text(CONFIG.replace("{state}", (folder / "state.db").as_posix()), encoding="utf-8")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HCP_API_KEY", "hcp-api-key-not-used-here")
        env.setenv("HCP_WEBHOOK_SECRET", SECRET)
        env.setenv("FAST_WEBHOOK_SECRET", FAST_SECRET)
        config = load_config(path)
    store = open_store(config)
    daemon = Daemon(config, store, http=("127.0.0.1", 0), sync=idle_sync)
    daemon.start()
    client = httpx.Client(timeout=15)
    try:
        yield Receiver(daemon, store, config, client)
    finally:
        client.close()
        daemon.request_stop()
        daemon.shutdown()
        store.close()


# --------------------------------------------------------------- the bad deliveries


PARSER = -1
"""A ``Bad``'s status when uvicorn's HTTP parser (h11) refuses the request's framing before
any route sees it: answered 400 with the connection closed, or the connection closed with no
answer. No route ran, so no refusal is counted; nothing is stored either way."""


@dataclass(frozen=True)
class Bad:
    id: str
    status: int
    """The answer's status, or ``PARSER``."""
    reason: str | None
    """The refusal counter's label; None: the server refused the path itself (not counted)."""
    make: Callable[[Ctx], Delivery]

    def answered(self, reply: Reply) -> bool:
        """Whether ``reply`` is the answer this case must get."""
        if self.status == PARSER:
            return reply.status == CLOSED or (
                reply.status == 400 and reply.headers.get("connection") == "close"
            )
        return reply.status == self.status and "error" in reply.json()


def _hex_digit_changed(signature: str, index: int) -> str:
    index %= len(signature)
    digit = "0" if signature[index] != "0" else "1"
    changed = signature[:index] + digit + signature[index + 1 :]
    assert len(changed) == len(signature) and changed != signature
    return changed


def _unsigned(body: bytes, content_type: str | None = "application/json") -> Delivery:
    return Delivery(PATH, hcp_headers(None, None, content_type), body)


def _stale(offset: int) -> Callable[[Ctx], Delivery]:
    """Signed right, ``offset`` seconds from now."""
    return lambda c: signed(c.body, str(c.now + offset))


def _with_ts(ts: Callable[[Ctx], str]) -> Callable[[Ctx], Delivery]:
    """Signed right over an odd ``api-timestamp``."""
    return lambda c: signed(c.body, ts(c))


def _body(
    body: Callable[[Ctx], bytes], content_type: str | None = "application/json"
) -> Callable[[Ctx], Delivery]:
    """Signed right over an odd body."""
    return lambda c: signed(body(c), c.ts, content_type=content_type)


def _typed(content_type: str | None) -> Callable[[Ctx], Delivery]:
    return lambda c: signed(c.body, c.ts, content_type=content_type)


def _to(path: str) -> Callable[[Ctx], Delivery]:
    """Signed right, sent to another path."""
    return lambda c: signed(c.body, c.ts, path=path)


PING = b'{"foo": "bar"}'
DEEP = 100_000
"""Nesting deeper than Python's JSON decoder recurses."""

BAD: list[Bad] = [
    # -- signatures that do not verify: 401 signature
    Bad(
        "sig-random-hex",
        401,
        "signature",
        lambda c: forged(c, hashlib.sha256(b"guess").hexdigest()),
    ),
    Bad(
        "sig-of-another-connectors-secret",
        401,
        "signature",
        lambda c: signed(c.body, c.ts, secret=FAST_SECRET),
    ),
    Bad(
        "sig-of-a-guessed-secret",
        401,
        "signature",
        lambda c: signed(c.body, c.ts, secret="password"),
    ),
    Bad("sig-of-an-empty-secret", 401, "signature", lambda c: signed(c.body, c.ts, secret="")),
    Bad(
        "sig-last-hex-digit-changed",
        401,
        "signature",
        lambda c: forged(c, _hex_digit_changed(sign(SECRET, c.ts, c.body), -1)),
    ),
    Bad(
        "sig-first-hex-digit-changed",
        401,
        "signature",
        lambda c: forged(c, _hex_digit_changed(sign(SECRET, c.ts, c.body), 0)),
    ),
    Bad("sig-empty", 401, "signature", lambda c: forged(c, "")),
    Bad(
        "sig-truncated-to-half",
        401,
        "signature",
        lambda c: forged(c, sign(SECRET, c.ts, c.body)[:32]),
    ),
    Bad(
        "sig-truncated-by-one-digit",
        401,
        "signature",
        lambda c: forged(c, sign(SECRET, c.ts, c.body)[:-1]),
    ),
    Bad(
        "sig-one-digit-too-long",
        401,
        "signature",
        lambda c: forged(c, sign(SECRET, c.ts, c.body) + "0"),
    ),
    Bad(
        "sig-upper-case", 401, "signature", lambda c: forged(c, sign(SECRET, c.ts, c.body).upper())
    ),
    Bad("sig-header-missing", 401, "signature", lambda c: forged(c, None)),
    Bad(
        "ts-header-missing",
        401,
        "signature",
        lambda c: Delivery(PATH, hcp_headers(None, sign(SECRET, c.ts, c.body)), c.body),
    ),
    Bad("both-headers-missing", 401, "signature", lambda c: _unsigned(c.body)),
    Bad(
        "sig-over-another-body",
        401,
        "signature",
        lambda c: forged(c, sign(SECRET, c.ts, event_body("other"))),
    ),
    Bad(
        "sig-over-another-timestamp",
        401,
        "signature",
        lambda c: forged(c, sign(SECRET, str(c.now - 1), c.body)),
    ),
    Bad(
        "newline-added-after-signing",
        401,
        "signature",
        lambda c: forged(c, sign(SECRET, c.ts, c.body), c.body + b"\n"),
    ),
    Bad(
        "trailing-blank-added-after-signing",
        401,
        "signature",
        lambda c: forged(c, sign(SECRET, c.ts, c.body), c.body + b" "),
    ),
    Bad(
        "leading-blank-added-after-signing",
        401,
        "signature",
        lambda c: forged(c, sign(SECRET, c.ts, c.body), b" " + c.body),
    ),
    Bad(
        "same-json-re-encoded-after-signing",
        401,
        "signature",
        lambda c: forged(
            c,
            sign(SECRET, c.ts, c.body),
            json.dumps(json.loads(c.body), separators=(",", ":")).encode(),
        ),
    ),
    Bad(
        "sig-with-blanks-inside",
        401,
        "signature",
        lambda c: forged(c, " ".join(re.findall("........", sign(SECRET, c.ts, c.body)))),
    ),
    Bad(
        "sig-prefixed-sha256=",
        401,
        "signature",
        lambda c: forged(c, "sha256=" + sign(SECRET, c.ts, c.body)),
    ),
    Bad(
        "sig-in-base64",
        401,
        "signature",
        lambda c: forged(c, base64.b64encode(bytes.fromhex(sign(SECRET, c.ts, c.body))).decode()),
    ),
    Bad(
        "sig-without-the-timestamp",
        401,
        "signature",
        lambda c: forged(c, hmac.new(SECRET.encode(), c.body, hashlib.sha256).hexdigest()),
    ),
    Bad(
        "sig-without-the-dot",
        401,
        "signature",
        lambda c: forged(
            c, hmac.new(SECRET.encode(), c.ts.encode() + c.body, hashlib.sha256).hexdigest()
        ),
    ),
    Bad(
        "sig-as-plain-sha256",
        401,
        "signature",
        lambda c: forged(c, hashlib.sha256(c.ts.encode() + b"." + c.body).hexdigest()),
    ),
    Bad(
        "sig-as-hmac-sha1",
        401,
        "signature",
        lambda c: forged(
            c, hmac.new(SECRET.encode(), c.ts.encode() + b"." + c.body, hashlib.sha1).hexdigest()
        ),
    ),
    Bad(
        "sig-and-ts-headers-swapped",
        401,
        "signature",
        lambda c: Delivery(PATH, hcp_headers(sign(SECRET, c.ts, c.body), c.ts), c.body),
    ),
    Bad("ts-empty", 401, "signature", _with_ts(lambda c: "")),
    Bad(
        "ts-not-ascii",
        401,
        "signature",
        lambda c: Delivery(
            raw=wire(
                PATH,
                [
                    ("Content-Type", "application/json"),
                    ("api-timestamp", c.ts + "\xe9"),
                    ("api-signature", sign(SECRET, c.ts, c.body)),
                ],
                c.body,
            )
        ),
    ),
    Bad(
        "ts-not-numeric-and-sig-wrong",
        401,
        "signature",
        lambda c: Delivery(PATH, hcp_headers("yesterday", sign(SECRET, c.ts, c.body)), c.body),
    ),
    # -- HCP's unsigned ping is exactly {"foo": "bar"}: anything else unsigned is refused
    Bad(
        "ping-with-a-bad-signature",
        401,
        "signature",
        lambda c: forged(c, hashlib.sha256(b"x").hexdigest(), PING),
    ),
    Bad("ping-with-an-extra-key", 401, "signature", lambda c: _unsigned(b'{"foo": "bar", "x": 1}')),
    Bad("ping-with-another-value", 401, "signature", lambda c: _unsigned(b'{"foo": "baz"}')),
    Bad("ping-as-an-array", 401, "signature", lambda c: _unsigned(b'["foo", "bar"]')),
    Bad(
        "ping-padded-past-64-bytes",
        401,
        "signature",
        lambda c: _unsigned(b'{"foo": "bar"' + b" " * 60 + b"}"),
    ),
    Bad(
        "ping-to-an-unknown-connector",
        404,
        "unknown_connector",
        lambda c: Delivery("/webhooks/hcp/nope", hcp_headers(None, None), PING),
    ),
    # -- signed right, but the timestamp is out of the window (or no time at all): 401 stale
    Bad("ts-tolerance+1s-in-the-past", 401, "stale", _stale(-(TOLERANCE + 1))),
    Bad("ts-tolerance+1s-in-the-future", 401, "stale", _stale(TOLERANCE + 2)),
    Bad("ts-an-hour-old-replay", 401, "stale", _stale(-3600)),
    Bad("ts-a-day-ahead", 401, "stale", _stale(86400)),
    Bad("ts-zero", 401, "stale", _with_ts(lambda c: "0")),
    Bad("ts-negative", 401, "stale", _with_ts(lambda c: "-5")),
    Bad("ts-negative-now", 401, "stale", _with_ts(lambda c: f"-{c.now}")),
    Bad("ts-not-numeric", 401, "stale", _with_ts(lambda c: "yesterday")),
    Bad("ts-nan", 401, "stale", _with_ts(lambda c: "nan")),
    Bad("ts-infinity", 401, "stale", _with_ts(lambda c: "inf")),
    Bad("ts-iso-date", 401, "stale", _with_ts(lambda c: "2026-12-04T10:00:00Z")),
    Bad(
        "ts-milliseconds-out-of-window",
        401,
        "stale",
        _with_ts(lambda c: str((c.now - TOLERANCE - 5) * 1000)),
    ),
    Bad("ts-1e10-far-future", 401, "stale", _with_ts(lambda c: "1e10")),
    # -- bodies too large to read: 413 too_large
    Bad(
        "body-1MiB+1-signed",
        413,
        "too_large",
        _body(lambda c: c.body[:-1] + b" " * (MAX_BODY + 1 - len(c.body)) + b"}"),
    ),
    Bad(
        "content-length-claims-2MiB",
        413,
        "too_large",
        lambda c: Delivery(raw=signed_wire(c, content_length=str(2 * MAX_BODY), body=b"")),
    ),
    Bad(
        "chunked-body",
        413,
        "too_large",
        lambda c: Delivery(PATH, signed(c.body, c.ts).headers, c.body, chunked=True),
    ),
    Bad(
        "chunked-and-content-length",
        413,
        "too_large",
        lambda c: Delivery(
            raw=wire(
                PATH,
                [
                    ("Content-Type", "application/json"),
                    ("api-timestamp", c.ts),
                    ("api-signature", sign(SECRET, c.ts, c.body)),
                    ("Transfer-Encoding", "chunked"),
                ],
                f"{len(c.body):x}\r\n".encode() + c.body + b"\r\n0\r\n\r\n",
            )
        ),
    ),
    # -- a Content-Length that is not one number: uvicorn's parser refuses the request (400,
    #    connection closed) before the receiver sees it, so it is counted nowhere (the
    #    http.server receiver read no body and answered 413 too_large)
    Bad(
        "content-length-not-a-number",
        PARSER,
        None,
        lambda c: Delivery(raw=signed_wire(c, content_length="ten")),
    ),
    Bad(
        "content-length-negative",
        PARSER,
        None,
        lambda c: Delivery(raw=signed_wire(c, content_length="-1")),
    ),
    Bad(
        "content-length-superscript-two",
        PARSER,
        None,
        lambda c: Delivery(raw=signed_wire(c, content_length="\xb2")),
    ),
    Bad(
        "content-length-5000-digits",
        PARSER,
        None,
        lambda c: Delivery(raw=signed_wire(c, content_length="9" * 5000)),
    ),
    Bad(
        "content-length-twice-differing",
        PARSER,
        None,
        lambda c: Delivery(
            raw=wire(
                PATH,
                [
                    ("Content-Type", "application/json"),
                    ("api-timestamp", c.ts),
                    ("api-signature", sign(SECRET, c.ts, c.body)),
                    ("Content-Length", "5"),
                    ("Content-Length", str(len(c.body))),
                ],
                c.body,
                content_length=None,
            )
        ),
    ),
    # -- lying about the length of a signed body: what is read does not verify. A body that
    #    ends before its Content-Length (the sender half-closed) is no request at all: uvicorn
    #    sees the connection end mid-body and the receiver never runs, so no answer and no
    #    count (the http.server receiver read the short body and answered 401 signature)
    Bad(
        "content-length-longer-than-the-body",
        PARSER,
        None,
        lambda c: Delivery(raw=signed_wire(c)[: -(len(c.body) // 2)], half_close=True),
    ),
    Bad(
        "content-length-shorter-than-the-body",
        401,
        "signature",
        lambda c: Delivery(raw=signed_wire(c, content_length=str(len(c.body) - 5))),
    ),
    # -- signed right, but no JSON: 400 not_json
    Bad("body-empty", 400, "not_json", _body(lambda c: b"")),
    Bad("body-plain-text", 400, "not_json", _body(lambda c: b"customer.updated")),
    Bad("body-json-cut-short", 400, "not_json", _body(lambda c: c.body[:-1])),
    Bad("body-json-then-garbage", 400, "not_json", _body(lambda c: c.body + b"}")),
    Bad(
        "body-invalid-utf8",
        400,
        "not_json",
        _body(lambda c: b'{"event": "customer.updated\xff\xfe"}'),
    ),
    Bad("body-xml", 400, "not_json", _body(lambda c: b"<event>customer.updated</event>")),
    Bad(
        "body-number-over-4300-digits",
        400,
        "not_json",
        _body(lambda c: b'{"event": "customer.updated", "n": ' + b"7" * 5000 + b"}"),
    ),
    Bad("body-nested-too-deep", 400, "not_json", _body(lambda c: b"[" * DEEP + b"]" * DEEP)),
    Bad(
        "body-event-nested-too-deep",
        400,
        "not_json",
        _body(
            lambda c: (
                b'{"event": "customer.updated", "customer": ' + b"[" * DEEP + b"]" * DEEP + b"}"
            )
        ),
    ),
    # -- signed JSON that is no event: 400 not_event
    Bad("json-array", 400, "not_event", _body(lambda c: b"[" + c.body + b"]")),
    Bad("json-string", 400, "not_event", _body(lambda c: b'"customer.updated"')),
    Bad("json-number", 400, "not_event", _body(lambda c: b"42")),
    Bad("json-nan", 400, "not_event", _body(lambda c: b"NaN")),
    Bad("json-null", 400, "not_event", _body(lambda c: b"null")),
    Bad("json-true", 400, "not_event", _body(lambda c: b"true")),
    Bad(
        "json-object-without-event",
        400,
        "not_event",
        _body(lambda c: b'{"customer": {"id": "cus_1"}}'),
    ),
    Bad("json-event-empty", 400, "not_event", _body(lambda c: b'{"event": ""}')),
    Bad("json-event-blank", 400, "not_event", _body(lambda c: b'{"event": "   "}')),
    Bad("json-event-a-number", 400, "not_event", _body(lambda c: b'{"event": 5}')),
    Bad("json-event-null", 400, "not_event", _body(lambda c: b'{"event": null}')),
    Bad("json-event-a-list", 400, "not_event", _body(lambda c: b'{"event": ["customer.updated"]}')),
    # -- signed right, but not sent as JSON: 415 content_type
    Bad("content-type-text-plain", 415, "content_type", _typed("text/plain")),
    Bad(
        "content-type-form-urlencoded",
        415,
        "content_type",
        _typed("application/x-www-form-urlencoded"),
    ),
    Bad("content-type-missing", 415, "content_type", _typed(None)),
    Bad("content-type-multipart", 415, "content_type", _typed("multipart/form-data; boundary=x")),
    Bad("content-type-xml", 415, "content_type", _typed("application/xml")),
    Bad("content-type-text-json", 415, "content_type", _typed("text/json")),
    Bad("content-type-json-patch", 415, "content_type", _typed("application/json-patch+json")),
    # -- no webhook there: 404
    Bad("connector-unknown", 404, "unknown_connector", _to("/webhooks/hcp/nope")),
    Bad("connector-not-housecallpro", 404, "unknown_connector", _to("/webhooks/hcp/books")),
    Bad("connector-without-webhook-secret", 404, "unknown_connector", _to("/webhooks/hcp/plain")),
    Bad("connector-name-upper-case", 404, "unknown_connector", _to("/webhooks/hcp/HCP")),
    Bad("connector-name-with-a-blank", 404, "unknown_connector", _to("/webhooks/hcp/hcp%20")),
    Bad("path-extra-segment", 404, "unknown_connector", _to("/webhooks/hcp/hcp/extra")),
    Bad("path-encoded-slash", 404, "unknown_connector", _to("/webhooks/hcp/hcp%2Fextra")),
    Bad("path-trailing-slash", 404, "unknown_connector", _to("/webhooks/hcp/hcp/")),
    Bad("path-no-connector", 404, "unknown_connector", _to("/webhooks/hcp/")),
    Bad("path-other-service", 404, None, _to("/webhooks/stripe/hcp")),
    Bad(
        "path-dot-segments",
        404,
        "unknown_connector",
        lambda c: Delivery(
            raw=wire("/webhooks/hcp/../hcp", list(signed(c.body, c.ts).headers.items()), c.body)
        ),
    ),
]


def send_bad(receiver: Receiver, case: Bad) -> Reply:
    return receiver.send(case.make(Ctx(int(time.time()), case.id)))


def test_the_table_holds_at_least_50_bad_deliveries() -> None:
    ids = [case.id for case in BAD]
    assert len(set(ids)) == len(ids), "every case has its own id"
    counted = [case for case in BAD if case.reason is not None]
    assert len(counted) >= 50, len(counted)
    assert len(BAD) >= 50


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_a_bad_delivery_is_refused_with_its_code_and_nothing_is_stored(
    receiver: Receiver, case: Bad
) -> None:
    stored = receiver.store.inbox_count()
    refusals = receiver.refusals()
    outcomes = receiver.outcomes()

    reply = send_bad(receiver, case)

    assert case.answered(reply), (reply.status, reply.headers, reply.body[:300])
    assert SECRET.encode() not in reply.body
    assert receiver.store.inbox_count() == stored
    expected = dict(refusals)
    if case.reason is not None:
        expected[case.reason] += 1
    assert receiver.refusals() == expected
    assert receiver.outcomes() == outcomes


# ---------------------------------------------------------------- genuine deliveries


def genuine(tag: str, **extra: Any) -> Delivery:
    return signed(event_body(tag, **extra), str(int(time.time())))


def test_blanks_around_a_header_value_are_no_part_of_it(receiver: Receiver) -> None:
    """uvicorn's parser (h11) drops the blanks around a header value, as RFC 9110 (5.5) says
    a field value has none: a delivery signed right whose ``api-signature`` or
    ``api-timestamp`` ends in blanks on the wire is the genuine delivery (the http.server
    receiver kept them and refused it 401). Nothing can be forged this way: the signature
    must still verify over the timestamp and the body."""
    c = Ctx(int(time.time()), "blanks")
    signature = sign(SECRET, c.ts, c.body)
    count = receiver.store.inbox_count()

    def padded(sig_pad: str, ts_pad: str, signature: str = signature) -> Delivery:
        headers = [
            ("Content-Type", "application/json"),
            ("api-timestamp", c.ts + ts_pad),
            ("api-signature", signature + sig_pad),
        ]
        return Delivery(raw=wire(PATH, headers, c.body))

    first = receiver.send(padded("  ", ""))
    again = receiver.send(padded("", " "))
    forged_sig = _hex_digit_changed(signature, 5)
    refusals = receiver.refusals()
    forged = receiver.send(padded("  ", " ", forged_sig))

    assert first.status == 200 and "id" in first.json(), first.body
    assert again.status == 200 and again.json() == {"ok": True, "duplicate": True}, again.body
    assert receiver.store.inbox_count() == count + 1
    assert forged.status == 401, forged.body
    assert receiver.refusals() == {**refusals, "signature": refusals["signature"] + 1}


def test_upper_case_hex_does_not_verify_but_the_lower_case_hcp_sends_does() -> None:
    body = event_body("cased")
    ts = str(int(time.time()))
    signature = sign(SECRET, ts, body)
    assert signature == signature.lower()
    options = {"now": float(ts), "tolerance": float(TOLERANCE)}
    assert check(SECRET, {"api-signature": signature, "api-timestamp": ts}, body, **options) is None
    upper = {"api-signature": signature.upper(), "api-timestamp": ts}
    assert check(SECRET, upper, body, **options) == "signature"


def test_a_genuine_delivery_is_committed_before_its_200(receiver: Receiver) -> None:
    before = receiver.store.inbox_count()
    stored = receiver.outcome("hcp", "stored")

    reply = receiver.send(genuine("committed"))

    assert reply.status == 200, reply.body
    event_id = reply.json()["id"]
    second = StateStore.open(receiver.config.state_url, base_dir=str(receiver.config.base_dir))
    try:
        pending = {e.id: e for e in second.pending_events("hcp-books", ["hcp"])}
        assert second.inbox_count() == before + 1
    finally:
        second.close()
    assert event_id in pending
    event = pending[event_id]
    assert (event.connector, event.event, event.record_id) == (
        "hcp",
        "customer.updated",
        "cus_committed",
    )
    assert event.payload["customer"]["last_name"] == "committed"
    assert receiver.outcome("hcp", "stored") == stored + 1


def test_a_body_of_exactly_1_mib_is_taken(receiver: Receiver) -> None:
    body = event_body("one-mib")
    body = body[:-1] + b" " * (MAX_BODY - len(body)) + b"}"
    assert len(body) == MAX_BODY
    before = receiver.store.inbox_count()

    reply = receiver.send(signed(body, str(int(time.time()))))

    assert reply.status == 200, reply.body
    assert receiver.store.inbox_count() == before + 1


def test_a_redelivery_within_the_window_is_answered_200_and_stored_once(
    receiver: Receiver,
) -> None:
    delivery = genuine("redelivered")
    first = receiver.send(delivery)
    assert first.status == 200 and "id" in first.json(), first.body
    count = receiver.store.inbox_count()
    duplicates = receiver.outcome("hcp", "duplicate")
    refusals = receiver.refusals()

    again = receiver.send(delivery)  # the very same request, captured and sent again
    time.sleep(1.1)
    resigned = receiver.send(signed(delivery.body, str(int(time.time()))))  # HCP's retry

    for reply in (again, resigned):
        assert reply.status == 200, reply.body
        assert reply.json() == {"ok": True, "duplicate": True}
    assert receiver.store.inbox_count() == count
    assert receiver.outcome("hcp", "duplicate") == duplicates + 2
    assert receiver.refusals() == refusals


def test_a_delivery_replayed_after_the_window_is_refused_as_stale(receiver: Receiver) -> None:
    ts = str(int(time.time()))
    captured = signed(event_body("replayed"), ts, path="/webhooks/hcp/fast", secret=FAST_SECRET)
    first = receiver.send(captured)
    assert first.status == 200, first.body
    count = receiver.store.inbox_count()
    stale = receiver.refused("stale")
    while time.time() <= int(ts) + FAST_TOLERANCE + 0.3:
        time.sleep(0.1)

    replay = receiver.send(captured)

    assert replay.status == 401, replay.body
    assert receiver.refused("stale") == stale + 1
    assert receiver.store.inbox_count() == count


@pytest.mark.parametrize(
    "headers",
    [
        hcp_headers(None, None),
        hcp_headers(None, None, content_type=None),
        hcp_headers("1764864000", None),
        hcp_headers(None, ""),
    ],
    ids=["json", "no-content-type", "timestamp-only", "empty-signature"],
)
def test_the_unsigned_ping_is_answered_200_and_not_stored(
    receiver: Receiver, headers: dict[str, str]
) -> None:
    count = receiver.store.inbox_count()
    pings = receiver.outcome("hcp", "ping")
    refusals = receiver.refusals()

    reply = receiver.send(Delivery(PATH, headers, PING))

    assert reply.status == 200, reply.body
    assert reply.json() == {"ok": True}
    assert receiver.store.inbox_count() == count
    assert receiver.outcome("hcp", "ping") == pings + 1
    assert receiver.refusals() == refusals


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_the_webhook_path_store_nothing(receiver: Receiver, method: str) -> None:
    count = receiver.store.inbox_count()
    refusals = receiver.refusals()
    delivery = genuine(f"method-{method}")

    response = receiver.client.request(
        method, receiver.base + PATH, headers=delivery.headers, content=delivery.body
    )

    assert response.status_code in (404, 405, 501), response.text
    assert receiver.store.inbox_count() == count
    assert receiver.refusals() == refusals


def test_a_delivery_smuggled_in_the_body_of_a_get_is_not_processed(receiver: Receiver) -> None:
    # a GET's body is part of the GET: were it left unread on the kept-alive connection, the
    # server would take it for the next request
    count = receiver.store.inbox_count()
    outcomes = receiver.outcomes()
    refusals = receiver.refusals()
    smuggled = signed_wire(Ctx(int(time.time()), "smuggled"))
    get = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(smuggled)}\r\n\r\n"

    answers = read_all(receiver.port, get.encode() + smuggled)

    assert re.findall(rb"^HTTP/1\.1 (\d+)", answers, re.M) == [b"404"], answers
    assert receiver.store.inbox_count() == count
    assert receiver.outcomes() == outcomes
    assert receiver.refusals() == refusals


def test_a_body_not_sent_in_time_is_refused_408_and_nothing_is_stored(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a sender that stops sending mid-body is let go (with the connection) instead of
    # holding it forever; the timeout is shortened here, the server reads it per request
    monkeypatch.setattr(server, "BODY_TIMEOUT_S", 0.5)
    count = receiver.store.inbox_count()
    outcomes = receiver.outcomes()
    refusals = receiver.refusals()
    whole = signed_wire(Ctx(int(time.time()), "stalled"))

    reply = exchange(receiver.port, whole[:-10])  # the last 10 bytes never come

    assert reply.status == 408, reply.body
    assert reply.headers["connection"] == "close"
    assert receiver.store.inbox_count() == count
    assert receiver.outcomes() == outcomes
    assert receiver.refusals() == refusals


def test_metrics_show_the_refusals_by_reason(receiver: Receiver) -> None:
    for case in BAD:
        if case.id in ("sig-random-hex", "ts-a-day-ahead", "connector-unknown", "json-null"):
            send_bad(receiver, case)

    text = receiver.get("/metrics").text

    shown = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^syncengine_webhook_refused_total\{reason="(\w+)"\} (\S+)$', text, re.M
        )
    }
    for reason in ("signature", "stale", "unknown_connector", "not_event"):
        assert shown[reason] == receiver.refused(reason) >= 1


def test_after_a_flood_healthz_answers_genuine_deliveries_are_taken_and_the_secret_is_nowhere(
    receiver: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    count = receiver.store.inbox_count()
    refusals = receiver.refusals()
    expected = dict(refusals)
    for case in BAD:
        if case.reason is not None:
            expected[case.reason] += 2

    with capture_logs() as logs, ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda case: send_bad(receiver, case), BAD * 2))
        genuine_reply = receiver.send(genuine("after-the-flood"))
        ping = receiver.send(Delivery(PATH, hcp_headers(None, None), PING))
        health = receiver.get("/healthz")
        metrics = receiver.get("/metrics")

    assert [case.id for case, r in zip(BAD * 2, replies, strict=True) if not case.answered(r)] == []
    assert receiver.refusals() == expected
    assert genuine_reply.status == 200 and ping.status == 200
    assert receiver.store.inbox_count() == count + 1
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    assert metrics.status_code == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert any(entry.get("event") == "webhook delivery refused" for entry in logs)
    seen = [
        out,
        err,
        repr(logs),
        metrics.text,
        health.text,
        *(r.body.decode("latin-1") for r in (*replies, genuine_reply, ping)),
        *(repr(r.headers) for r in (*replies, genuine_reply, ping)),
    ]
    for secret in (SECRET, FAST_SECRET):
        assert not [text for text in seen if secret in text]
    assert len(SYNC_CALLS) <= 1  # the first scheduled run at most: no event-driven run
