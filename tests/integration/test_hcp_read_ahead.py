"""The Housecall Pro connector reads list pages ahead, against the sandbox over loopback.

The sandbox runs as a real process (``syncengine sandbox --latency-ms 40``); the connector
talks to it over real HTTP through ``Watch``, a transport that only watches (and, for the
error tests, answers a chosen page itself): how many requests are in flight at once, which
pages were asked for and when the caller reached them. No assertion is on time: overlap is
shown by requests in flight together, and by page 2 being requested while the caller still
holds page 1.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.connectors.housecallpro.paging import Pager
from syncengine.errors import AuthError, ConnectorError, RetriableError
from testbed.processes import ServerProcess
from testbed.sandbox import start_sandbox

KEY = "read-ahead-key"
CUSTOMERS = 66
"""Seeded customers: 11 pages of 6 (an exact multiple: no short last page to stop at)."""
PAGE = 6
LATENCY_MS = 40
WAIT = 30.0
"""Seconds a test waits for an event that must happen (a safety net, not a measurement)."""

Answer = Callable[[httpx.Request, int], httpx.Response | None]
"""Given a list request and its page: a response to send instead of the sandbox's, or None."""


class Watch(httpx.BaseTransport):
    """A real HTTP transport that counts requests in flight and notes the pages asked for.

    ``answer`` may answer a page itself (a failure the sandbox cannot be told to make);
    ``hold`` pages wait for ``release`` before they are sent (to order events for a test).
    """

    def __init__(self, answer: Answer | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.answer = answer
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.pages: list[int] = []
        """Pages of list requests, in the order they were sent."""
        self.asked: dict[int, threading.Event] = {}
        self.hold: set[int] = set()
        self.release = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "0"))
        if page in self.hold:
            assert self.release.wait(WAIT), f"page {page} was held and never released"
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.pages.append(page)
            self.asked.setdefault(page, threading.Event()).set()
        try:
            own = self.answer(request, page) if self.answer else None
            if own is not None:
                return own
            response = self.inner.handle_request(request)
            response.read()
            return response
        finally:
            with self.lock:
                self.in_flight -= 1

    def was_asked(self, page: int) -> threading.Event:
        with self.lock:
            return self.asked.setdefault(page, threading.Event())

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("read-ahead-sandbox")
    with start_sandbox(
        api_key=KEY, seed=CUSTOMERS, latency_ms=LATENCY_MS, workdir=workdir
    ) as server:
        yield server


@pytest.fixture
def direct(sandbox: ServerProcess) -> Iterator[httpx.Client]:
    """A plain client of the sandbox, reset to its seeded data with an empty request log."""
    with httpx.Client(
        base_url=sandbox.url, headers={"Authorization": f"Token {KEY}"}, timeout=WAIT
    ) as client:
        client.post("/_sandbox/reset").raise_for_status()
        client.delete("/_sandbox/requests").raise_for_status()
        yield client


def hcp(
    sandbox: ServerProcess, watch: Watch, *, concurrency: int, **options: Any
) -> HousecallProConnector:
    values: dict[str, Any] = {
        "type": "housecallpro",
        "base_url": sandbox.url,
        "api_key": KEY,
        "page_size": PAGE,
        "rate_limit": 0,
        "max_retries": 0,
        "concurrency": concurrency,
        **options,
    }
    context = ConnectorContext(name="hcp", extra={"transport": watch})
    return HousecallProConnector(HousecallProOptions(**values), context)


def one_by_one(client: httpx.Client, path: str, key: str) -> list[str]:
    """The ids of a list read page after page with a bare client: the reference order."""
    ids: list[str] = []
    page = 1
    while True:
        params = {"page": page, "page_size": PAGE, "sort_by": "created_at", "sort_direction": "asc"}
        body = client.get(path, params=params).json()
        ids += [item["id"] for item in body[key]]
        if page >= body["total_pages"]:
            return ids
        page += 1


def logged(client: httpx.Client, path: str) -> list[int]:
    """The pages of ``GET path`` in the sandbox's request log, sorted."""
    entries = client.get("/_sandbox/requests").json()["requests"]
    pages = []
    for entry in entries:
        if entry["method"] == "GET" and entry["path"] == path:
            query = httpx.QueryParams(entry["query"])
            pages.append(int(query["page"]))
    return sorted(pages)


def failing(page: int, response: httpx.Response) -> Answer:
    def answer(request: httpx.Request, asked: int) -> httpx.Response | None:
        return response if asked == page else None

    return answer


# ------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("entity", ["customers", "invoices"])
def test_a_read_ahead_yields_every_record_once_in_page_order(
    sandbox: ServerProcess, direct: httpx.Client, entity: str
) -> None:
    expected = one_by_one(direct, f"/{entity}", entity)
    direct.delete("/_sandbox/requests").raise_for_status()
    watch = Watch()
    connector = hcp(sandbox, watch, concurrency=4)
    try:
        read = [record.id for record in connector.read(entity)]
    finally:
        connector.close()
    assert read == expected
    assert len(set(read)) == len(read)
    pages = math.ceil(len(expected) / PAGE)
    assert pages > 4
    # the request floor: each page once, no terminating page, nothing past total_pages
    assert logged(direct, f"/{entity}") == list(range(1, pages + 1))
    assert sorted(watch.pages) == list(range(1, pages + 1))


