"""syncengine.http: retries, backoff, Retry-After, error translation, redaction, rate limit.

Only ``httpx.MockTransport`` stands in for the network; sleeping and clocks are injected, so
nothing here really waits.
"""

from __future__ import annotations

import email.utils
import re
import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from syncengine.connector import ConnectorContext
from syncengine.errors import (
    AuthError,
    ConnectorError,
    FatalConnectorError,
    NotFoundError,
    RecordError,
    RetriableError,
    SyncEngineError,
    SyncStopped,
)
from syncengine.http import (
    HttpClient,
    RateLimiter,
    array_params,
    connector_client,
    error_message,
    parse_retry_after,
    shared_tls_context,
)

Handler = Callable[[httpx.Request], httpx.Response]
SECRET = "sk_live_5up3r53cr3t"


class Sleeps:
    """An injected ``sleep`` that records instead of waiting (and can drive a fake clock)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.now = 0.0

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def make_client(handler: Handler, sleeps: Sleeps | None = None, **kwargs: Any) -> HttpClient:
    options: dict[str, Any] = {
        "headers": {"Authorization": f"Token {SECRET}"},
        "name": "hcp",
        "sleep": sleeps if sleeps is not None else Sleeps(),
        "jitter": lambda: 1.0,  # the top of the jitter range: deterministic delays
        "secrets": (SECRET,),
    }
    options.update(kwargs)
    return HttpClient("https://api.example.test", transport=httpx.MockTransport(handler), **options)


def sequence(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler serving ``responses`` in order (raising the exceptions), recording requests."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


# ------------------------------------------------------------------------------ retries


def test_429_honours_retry_after_seconds_then_succeeds() -> None:
    handler, seen = sequence(
        httpx.Response(429, headers={"Retry-After": "7"}, json={"message": "slow down"}),
        httpx.Response(200, json={"ok": True}),
    )
    sleeps = Sleeps()
    client = make_client(handler, sleeps)
    assert client.get_json("/customers") == {"ok": True}
    assert sleeps.calls == [7.0]
    assert len(seen) == 2
    assert client.stats.requests == 2
    assert client.stats.retries == 1
    assert client.stats.throttled == 1


def _run_client(handler: Handler, stop: threading.Event, **kwargs: Any) -> HttpClient:
    """A connector's client as a run builds it: with the run's stop event in the context."""
    context = ConnectorContext(
        "hcp", extra={"transport": httpx.MockTransport(handler), "stop": stop}
    )
    return connector_client(
        context, "https://api.example.test", headers={}, timeout=5, max_retries=1, **kwargs
    )


def test_a_stop_ends_a_wait_to_retry_at_once() -> None:
    # the server fails, and the stop comes while the client would wait half a minute to retry
    stop = threading.Event()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        stop.set()  # a daemon shutting down, while this request was on its way
        return httpx.Response(503)

    client = _run_client(handler, stop, rate_limit=0)
    client.backoff_base = client.backoff_max = 30.0
    with pytest.raises(SyncStopped, match="stop was requested"):
        client.get_json("/customers")  # (without the stop: 30 s, a second 503, RetriableError)
    assert len(seen) == 1  # not sent again


def test_a_stop_lets_a_write_end_without_waiting_so_that_its_batch_is_committed() -> None:
    # a write is not abandoned half-way (its batch would be lost until recovery): it is sent
    # again at once, and fails as a write the next run makes again
    stop = threading.Event()
    stop.set()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503)

    client = _run_client(handler, stop, rate_limit=0)
    client.backoff_base = client.backoff_max = 30.0
    with pytest.raises(RetriableError):
        client.request("PUT", "/customers/1", json={"a": 1})
    assert len(seen) == 2  # sent, and retried once (max_retries = 1) without the 30 s wait


def test_a_stop_ends_a_wait_for_the_rate_limit() -> None:
    stop = threading.Event()
    client = _run_client(lambda _r: httpx.Response(200, json={}), stop, rate_limit=0.01)
    client.get_json("/customers")  # the first request takes the only slot of 100 s
    stop.set()
    with pytest.raises(SyncStopped):
        client.get_json("/customers")


def test_429_honours_retry_after_http_date() -> None:
    future = email.utils.formatdate(timeval=2_000_000_030, usegmt=True)
    assert parse_retry_after(future, now=2_000_000_000) == pytest.approx(30.0)
    past = email.utils.formatdate(timeval=1_000_000_000, usegmt=True)
    assert parse_retry_after(past, now=2_000_000_000) == 0.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), (" 1.5 ", 1.5), ("-4", 0.0), ("", None), ("soon", None), ("nan", None)],
)
def test_parse_retry_after(header: str, expected: float | None) -> None:
    assert parse_retry_after(header, now=0.0) == expected
    assert parse_retry_after(None) is None


def test_retry_after_longer_than_the_bound_gives_up_without_sleeping() -> None:
    handler, seen = sequence(httpx.Response(503, headers={"Retry-After": "3600"}))
    sleeps = Sleeps()
    client = make_client(handler, sleeps, retry_after_max=60.0)
    with pytest.raises(RetriableError, match="3600s"):
        client.get_json("/customers")
    assert sleeps.calls == []
    assert len(seen) == 1


def test_5xx_retried_with_exponential_backoff_then_success() -> None:
    handler, seen = sequence(
        httpx.Response(503),
        httpx.Response(500, text="oops"),
        httpx.Response(502),
        httpx.Response(200, json=[1, 2]),
    )
    sleeps = Sleeps()
    client = make_client(handler, sleeps, backoff_base=0.5)
    assert client.get_json("/x") == [1, 2]
    assert sleeps.calls == [0.5, 1.0, 2.0]
    assert len(seen) == 4
    assert client.stats.retries == 3


def test_backoff_is_jittered_and_capped() -> None:
    handler, _ = sequence(httpx.Response(504))
    sleeps = Sleeps()
    client = make_client(
        handler, sleeps, max_retries=8, backoff_base=1.0, backoff_max=5.0, jitter=lambda: 0.0
    )
    with pytest.raises(RetriableError, match="gave up after 9 attempts"):
        client.get_json("/x")
    # jitter 0 gives the bottom of the range: half of min(cap, base * 2**n)
    assert sleeps.calls == [0.5, 1.0, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5]


def test_exhausted_retries_raise_retriable_with_server_message() -> None:
    handler, seen = sequence(httpx.Response(503, json={"error": {"message": "maintenance"}}))
    client = make_client(handler, max_retries=2)
    with pytest.raises(RetriableError) as info:
        client.request("GET", "/customers")
    message = str(info.value)
    assert message.startswith("hcp: GET /customers: HTTP 503: maintenance")
    assert "gave up after 3 attempts" in message
    assert info.value.connector == "hcp"
    assert len(seen) == 3
    assert client.stats.failures == 1


def test_post_is_not_retried() -> None:
    handler, seen = sequence(httpx.Response(503), httpx.Response(201, json={"id": "x"}))
    sleeps = Sleeps()
    client = make_client(handler, sleeps)
    with pytest.raises(RetriableError, match="not retried"):
        client.request("POST", "/customers", json={"first_name": "A"})
    assert len(seen) == 1
    assert sleeps.calls == []


def test_post_transport_error_is_not_retried() -> None:
    handler, seen = sequence(httpx.ReadTimeout("timed out"))
    client = make_client(handler)
    with pytest.raises(RetriableError, match="may have applied"):
        client.request("POST", "/customers", json={})
    assert len(seen) == 1


def test_post_can_opt_into_retries() -> None:
    handler, seen = sequence(httpx.Response(429), httpx.Response(201, json={"id": "x"}))
    client = make_client(handler)
    response = client.request("POST", "/webhooks", json={}, retry=True)
    assert response.status_code == 201
    assert len(seen) == 2


def test_get_can_opt_out_of_retries() -> None:
    handler, seen = sequence(httpx.Response(500))
    client = make_client(handler)
    with pytest.raises(RetriableError):
        client.request("GET", "/x", retry=False)
    assert len(seen) == 1


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
def test_transport_errors_become_retriable_after_retries(error: Exception) -> None:
    handler, seen = sequence(error)
    sleeps = Sleeps()
    client = make_client(handler, sleeps, max_retries=3)
    with pytest.raises(RetriableError) as info:
        client.get_json("/customers")
    assert len(seen) == 4
    assert len(sleeps.calls) == 3
    assert type(error).__name__ in str(info.value)
    assert not isinstance(info.value, httpx.HTTPError)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_transport_error_then_success() -> None:
    handler, seen = sequence(httpx.ConnectTimeout("slow"), httpx.Response(200, json={"a": 1}))
    client = make_client(handler)
    assert client.get_json("/a") == {"a": 1}
    assert len(seen) == 2


# ------------------------------------------------------------------- refused on this machine


def refused() -> httpx.ConnectError:
    """What httpx raises when nothing listens on the port: a ConnectError caused by the
    operating system's ConnectionRefusedError."""
    error = httpx.ConnectError("[Errno 111] Connection refused")
    error.__cause__ = ConnectionRefusedError(111, "Connection refused")
    return error


