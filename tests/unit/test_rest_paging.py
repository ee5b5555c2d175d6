"""Pagination styles of the REST connector, against the in-process fake CRM that really pages
(``syncengine.connectors.rest.fake``): every record once, the fewest requests each style
allows, an empty last page, a server that caps the page size, and every kind of loop stopped
with an error naming the connector, the entity and the setting."""

from __future__ import annotations

import math
import re
from typing import Any

import httpx
import pytest

from syncengine.connector import ConnectorContext
from syncengine.connectors.rest import PAGINATORS, RestConnector, RestOptions
from syncengine.connectors.rest.fake import FakeCrm
from syncengine.connectors.rest.paging import next_link, parse_link_header
from syncengine.errors import FatalConnectorError, RetriableError

SIZE = 5
PAGINATION: dict[str, dict[str, Any]] = {
    "page": {"style": "page", "page_param": "page", "size_param": "per_page"},
    "offset": {"style": "offset"},
    "cursor": {"style": "cursor", "cursor_path": "next_cursor"},
    "link": {"style": "link", "page_param": "page", "size_param": "per_page"},
    "total_count": {"style": "total_count"},
    "none": {"style": "none"},
}
PAGED = ("page", "offset", "cursor", "link", "total_count")


def fake(style: str, n: int = 0, **knobs: Any) -> FakeCrm:
    crm = FakeCrm(style=style, records_key="data" if style == "cursor" else "", **knobs)
    for i in range(n):
        crm.add({"name": f"c{i}", "email": f"c{i}@example.com"})
    return crm


def connector(
    crm: FakeCrm, style: str | None = None, *, page_size: int = SIZE, **pagination: Any
) -> RestConnector:
    chosen = style or crm.style
    table = {**PAGINATION[chosen], **pagination}
    options = RestOptions.model_validate(
        {
            "type": "rest",
            "base_url": crm.base_url,
            "rate_limit": 0,
            "page_size": page_size,
            "entities": {
                "customers": {
                    "path": "/contacts",
                    "pagination": table,
                    "records_path": "data" if crm.records_key else "",
                }
            },
        }
    )
    return RestConnector(options, ConnectorContext("crm", extra={"transport": crm.transport()}))


def read_ids(conn: RestConnector) -> list[str]:
    return [r.id for r in conn.read("customers")]


def test_every_style_is_registered() -> None:
    assert set(PAGINATORS) == {"none", "page", "offset", "cursor", "link", "total_count"}


# ------------------------------------------------------------------------- every record once


@pytest.mark.parametrize("style", PAGED)
@pytest.mark.parametrize("n", [0, 1, SIZE - 1, SIZE, SIZE + 1, 3 * SIZE, 3 * SIZE + 2])
def test_reads_every_record_once(style: str, n: int) -> None:
    crm = fake(style, n)
    ids = read_ids(connector(crm))
    assert ids == [str(i) for i in range(1, n + 1)]


@pytest.mark.parametrize("style", ["cursor", "link", "total_count"])
@pytest.mark.parametrize("n", [0, 1, SIZE, SIZE + 1, 3 * SIZE, 3 * SIZE + 2])
def test_styles_that_know_the_end_make_the_minimum_of_requests(style: str, n: int) -> None:
    crm = fake(style, n)
    read_ids(connector(crm))
    assert len(crm.list_requests()) == max(1, math.ceil(n / SIZE))


@pytest.mark.parametrize("style", ["page", "offset"])
@pytest.mark.parametrize(
    ("n", "requests"),
    [
        (0, 1),  # an empty first page ends it
        (1, 2),  # a short first page may be a capped one: one look further
        (SIZE, 2),  # a full last page: the next, empty one ends it
        (SIZE + 1, 2),  # a page shorter than the ones before ends it
        (3 * SIZE + 2, 4),
        (3 * SIZE, 4),
    ],
)
def test_counting_styles_without_a_total_stop_at_a_short_or_empty_page(
    style: str, n: int, requests: int
) -> None:
    crm = fake(style, n)
    assert len(read_ids(connector(crm))) == n
    assert len(crm.list_requests()) == requests


