"""Housecall Pro's partial passes (``housecallpro/incremental.py``) against a fake list that
sorts and paginates (``httpx.MockTransport``): where a newest-first pass stops around its mark
(ties on the mark's timestamp included), which pages it asks for, what it does when the list
changes under it, and the option ``incremental`` as configuration."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from syncengine.config import load_config
from syncengine.connector import ConnectorContext, NativeRecord, ReadPass
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.errors import ConfigError
from syncengine.incremental import Mark, decode_token, encode_token

KEY = "hcp-incremental-unit-key"
PAGE = 3
NOW = 1_800_000_000.0
MARK = "2026-01-01T10:00:00Z"


def at(minute: int) -> str:
    """A stamp ``minute`` minutes after 09:00 (60: the mark)."""
    hours, minutes = divmod(minute, 60)
    return f"2026-01-01T{9 + hours:02d}:{minutes:02d}:00Z"


class FakeList:
    """``GET /customers`` sorted by ``updated_at`` (ties by id) or by ``created_at`` (the id
    order), in the HCP envelope; notes each request's (sort_by, page). ``after_page`` runs
    after a page was served, to change the list under a pass."""

    def __init__(self, stamps: list[str], *, stamped: bool = True, ordered: bool = True) -> None:
        self.records = [
            {"id": f"cus_{n:03d}", "created_at": at(0), "updated_at": stamp}
            for n, stamp in enumerate(stamps)
        ]
        if not stamped:
            for record in self.records:
                del record["updated_at"]
        self.ordered = ordered
        self.asked: list[tuple[str, int]] = []
        self.after_page: Callable[[int], None] = lambda page: None
        self.after_oldest_first: Callable[[int], None] = lambda page: None

    def handle(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        sort_by, page, size = params["sort_by"], int(params["page"]), int(params["page_size"])
        self.asked.append((sort_by, page))
        if sort_by == "updated_at" and self.ordered:
            assert params["sort_direction"] == "desc"
            listing = sorted(self.records, key=lambda r: r["id"])
            listing.sort(key=lambda r: r.get("updated_at", ""), reverse=True)
        else:
            listing = sorted(self.records, key=lambda r: r["id"])
        chunk = listing[(page - 1) * size : page * size]
        body: dict[str, Any] = {
            "customers": [dict(r) for r in chunk],
            "page": page,
            "page_size": size,
            "total_pages": math.ceil(len(listing) / size),
            "total_items": len(listing),
        }
        (self.after_page if sort_by == "updated_at" else self.after_oldest_first)(page)
        return httpx.Response(200, json=body)

    def newest_first_pages(self) -> list[int]:
        return [page for sort_by, page in self.asked if sort_by == "updated_at"]

    def touch(self, record_id: str, stamp: str) -> None:
        for record in self.records:
            if record["id"] == record_id:
                record["updated_at"] = stamp


def connector(fake: FakeList, clock: list[float] | None = None) -> HousecallProConnector:
    now = clock if clock is not None else [NOW]
    options = HousecallProOptions(
        api_key=KEY,
        base_url="http://hcp.test",
        page_size=PAGE,
        rate_limit=0,
        max_retries=0,
        concurrency=4,
        incremental=["customers"],
    )
    extra = {"transport": httpx.MockTransport(fake.handle), "clock": lambda: now[0]}
    return HousecallProConnector(options, ConnectorContext(name="hcp", extra=extra))


def run(hcp: HousecallProConnector, token: str | None) -> tuple[ReadPass, list[NativeRecord]]:
    rp = hcp.read_incremental("customers", token)
    assert rp is not None
    return rp, list(rp.records)


def from_mark(since: str = MARK) -> str:
    return encode_token(Mark(since, NOW - 3600))


def ids(records: list[NativeRecord]) -> list[str]:
    return [r.id for r in records]


def test_ties_on_the_mark_across_pages_are_all_listed_and_the_pass_stops_past_them() -> None:
    # newest first: 3 newer, then three pages' worth around the mark (60), then older ones
    stamps = [at(65), at(64), at(63), at(62), at(61), at(60), at(60), at(60), at(59)]
    stamps += [at(m) for m in range(50, 40, -1)]
    fake = FakeList(stamps)
    rp, records = run(connector(fake), from_mark())

    assert not rp.complete
    assert ids(records) == [f"cus_{n:03d}" for n in range(8)]  # every record at or after 10:00
    # page 2 ends on the mark: page 3 may hold more of it; page 3 ends before it: no page 4,
    # although the connector could read 4 pages ahead
    assert fake.asked == [("updated_at", 1), ("updated_at", 2), ("updated_at", 3)]
    assert decode_token(rp.token()) == Mark(at(65), NOW - 3600)


def test_a_quiet_period_costs_one_request_and_lists_only_the_records_on_the_mark() -> None:
    fake = FakeList([at(60), at(60), at(30), at(20), at(10), at(5), at(4), at(3)])
    rp, records = run(connector(fake), from_mark())

    assert fake.asked == [("updated_at", 1)]
    assert ids(records) == ["cus_000", "cus_001"]
    assert decode_token(rp.token()) == Mark(MARK, NOW - 3600)


def test_a_page_ending_exactly_on_the_mark_asks_for_one_page_more() -> None:
    fake = FakeList([at(62), at(61), at(60), at(59), at(58), at(57), at(56)])
    _rp, records = run(connector(fake), from_mark())

    assert fake.newest_first_pages() == [1, 2]
    assert ids(records) == ["cus_000", "cus_001", "cus_002"]


def test_a_record_changed_during_the_pass_is_never_skipped() -> None:
    """It moves to the head of the list, behind which records shift one place later: one is
    listed twice (yielded once); the moved one is listed by the next pass."""
    stamps = [at(70), at(69), at(68), at(67), at(66), at(65), at(64), at(63), at(62), at(59)]
    fake = FakeList(stamps)
    fake.after_page = lambda page: fake.touch("cus_007", at(80)) if page == 1 else None
    hcp = connector(fake)
    rp, records = run(hcp, from_mark())

    assert fake.newest_first_pages() == [1, 2, 3, 4]
    assert sorted(ids(records)) == sorted(set(ids(records)))  # no record twice
    assert set(ids(records)) == {f"cus_{n:03d}" for n in range(9)} - {"cus_007"}
    assert decode_token(rp.token()).since == at(70)  # page 1's newest: before the change

    fake.asked.clear()
    _rp, again = run(hcp, rp.token())
    assert ids(again) == ["cus_007", "cus_000"]
    assert fake.asked == [("updated_at", 1)]


def test_a_list_that_shrank_during_the_pass_keeps_the_old_mark() -> None:
    """A delete moves the records behind it one place earlier, onto a page already read: one
    may have been skipped, so the next pass starts where this one did."""
    stamps = [at(70), at(69), at(68), at(67), at(66), at(65), at(59)]
    fake = FakeList(stamps)
    fake.after_page = lambda page: fake.records.pop(0) if page == 1 else None
    rp, records = run(connector(fake), from_mark())

    assert "cus_003" not in ids(records)  # shifted onto page 1 after it was read
    assert decode_token(rp.token()) == Mark(MARK, NOW - 3600)


def test_an_unsorted_list_is_read_whole_and_then_only_completely() -> None:
    # sort_by=updated_at ignored: the id order, in which the stamps go up and down
    fake = FakeList([at(59), at(70), at(30), at(61), at(20), at(65), at(10)], ordered=False)
    hcp = connector(fake)
    with capture_logs() as logs:
        rp, records = run(hcp, from_mark())
        assert len(records) == 7  # nothing skipped, although page 1 starts before the mark
        mark = decode_token(rp.token())
        assert (mark.since, mark.no_mark) == (None, "unsorted")

        fake.asked.clear()
        rp, records = run(hcp, rp.token())
        assert rp.complete and len(records) == 7
        assert fake.newest_first_pages() == []  # no mark asked for
        assert decode_token(rp.token()).no_mark == "unsorted"
    told = [e for e in logs if "read completely each time" in e["event"]]
    assert len(told) == 1 and told[0]["log_level"] == "warning"


def test_records_without_updated_at_give_complete_passes_until_they_carry_it() -> None:
    fake = FakeList([at(1)] * 5, stamped=False)
    clock = [NOW]
    hcp = connector(fake, clock)
    with capture_logs() as logs:
        rp, records = run(hcp, None)
        assert rp.complete and len(records) == 5
        assert fake.newest_first_pages() == [1]  # the mark asked for, once
        assert decode_token(rp.token()) == Mark(None, NOW, "unstamped")

        fake.asked.clear()
        rp, _records = run(hcp, rp.token())
        assert rp.complete and fake.newest_first_pages() == []
    assert len([e for e in logs if "read completely each time" in e["event"]]) == 1

    for record in fake.records:  # the API starts stamping them
        record["updated_at"] = at(50)
    rp, _records = run(hcp, rp.token())
    assert rp.complete and decode_token(rp.token()) == Mark(None, NOW)
    rp, _records = run(hcp, rp.token())  # looks for a mark again
    assert rp.complete and decode_token(rp.token()) == Mark(at(50), NOW)
    fake.asked.clear()
    rp, _records = run(hcp, rp.token())
    assert not rp.complete and fake.asked == [("updated_at", 1), ("updated_at", 2)]


@pytest.mark.parametrize("token", [None, "", "not json", json.dumps({"v": 99}), '{"v":1}'])
def test_no_readable_token_gives_a_complete_pass_with_its_mark_asked_for_first(
    token: str | None,
) -> None:
    fake = FakeList([at(m) for m in (5, 50, 20, 61, 33)])
    rp, records = run(connector(fake), token)

    assert rp.complete and len(records) == 5
    assert fake.asked == [("updated_at", 1), ("created_at", 1), ("created_at", 2)]
    assert decode_token(rp.token()) == Mark(at(61), NOW)


def test_a_record_changed_during_a_complete_pass_is_listed_by_the_next_pass() -> None:
    """The complete pass read it before the change, and went on to read a record changed
    later still: the newest stamp it saw is no mark. The one asked for first is."""
    fake = FakeList([at(m) for m in (5, 50, 20, 61, 33, 40)])

    def edit(page: int) -> None:
        if page == 1:
            fake.touch("cus_000", at(80))  # read on page 1, before the change
            fake.touch("cus_004", at(81))  # read on page 2, after its change

    fake.after_oldest_first = edit
    hcp = connector(fake)
    rp, records = run(hcp, None)
    assert [r.data["updated_at"] for r in records if r.id in ("cus_000", "cus_004")] == [
        at(5),
        at(81),
    ]
    assert decode_token(rp.token()).since == at(61)
    _rp, again = run(hcp, rp.token())
    assert ids(again) == ["cus_004", "cus_000", "cus_003"]


def test_a_complete_pass_is_due_after_full_every_hours() -> None:
    fake = FakeList([at(m) for m in (5, 50, 20, 61, 33)])
    clock = [NOW]
    hcp = connector(fake, clock)
    rp, _records = run(hcp, None)
    token = rp.token()
    clock[0] = NOW + 23.9 * 3600
    assert not run(hcp, token)[0].complete
    clock[0] = NOW + 24 * 3600
    rp, _records = run(hcp, token)
    assert rp.complete and decode_token(rp.token()).full_at == NOW + 24 * 3600
    clock[0] = NOW - 60  # a clock that went back: nothing in the token is trusted
    assert run(hcp, token)[0].complete


def test_entities_not_listed_are_read_as_before() -> None:
    hcp = connector(FakeList([at(1)]))
    assert hcp.read_incremental("jobs", None) is None
    assert hcp.read_incremental("payments", None) is None  # invoices are not listed


CONFIG = """\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
api_key = "hcp-key-0123456789abcdef"
{options}

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "p"
members = ["hcp", "books"]
entities = ["customers"]
"""


def problems(tmp_path: Path, options: str) -> list[tuple[str, str]]:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(options=options), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    return [(p.location, p.message) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ('incremental = ["customers", "estimates"]', "unknown entity 'estimates'"),
        ('incremental = ["payments"]', "payments follow the invoices' passes"),
        ('incremental = ["Customers"]', "unknown entity 'Customers'"),
    ],
)
def test_the_option_incremental_names_only_entities_with_a_list(
    tmp_path: Path, options: str, said: str
) -> None:
    [(where, message)] = problems(tmp_path, options)
    assert where.endswith("connectors.hcp.incremental")
    assert said in message and "allowed: customers, jobs, invoices" in message


@pytest.mark.parametrize("value", ["0", "-1", "true"])
def test_full_every_hours_is_a_positive_number(tmp_path: Path, value: str) -> None:
    [(where, _message)] = problems(tmp_path, f"full_every_hours = {value}")
    assert where.endswith("connectors.hcp.full_every_hours")


def test_the_options_as_configured(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    options = 'incremental = ["customers", "invoices"]\nfull_every_hours = 6'
    path.write_text(CONFIG.format(options=options), encoding="utf-8")
    hcp = load_config(path, env={}).connectors["hcp"].options
    assert isinstance(hcp, HousecallProOptions)
    assert (hcp.incremental, hcp.full_every_hours) == (["customers", "invoices"], 6.0)
    assert HousecallProOptions(api_key=KEY).incremental == []  # off by default