def local_client(
    handler: Handler, sleeps: Sleeps, base_url: str = "http://127.0.0.1:8765", **kwargs: Any
) -> HttpClient:
    options: dict[str, Any] = {"name": "hcp", "sleep": sleeps, "jitter": lambda: 1.0}
    options.update(kwargs)
    return HttpClient(base_url, transport=httpx.MockTransport(handler), **options)


def test_a_refused_connection_on_loopback_fails_fast_with_one_clear_message() -> None:
    handler, seen = sequence(refused())
    sleeps = Sleeps()
    client = local_client(handler, sleeps, max_retries=5)
    with capture_logs() as logs, pytest.raises(RetriableError) as info:
        client.get_json("/invoices")
    assert str(info.value) == (
        "hcp: GET /invoices: cannot connect to http://127.0.0.1:8765 (connection refused): "
        "nothing is listening there; start that server, or check the base_url"
    )
    # Two short tries for a server still starting, not five doubling backoffs.
    assert len(seen) == 3
    assert sleeps.calls == [0.25, 0.75]
    # Quietly: nothing at warning level, so a command prints only the error.
    assert logs and all(entry["log_level"] == "debug" for entry in logs), logs
    assert client.stats.as_dict()["retries"] == 2
    assert client.stats.as_dict()["failures"] == 1


