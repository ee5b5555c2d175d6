"""The pager's read-ahead where the list changes under it, against a fake that paginates
(``httpx.MockTransport``): the pages it asks for follow the latest ``total_pages``."""

from __future__ import annotations

import math
import threading
from typing import Any

import httpx
import pytest

from syncengine.connectors.housecallpro.paging import Pager
from syncengine.errors import FatalConnectorError, NotFoundError, RetriableError
from syncengine.http import HttpClient

SIZE = 5


class Growing:
    """``/things`` pages; ``grow_after`` items are appended once page 1 was served."""

    def __init__(self, count: int, grow_after: int = 0, claim_pages: int | None = None) -> None:
        self.items = [{"id": f"t{n:03d}"} for n in range(count)]
        self.grow_after = grow_after
        self.claim_pages = claim_pages
        self.pages: list[int] = []
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        with self.lock:
            self.pages.append(page)
            chunk = self.items[(page - 1) * SIZE : page * SIZE]
            total = len(self.items)
            if page == 1 and self.grow_after:
                start = len(self.items)
                self.items += [{"id": f"t{n:03d}"} for n in range(start, start + self.grow_after)]
        pages = self.claim_pages if self.claim_pages is not None else math.ceil(total / SIZE)
        body: dict[str, Any] = {
            "things": chunk,
            "page": page,
            "page_size": SIZE,
            "total_pages": pages,
            "total_items": total,
        }
        return httpx.Response(200, json=body)


def read(fake: Growing, concurrency: int = 4) -> list[str]:
    http = HttpClient("http://fake", transport=httpx.MockTransport(fake.handle), max_retries=0)
    try:
        pager = Pager(http, "fake", SIZE, concurrency=concurrency)
        return [
            item["id"] for item in pager.items("/things", "things", "things", guard_shrink=True)
        ]
    finally:
        http.close()


def test_a_list_that_grows_while_read_is_read_to_its_new_end() -> None:
    fake = Growing(12, grow_after=6)  # 3 pages when page 1 is served, then 4
    assert read(fake) == [f"t{n:03d}" for n in range(18)]
    assert sorted(fake.pages) == [1, 2, 3, 4]


def test_no_page_past_total_pages_is_asked_for() -> None:
    fake = Growing(40)  # 8 pages: the window never reaches past the last
    assert len(read(fake, concurrency=8)) == 40
    assert sorted(fake.pages) == list(range(1, 9))


def test_a_server_claiming_fewer_pages_than_it_has_ends_the_read_there() -> None:
    fake = Growing(40, claim_pages=2)
    assert read(fake) == [f"t{n:03d}" for n in range(10)]
    assert sorted(fake.pages) == [1, 2]


def _not_found(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"error": "Page not found"})


def test_a_list_that_does_not_exist_is_a_base_url_to_fix() -> None:
    """A 404 on a list means the base URL points somewhere without the API (``/v1`` added
    to it, say): the member cannot be read, and the message says which setting to check.
    It used to pass for a record gone (exit 1, "HTTP 404: Page not found")."""
    http = HttpClient("http://fake/v1", transport=httpx.MockTransport(_not_found), max_retries=0)
    try:
        pager = Pager(http, "hcp", SIZE)
        with pytest.raises(FatalConnectorError) as info:
            list(pager.items("/customers", "customers", "customers", guard_shrink=True))
    finally:
        http.close()
    message = str(info.value)
    assert "GET /customers page 1" in message
    assert "there is no such list at http://fake/v1" in message
    assert "check base_url in [connectors.hcp]" in message
    assert not isinstance(info.value, NotFoundError)


def test_the_list_of_a_record_that_vanished_is_still_not_found() -> None:
    """An invoice's payments or a job's lines answer 404 when that record went away since it
    was listed: the caller's to skip, not a setting to fix."""
    http = HttpClient("http://fake", transport=httpx.MockTransport(_not_found), max_retries=0)
    try:
        pager = Pager(http, "hcp", SIZE)
        with pytest.raises(NotFoundError):
            list(
                pager.items(
                    "/invoices/i1/payments",
                    "payments",
                    "payments",
                    guard_shrink=False,
                    ahead=False,
                    vanishes=True,
                )
            )
    finally:
        http.close()


def test_a_later_page_that_answers_404_is_a_list_that_shrank_not_a_base_url() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.params["page"] == "1":
            body = {"customers": [{"id": f"c{n}"} for n in range(SIZE)], "total_pages": 2}
            return httpx.Response(200, json=body)
        return httpx.Response(404, json={"error": "Page not found"})

    http = HttpClient("http://fake", transport=httpx.MockTransport(handle), max_retries=0)
    try:
        pager = Pager(http, "hcp", SIZE, concurrency=1)
        with pytest.raises(RetriableError) as info:
            list(pager.items("/customers", "customers", "customers", guard_shrink=True))
    finally:
        http.close()
    assert "GET /customers page 2" in str(info.value)
    assert "fewer pages than it said" in str(info.value)
    assert "base_url" not in str(info.value)