def test_four_pages_are_in_flight_at_once_with_concurrency_4(
    sandbox: ServerProcess, direct: httpx.Client
) -> None:
    watch = Watch()
    connector = hcp(sandbox, watch, concurrency=4)
    try:
        assert len(list(connector.read("customers"))) == CUSTOMERS
    finally:
        connector.close()
    # with 40 ms of latency per request, pages requested together overlap on the wire
    assert 2 <= watch.most_in_flight <= 4
    assert logged(direct, "/customers") == list(range(1, CUSTOMERS // PAGE + 1))


def test_concurrency_1_never_has_two_requests_in_flight(
    sandbox: ServerProcess, direct: httpx.Client
) -> None:
    watch = Watch()
    connector = hcp(sandbox, watch, concurrency=1)
    try:
        assert len(list(connector.read("customers"))) == CUSTOMERS
    finally:
        connector.close()
    assert watch.most_in_flight == 1
    assert watch.pages == list(range(1, CUSTOMERS // PAGE + 1))


def test_the_next_page_is_requested_while_the_caller_still_works_on_this_one(
    sandbox: ServerProcess, direct: httpx.Client
) -> None:
    """The caller's work on a page overlaps the wait for the next: holding the first record,
    it sees page 2 asked for; and at no point is more than ``concurrency`` pages ahead."""
    watch = Watch()
    connector = hcp(sandbox, watch, concurrency=3)
    try:
        read = connector.read("customers")
        next(read)
        assert watch.was_asked(2).wait(WAIT), "page 2 was not requested while page 1 was held"
        count = 1
        for _record in read:
            count += 1
            consuming = (count - 1) // PAGE + 1
            with watch.lock:
                furthest = max(watch.pages)
            assert furthest <= consuming + 3, f"page {furthest} asked for while on {consuming}"
    finally:
        connector.close()
    assert count == CUSTOMERS


def test_a_list_without_total_pages_is_read_one_page_after_another(
    sandbox: ServerProcess, direct: httpx.Client
) -> None:
    class Bare(Watch):
        """Strips ``total_pages`` from every list envelope."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            body = json.loads(response.content)
            body.pop("total_pages", None)
            return httpx.Response(response.status_code, json=body, request=request)

    watch = Bare()
    connector = hcp(sandbox, watch, concurrency=4)
    try:
        assert len(list(connector.read("customers"))) == CUSTOMERS
    finally:
        connector.close()
    assert watch.most_in_flight == 1
    # total_items ends it: still no terminating page
    assert watch.pages == list(range(1, CUSTOMERS // PAGE + 1))


# ------------------------------------------------------------------------------ errors


def sequential_outcome(connector: HousecallProConnector) -> tuple[list[str], ConnectorError]:
    """What reading the customers one page after another yields before its error."""
    pager = Pager(connector.http, connector.name, PAGE)
    params = {"sort_by": "created_at", "sort_direction": "asc"}
    got: list[str] = []
    with pytest.raises(ConnectorError) as info:
        for item in pager.items(
            "/customers", "customers", "customers", params, guard_shrink=True, ahead=False
        ):
            got.append(item["id"])
    return got, info.value


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, {"message": "Unauthorized"}, AuthError),
        (503, {"error": {"message": "try later"}}, RetriableError),
    ],
)
def test_an_error_on_a_page_read_ahead_surfaces_when_the_caller_reaches_that_page(
    sandbox: ServerProcess,
    direct: httpx.Client,
    status: int,
    body: dict[str, Any],
    kind: type[ConnectorError],
) -> None:
    bad = 8
    reply = httpx.Response(status, json=body)
    before = Watch(failing(bad, reply))
    reference = hcp(sandbox, before, concurrency=4)
    try:
        expected, error = sequential_outcome(reference)
    finally:
        reference.close()

    # pages 5-7 wait until page 8 has failed: by the time the caller moves on from page 5,
    # the failure is known, and the pages after 8 must not be requested at all
    watch = Watch(failing(bad, reply))
    watch.hold = {5, 6, 7}
    original = watch.answer

    def answer(request: httpx.Request, page: int) -> httpx.Response | None:
        own = original(request, page) if original else None
        if page == bad:
            watch.release.set()
        return own

    watch.answer = answer
    connector = hcp(sandbox, watch, concurrency=4)
    got: list[str] = []
    try:
        with pytest.raises(kind) as info:
            for record in connector.read("customers"):
                got.append(record.id)
        assert watch.in_flight == 0  # nothing outlives the read
    finally:
        connector.close()
    assert got == expected
    assert len(got) == (bad - 1) * PAGE
    assert type(info.value) is type(error)
    assert str(info.value) == str(error)
    assert sorted(watch.pages) == list(range(1, bad + 1))


def test_a_list_that_shrinks_mid_read_is_still_refused(
    sandbox: ServerProcess, direct: httpx.Client
) -> None:
    victim = one_by_one(direct, "/customers", "customers")[2]
    deleted = threading.Event()

    def delete_after_page_1(request: httpx.Request, page: int) -> httpx.Response | None:
        if page == 2 and not deleted.is_set():  # page 1 was answered with the full total
            direct.delete(f"/customers/{victim}").raise_for_status()
            deleted.set()
        return None

    connector = hcp(sandbox, Watch(delete_after_page_1), concurrency=4)
    try:
        with pytest.raises(RetriableError, match=f"shrank from {CUSTOMERS} to {CUSTOMERS - 1}"):
            list(connector.read("customers"))
    finally:
        connector.close()


def test_a_caller_that_stops_early_leaves_no_request_behind(
    sandbox: ServerProcess, direct: httpx.Client
) -> None:
    watch = Watch()
    connector = hcp(sandbox, watch, concurrency=4)
    try:
        read = connector.read("customers")
        first = [next(read) for _ in range(PAGE + 1)]  # into page 2: pages 3-6 are ahead
        read.close()
        assert watch.in_flight == 0
        asked = sorted(watch.pages)
        assert asked[: min(2, len(asked))] == [1, 2]
        assert max(asked) <= 6
        assert len(first) == PAGE + 1
    finally:
        connector.close()