@pytest.mark.parametrize(
    ("base_url", "shown"),
    [
        ("http://localhost:3000/api", "http://localhost:3000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("http://127.0.0.2:8080", "http://127.0.0.2:8080"),
    ],
)
def test_every_loopback_address_counts_as_this_machine(base_url: str, shown: str) -> None:
    handler, seen = sequence(refused())
    client = local_client(handler, Sleeps(), base_url, max_retries=5)
    with pytest.raises(RetriableError) as info:
        client.get_json("/c")
    assert f"cannot connect to {shown} (connection refused)" in str(info.value)
    assert len(seen) == 3


def test_a_refused_connection_within_max_retries_and_not_for_writes() -> None:
    handler, seen = sequence(refused())
    sleeps = Sleeps()
    with pytest.raises(RetriableError, match=re.escape("cannot connect to http://127.0.0.1:8765")):
        local_client(handler, sleeps, max_retries=0).get_json("/c")
    assert (len(seen), sleeps.calls) == (1, [])
    with pytest.raises(RetriableError, match=re.escape("cannot connect to http://127.0.0.1:8765")):
        local_client(handler, sleeps, max_retries=5).request("POST", "/c", json={})
    assert (len(seen), sleeps.calls) == (2, [])


def test_a_local_server_that_is_still_starting_is_waited_for() -> None:
    handler, seen = sequence(refused(), httpx.Response(200, json={"ok": True}))
    sleeps = Sleeps()
    assert local_client(handler, sleeps).get_json("/c") == {"ok": True}
    assert (len(seen), sleeps.calls) == (2, [0.25])


def test_a_transport_error_not_caused_by_a_refusal_keeps_the_backoff_on_loopback() -> None:
    looping = httpx.ConnectError("odd")
    inner = OSError("unreachable")
    looping.__cause__, inner.__cause__ = inner, looping  # a chain that loops ends the search
    handler, seen = sequence(looping)
    sleeps = Sleeps()
    with pytest.raises(RetriableError, match="gave up after 3 attempts"):
        local_client(handler, sleeps, max_retries=2).get_json("/c")
    assert (len(seen), sleeps.calls) == (3, [0.5, 1.0])


def test_a_refused_connection_to_another_machine_keeps_the_backoff() -> None:
    handler, seen = sequence(refused())
    sleeps = Sleeps()
    client = make_client(handler, sleeps, max_retries=3, backoff_base=1.0, jitter=lambda: 0.0)
    with capture_logs() as logs, pytest.raises(RetriableError) as info:
        client.get_json("/c")
    assert len(seen) == 4
    assert sleeps.calls == [0.5, 1.0, 2.0]
    assert "gave up after 4 attempts" in str(info.value)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "http.retry",
        "http.retry",
        "http.retry",
        "http.gave_up",
    ]