@pytest.mark.parametrize("style", ["page", "offset"])
def test_a_total_header_ends_counting_styles_exactly(style: str) -> None:
    crm = fake(style, 3 * SIZE, send_total=True)
    conn = connector(crm, total_header="X-Total-Count")
    assert len(read_ids(conn)) == 3 * SIZE
    assert len(crm.list_requests()) == 3


def test_the_page_style_reads_a_total_at_a_path_in_the_body() -> None:
    crm = FakeCrm(style="page", records_key="data")  # {"data": [...], "count": N}
    for i in range(2 * SIZE):
        crm.add({"name": f"c{i}"})
    conn = connector(crm, "page", total_path="count")
    assert len(read_ids(conn)) == 2 * SIZE
    assert len(crm.list_requests()) == 2


def test_the_none_style_makes_one_request() -> None:
    crm = fake("none", 42)
    assert len(read_ids(connector(crm))) == 42
    assert len(crm.list_requests()) == 1


# ---------------------------------------------------------------------- empty and capped pages


@pytest.mark.parametrize("style", ["cursor", "link"])
def test_an_empty_last_page_ends_the_listing_cleanly(style: str) -> None:
    crm = fake(style, 2 * SIZE, trailing_empty_page=True)
    assert len(read_ids(connector(crm))) == 2 * SIZE
    assert len(crm.list_requests()) == 3  # the announced third page was empty


@pytest.mark.parametrize("style", PAGED)
def test_a_server_capping_the_page_size_still_gives_every_record(style: str) -> None:
    crm = fake(style, 23, max_page_size=3)
    assert read_ids(connector(crm, page_size=10)) == [str(i) for i in range(1, 24)]


def test_records_inserted_at_the_front_while_paging_are_not_given_twice() -> None:
    crm = fake("offset", 3 * SIZE)
    pages = 0

    def shift(request: httpx.Request) -> httpx.Response | None:
        nonlocal pages
        if request.method == "GET":
            pages += 1
            if pages == 2:  # someone adds a record that sorts first: everything moves on
                crm.records = {"0": {"id": 0, "name": "new"}, **crm.records}
        return None

    crm.before = shift
    # page 2 starts with the last record of page 1 again: given once; the new record is
    # behind the reader now, and the next read sees it
    assert read_ids(connector(crm)) == [str(i) for i in range(1, 3 * SIZE + 1)]


def test_a_total_that_shrinks_while_paging_is_a_retriable_error() -> None:
    crm = fake("total_count", 3 * SIZE)
    pages = 0

    def remove_one(request: httpx.Request) -> httpx.Response | None:
        nonlocal pages
        if request.method == "GET":
            pages += 1
            if pages == 2:
                crm.records.pop("1")  # a record of page 1: the rest shift back by one
        return None

    crm.before = remove_one
    with pytest.raises(RetriableError, match=r"crm:customers: .*total fell from 15 to 14"):
        read_ids(connector(crm))


# ---------------------------------------------------------------------------------- loops


@pytest.mark.parametrize(
    ("style", "setting"),
    [
        ("page", "pagination.page_param = 'page'"),
        ("offset", "pagination.offset_param = 'offset'"),
        ("total_count", "pagination.page_param = 'page'"),
        ("cursor", "pagination.cursor_param = 'cursor'"),
        ("link", "rel='next'"),
    ],
)
def test_a_server_ignoring_the_paging_parameter_is_stopped(style: str, setting: str) -> None:
    crm = fake(style, 3 * SIZE, ignore_paging=True)
    with pytest.raises(FatalConnectorError) as caught:
        read_ids(connector(crm))
    message = str(caught.value)
    assert message.startswith("crm:customers: ")
    assert "repeats the previous page's records" in message
    assert setting in message
    assert "[connectors.crm.entities.customers]" in message
    assert len(crm.list_requests()) == 2
    assert not crm.writes()


def test_a_cursor_seen_before_is_a_loop() -> None:
    crm = fake("cursor", 6 * SIZE, cursor_loop=True)
    with pytest.raises(FatalConnectorError) as caught:
        read_ids(connector(crm))
    message = str(caught.value)
    assert "crm:customers: " in message
    assert "a second time" in message
    assert "pagination.cursor_path = 'next_cursor'" in message


def test_a_cursor_that_ends_ends_the_listing() -> None:
    crm = fake("cursor", 2 * SIZE + 1)
    assert len(read_ids(connector(crm))) == 2 * SIZE + 1
    last = crm.list_requests()[-1]
    assert last.url.params.get("cursor")  # the third page was asked for by its cursor


