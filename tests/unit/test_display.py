"""How times, counts and plurals are shown to people (``syncengine.display``), with a fixed now
and a fixed time zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from syncengine.display import (
    ago,
    days_in,
    entity_changes,
    label_of,
    local_time,
    member_changes,
    plural,
)

NOW = dt.datetime(2026, 12, 3, 20, 8, 30, tzinfo=dt.UTC)
CHICAGO = ZoneInfo("America/Chicago")


@pytest.mark.parametrize(
    ("seconds_before", "shown"),
    [
        (0, "just now"),
        (44, "just now"),
        (46, "1 min ago"),
        (180, "3 min ago"),
        (59 * 60, "59 min ago"),
        (60 * 60, "1 h ago"),
        (2 * 3600 + 5 * 60, "2 h 5 min ago"),
        (12 * 3600 + 5 * 60, "12 h ago"),
        (47 * 3600, "47 h ago"),
        (3 * 86400, "3 days ago"),
        (86400 * 2 + 3600, "2 days ago"),
        (-30, "in a few seconds"),
        (-12 * 60, "in 12 min"),
        (-90 * 60, "in 1 h 30 min"),
    ],
)
def test_ago(seconds_before: int, shown: str) -> None:
    assert ago(NOW - dt.timedelta(seconds=seconds_before), NOW) == shown


def test_local_time_is_in_the_zone_to_the_minute_with_how_long_ago() -> None:
    when = dt.datetime(2026, 12, 3, 20, 5, 10, tzinfo=dt.UTC)
    assert local_time(when, NOW, CHICAGO) == "2026-12-03 14:05 (3 min ago)"
    assert local_time(when.isoformat(), NOW, CHICAGO) == "2026-12-03 14:05 (3 min ago)"
    # the state store's naive times are UTC
    assert local_time("2026-12-03T20:05:10", NOW, CHICAGO) == "2026-12-03 14:05 (3 min ago)"
    later = "2026-12-03T20:20:30+00:00"
    assert local_time(later, NOW, dt.UTC) == "2026-12-03 20:20 (in 12 min)"
    assert local_time(None, NOW, CHICAGO) == "-"


def test_plural() -> None:
    assert plural(1, "conflict") == "1 conflict"
    assert plural(0, "conflict") == "0 conflicts"
    assert plural(2, "write failed", "writes failed") == "2 writes failed"


def test_counts_are_labelled_and_links_shown_apart_from_updates() -> None:
    assert member_changes({"create": 5, "update": 10, "delete": 1, "link": 10}) == [
        ("created", 5),
        ("updated", 0),
        ("linked", 10),
        ("deleted", 1),
    ]
    # run history written before "link" existed
    assert member_changes({"create": 0, "update": 2, "delete": 0})[1] == ("updated", 2)
    counts = {
        "hcp": {"create": 3, "update": 2, "delete": 0, "link": 0},
        "books": {"create": 5, "update": 12, "delete": 0, "link": 10},
        "conflicts": 1,
        "conflicts_settled": 0,
        "errors": 2,
        "skipped": 0,
        "failed": 1,
        "read": {"hcp": 12, "books": 10},
        "problems": [],
    }
    assert entity_changes(counts) == (
        "hcp created 3, updated 2; books created 5, updated 2, linked 10; "
        "1 conflict parked; 2 errors; 1 write failed"
    )
    quiet = {"hcp": {"create": 0, "update": 0, "delete": 0}, "read": {"hcp": 3}, "errors": 0}
    assert entity_changes(quiet) == "no changes"


def test_a_line_is_named_by_what_it_sold_not_by_its_hub_key() -> None:
    line = {
        "name": "Labor",
        "quantity": "1.5",
        "unit_price": 10000,
        "amount": 15000,
        "invoice": "k1",
    }
    assert label_of(line, "key-9") == 'line "Labor" x 1.5, $150.00'
    assert label_of({"quantity": "2", "unit_price": 5}, "key-9") == "line key-9 x 2"


@pytest.mark.parametrize(
    ("paid_at", "zone", "day"),
    [
        ("2025-02-06T03:00:00Z", "UTC", "2025-02-06"),
        # 9 pm in Chicago the evening before: the day the books show
        ("2025-02-06T03:00:00Z", "America/Chicago", "2025-02-05"),
        ("2025-02-06T03:00:00+00:00", "America/Chicago", "2025-02-05"),
        (dt.datetime(2025, 2, 6, 3, tzinfo=dt.UTC), "America/Chicago", "2025-02-05"),
        ("2025-02-06", "America/Chicago", "2025-02-06"),  # a day is a day everywhere
        ("2025-02-06T03:00:00", "America/Chicago", "2025-02-06"),  # no zone: as written
        ("not a time Tx", "America/Chicago", "not a time"),
    ],
)
def test_a_payment_label_shows_the_day_in_the_pipeline_s_zone(
    paid_at: object, zone: str, day: str
) -> None:
    with days_in(zone):
        shown = label_of({"amount": 15_732, "paid_at": paid_at}, "k1")
    assert shown == f"$157.32 on {day} (k1)"
    assert label_of({"amount": 15_732, "paid_at": "2025-02-06T03:00:00Z"}, "k1").endswith(
        "on 2025-02-06 (k1)"
    )  # outside, UTC