# ------------------------------------------------------------------------------ translation


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures(status: int) -> None:
    handler, seen = sequence(httpx.Response(status, json={"message": "Unauthorized"}))
    client = make_client(handler)
    with pytest.raises(AuthError, match=f"hcp: GET /customers: HTTP {status}: Unauthorized"):
        client.get_json("/customers")
    assert len(seen) == 1  # never retried


def test_404_is_not_found_with_the_error_message() -> None:
    handler, _ = sequence(httpx.Response(404, json={"error": {"message": "job not found"}}))
    client = make_client(handler)
    with pytest.raises(NotFoundError) as info:
        client.get_json("/jobs/job_1")
    assert isinstance(info.value, RecordError)
    assert str(info.value) == "hcp GET /jobs/job_1: HTTP 404: job not found"
    assert info.value.location == "hcp GET /jobs/job_1"


def test_allow_status_returns_the_response() -> None:
    handler, _ = sequence(httpx.Response(404, json={"error": {"message": "gone"}}))
    client = make_client(handler)
    assert client.request("DELETE", "/customers/c1", allow_status=(404,)).status_code == 404


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(422, json={"error": {"message": "job not found"}}), "job not found"),
        (httpx.Response(422, json={"errors": {"name": ["is missing"]}}), "name: is missing"),
        (
            httpx.Response(422, json={"errors": {"status": "must be an array"}}),
            "status: must be an array",
        ),
        (
            httpx.Response(400, json={"errors": {"email": ["is invalid", "is taken"], "x": "y"}}),
            "email: is invalid, is taken; x: y",
        ),
        (httpx.Response(422, json={"message": "Bad thing"}), "Bad thing"),
        (httpx.Response(422, json={"errors": ["first", "second"]}), "first; second"),
        (
            httpx.Response(
                422,
                headers={"content-type": "text/html"},
                text="<html><head><title>Unprocessable  Entity</title></head><body>x</body></html>",
            ),
            "Unprocessable Entity",
        ),
        (
            httpx.Response(422, text="<html><body><h1>Nope</h1><p>bad input</p></body></html>"),
            "Nope bad input",
        ),
        (httpx.Response(400, text="plain words"), "plain words"),
        (httpx.Response(422, text="{not json"), "{not json"),
    ],
)
def test_error_shapes_are_parsed(response: httpx.Response, expected: str) -> None:
    assert error_message(response) == expected
    handler, _ = sequence(response)
    client = make_client(handler)
    with pytest.raises(RecordError) as info:
        client.request("PUT", "/customers/c1", json={})
    assert str(info.value) == f"hcp PUT /customers/c1: HTTP {response.status_code}: {expected}"


def test_empty_error_body_gives_the_status_alone() -> None:
    handler, _ = sequence(httpx.Response(422))
    client = make_client(handler)
    with pytest.raises(RecordError, match=r"HTTP 422$"):
        client.request("PUT", "/c", json={})