def test_a_next_link_seen_before_is_a_loop() -> None:
    crm = fake("link", 6 * SIZE, link_loop=True)
    with pytest.raises(
        FatalConnectorError,
        match=r"crm:customers: .*page already read.*"
        r"pagination\.rel = 'next'",
    ):
        read_ids(connector(crm))


def test_a_next_link_to_another_server_is_not_followed() -> None:
    crm = fake("link", 3 * SIZE)
    conn = connector(crm)
    crm.base_url = "http://elsewhere.test"  # its links now point there
    with pytest.raises(
        FatalConnectorError, match=re.escape("elsewhere.test:80, not to http://crm.test:80")
    ):
        read_ids(conn)
    assert all(r.url.host == "crm.test" for r in crm.requests)


def test_a_missing_cursor_after_a_full_page_is_an_error_not_the_end() -> None:
    crm = fake("cursor", 3 * SIZE)
    conn = connector(crm, cursor_path="meta.next")  # the fake has it at next_cursor
    with pytest.raises(
        FatalConnectorError,
        match=r"no 'meta\.next' although more records "
        r"seem to follow.*pagination\.cursor_path",
    ):
        read_ids(conn)


def test_a_server_that_pages_without_link_headers_is_an_error_not_the_end() -> None:
    crm = fake("page", 3 * SIZE)  # pages by number, but never sends Link
    with pytest.raises(
        FatalConnectorError,
        match=r"the server pages \(page=2 has records\) "
        r"but sends no Link header.*style = 'page'",
    ):
        read_ids(connector(crm, "link"))
    assert len(crm.list_requests()) == 2


@pytest.mark.parametrize(("n", "requests"), [(SIZE - 1, 1), (SIZE, 2), (0, 1)])
def test_no_link_header_on_a_single_page_ends_the_listing(n: int, requests: int) -> None:
    crm = fake("link", n, omit_last_link=True)  # like APIs that send no Link for one page
    assert len(read_ids(connector(crm))) == n
    assert len(crm.list_requests()) == requests  # a full page is checked by asking for page 2


def test_a_missing_total_header_is_an_error() -> None:
    crm = fake("page", 3 * SIZE)
    with pytest.raises(
        FatalConnectorError,
        match=r"no X-Total-Count header .*"
        r"pagination\.total_header",
    ):
        read_ids(connector(crm, "total_count"))


def test_max_pages_bounds_a_listing() -> None:
    crm = fake("page", 10 * SIZE)
    with pytest.raises(FatalConnectorError, match=r"more than 3 pages.*pagination\.max_pages"):
        read_ids(connector(crm, max_pages=3))


# --------------------------------------------------------------------------- Link headers


def test_parse_link_header_reads_targets_and_parameters() -> None:
    header = (
        '<https://api.test/c?page=2&per_page=5>; rel="next", '
        '<https://api.test/c?page=9>; rel=last; title="the, last", '
        '</c?page=1>;rel="first prev"'
    )
    links = parse_link_header(header)
    assert [t for t, _ in links] == [
        "https://api.test/c?page=2&per_page=5",
        "https://api.test/c?page=9",
        "/c?page=1",
    ]
    assert links[1][1] == {"rel": "last", "title": "the, last"}
    assert next_link(header) == "https://api.test/c?page=2&per_page=5"
    assert next_link(header, "prev") == "/c?page=1"
    assert next_link(header, "nope") is None


@pytest.mark.parametrize("header", ["", " ", "garbage", "<>; rel=next", 'rel="next"'])
def test_parse_link_header_survives_nonsense(header: str) -> None:
    assert next_link(header) is None


def test_relative_next_links_resolve_against_the_page() -> None:
    crm = fake("link", 2 * SIZE + 1)

    def relative(request: httpx.Request) -> httpx.Response | None:
        if request.method != "GET":
            return None
        crm.before = None
        answer = crm.handle(request)
        crm.before = relative
        link = answer.headers.get("Link")
        if link:
            answer.headers["Link"] = link.replace(crm.base_url, "")
        return answer

    crm.before = relative
    assert len(read_ids(connector(crm))) == 2 * SIZE + 1