def test_html_404_for_unknown_route() -> None:
    page = "<!DOCTYPE html><html><head><title>The page you were looking for doesn't exist (404)"
    page += "</title></head><body><div>...</div></body></html>"
    handler, _ = sequence(
        httpx.Response(404, headers={"content-type": "text/html; charset=utf-8"}, text=page)
    )
    client = make_client(handler)
    with pytest.raises(NotFoundError, match=r"doesn't exist \(404\)"):
        client.request("DELETE", "/customers/c1")


@pytest.mark.parametrize("status", [409, 418, 301, 501])
def test_other_statuses_are_fatal(status: int) -> None:
    handler, seen = sequence(httpx.Response(status, json={"message": "odd"}))
    client = make_client(handler)
    with pytest.raises(FatalConnectorError, match=f"HTTP {status}"):
        client.get_json("/x")
    assert len(seen) == 1


def test_invalid_json_body_is_fatal() -> None:
    handler, _ = sequence(httpx.Response(200, text="<html>maintenance</html>"))
    client = make_client(handler)
    with pytest.raises(FatalConnectorError, match="expected JSON"):
        client.get_json("/customers")


def test_empty_body_decodes_to_none() -> None:
    handler, _ = sequence(httpx.Response(204))
    client = make_client(handler)
    assert client.request_json("DELETE", "/customers/c1") is None


def test_only_syncengine_errors_escape() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.DecodingError("bad gzip")

    client = make_client(broken)
    with pytest.raises(SyncEngineError) as info:
        client.get_json("/x")
    assert isinstance(info.value, FatalConnectorError)


# ------------------------------------------------------------------------------ redaction


def test_secret_never_in_messages_or_logs() -> None:
    leaky = f"invalid token Token {SECRET} for account"
    handler, _ = sequence(
        httpx.Response(503, json={"message": leaky}),
        httpx.Response(401, json={"error": {"message": leaky}}),
    )
    other_secret = "hunter2-password"
    client = make_client(handler, secrets=(SECRET, other_secret), name="hcp")
    with capture_logs() as logs, pytest.raises(AuthError) as info:
        client.get_json(f"/customers/{other_secret}")
    text = str(info.value)
    assert SECRET not in text and other_secret not in text
    assert "***" in text
    assert logs, "the retry was logged"
    retry = logs[0]
    assert retry["event"] == "http.retry"
    assert retry["status"] == 503
    assert retry["connector"] == "hcp"
    assert retry["path"] == "/customers/***"
    for entry in logs:
        for value in entry.values():
            assert SECRET not in str(value)
            assert other_secret not in str(value)


def test_authorization_header_value_is_redacted_without_being_listed() -> None:
    token = "tok_only_in_the_header"
    handler, _ = sequence(httpx.Response(422, json={"message": f"bad {token}"}))
    client = make_client(handler, headers={"Authorization": f"Bearer {token}"}, secrets=())
    with pytest.raises(RecordError) as info:
        client.request("PUT", "/c", json={})
    assert token not in str(info.value)


def test_transport_error_text_is_redacted() -> None:
    handler, _ = sequence(httpx.ConnectError(f"cannot reach host with {SECRET}"))
    client = make_client(handler, max_retries=1)
    with capture_logs() as logs, pytest.raises(RetriableError) as info:
        client.get_json("/x")
    assert SECRET not in str(info.value)
    assert all(SECRET not in str(v) for entry in logs for v in entry.values())


# ------------------------------------------------------------------------------ rate limit


def test_rate_limit_spaces_requests() -> None:
    sleeps = Sleeps()
    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(sleeps.clock())
        return httpx.Response(200, json={})

    client = make_client(handler, sleeps, rate_limit=2.0, clock=sleeps.clock)
    for _ in range(4):
        client.get_json("/x")
    assert sent_at == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert client.stats.waited == pytest.approx(1.5)


def test_rate_limiter_refills_while_idle_up_to_the_burst() -> None:
    sleeps = Sleeps()
    limiter = RateLimiter(4.0, burst=2, clock=sleeps.clock, sleep=sleeps)
    assert [limiter.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.25])
    sleeps.now += 10.0  # a long idle time refills only up to the burst
    assert [limiter.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.25])


def test_rate_limiter_is_thread_safe() -> None:
    limiter = RateLimiter(10.0, clock=lambda: 0.0, sleep=lambda _: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            wait = limiter.reserve()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # every reservation got its own slot: 0, 0.1, 0.2, ... with no two callers sharing one
    assert sorted(round(w, 6) for w in waits) == [round(i / 10, 6) for i in range(200)]


def test_rate_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(1.0, burst=0.5)


# ------------------------------------------------------------------------------ params, stats


def test_array_params_and_query_encoding() -> None:
    handler, seen = sequence(httpx.Response(200, json={}))
    client = make_client(handler)
    params = [
        ("page", 2),
        ("skip", None),
        ("flag", True),
        *array_params("status", ["paid", "open"]),
    ]
    client.get_json("/invoices", params=params)
    url = seen[0].url
    assert url.path == "/invoices"
    assert url.params.get_list("status[]") == ["paid", "open"]
    assert url.params["page"] == "2"
    assert url.params["flag"] == "true"
    assert "skip" not in url.params
    assert "status%5B%5D=paid&status%5B%5D=open" in str(url)
    assert array_params("ids[]", [1]) == [("ids[]", 1)]


def test_headers_are_sent_and_stats_reported() -> None:
    handler, seen = sequence(httpx.Response(200, json={}))
    client = make_client(handler, headers={"Authorization": "Token abc", "X-Company-Id": "co"})
    client.get_json("/x", params={"q": "a b"})
    assert seen[0].headers["Authorization"] == "Token abc"
    assert seen[0].headers["X-Company-Id"] == "co"
    assert seen[0].url.params["q"] == "a b"
    assert client.stats.as_dict() == {
        "requests": 1,
        "retries": 0,
        "throttled": 0,
        "failures": 0,
        "waited": 0.0,
    }
    client.close()


def test_connector_errors_carry_the_connector_name() -> None:
    handler, _ = sequence(httpx.Response(500))
    client = make_client(handler, name="books", max_retries=0)
    with pytest.raises(ConnectorError) as info:
        client.get_json("/x")
    assert info.value.connector == "books"


def test_clients_share_one_tls_context_so_a_daemon_does_not_grow_a_run_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client per run used to build a TLS context per run, and each load of the CA bundle
    kept about 1 MiB on Linux: an idle daemon syncing every second grew to gigabytes. Every
    client of the process now uses one context, so the bundle is read at most once."""
    loads: list[str] = []
    create = ssl.create_default_context

    def counting_create(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        loads.append("load")
        return create(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting_create)
    for _ in range(5):
        HttpClient("https://api.example.test", name="hcp").close()
    assert len(loads) <= 1, f"the CA bundle was loaded {len(loads)} times for 5 clients"
    assert shared_tls_context() is shared_tls_context()
    assert shared_tls_context().verify_mode == ssl.CERT_REQUIRED
    assert shared_tls_context().check_hostname


def test_a_response_let_go_of_is_freed_at_once_with_its_body() -> None:
    """httpx binds a stream to each response that refers back to it: a response was freed
    only by the cycle collector, and a sync that froze what it held (``collector``) kept the
    pages it caught in flight until it ended. The client's responses are read whole and
    unbound: freed as soon as they are let go of, their body still there until then."""
    import gc
    import weakref

    body = b'{"customers": [' + b",".join(b'{"id": "c%d"}' % i for i in range(2000)) + b"]}"
    client = make_client(lambda request: httpx.Response(200, content=body))
    was_enabled = gc.isenabled()
    gc.disable()  # only reference counting frees anything here
    try:
        response = client.request("GET", "/customers")
        assert response.content == body and response.json()["customers"][-1] == {"id": "c1999"}
        assert b"".join(response.iter_bytes()) == body
        gone = weakref.ref(response)
        del response
        assert gone() is None, "the response (and its body) waited for the cycle collector"
    finally:
        if was_enabled:
            gc.enable()
        client.close()
