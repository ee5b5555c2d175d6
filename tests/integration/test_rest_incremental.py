"""Incremental reads against a real json-server 0.17.4: a ``rest`` CRM with
``incremental.enabled`` (``updatedAt_gte``), a CSV folder and a memory member in one pipeline.

Edits made on the CRM arrive through partial passes that make fewer list requests than a
complete one; an edit made elsewhere reaches a CRM record the partial pass did not list (it is
fetched by id first); a delete on the CRM arrives with the next complete pass (the connector's
clock moved past ``full_every_hours``); a second sync plans nothing.

json-server does not stamp update times itself: the test, editing the CRM as a person would
through the API, sets ``updatedAt`` as a CRM would (seconds and ``Z``: json-server compares the
filter as text).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine import api
from syncengine.config import Config, load_config
from syncengine.connectors.memory import MemoryConnector
from syncengine.engine import SyncResult
from testbed.jsonserver import JsonServer
from tests.csvfiles import CSV_HEADER, read_csv, write_csv
from tests.jsonserver import ensure_json_server

pytestmark = pytest.mark.integration

PAGE = 4
SEEDED = 12
FULL_PASS_LISTS = 3  # ceil(12 / 4) pages, following Link: the last page has no next
DAY = 24 * 3600.0


def stamp(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def person(n: int) -> dict[str, Any]:
    # older update times, one hour apart, so that only the newest is within the overlap
    moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=n)
    return {
        "id": n,
        "firstName": f"First{n}",
        "lastName": f"Last{n}",
        "email": f"person{n}@example.org",
        "company": f"Company {n}",
        "address": {"street": f"{n} Main St", "city": "Austin"},
        "updatedAt": stamp(moment),
    }


class Recorder(httpx.HTTPTransport):
    """A real transport that notes each request as (method, path, query)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path, request.url.query.decode()))
        return super().handle_request(request)

    def lists(self) -> list[str]:
        return [q for m, p, q in self.seen if m == "GET" and p == "/customers"]

    def gets(self) -> list[str]:
        return [p for m, p, _q in self.seen if m == "GET" and p != "/customers"]

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _q in self.seen if m != "GET"]


class Pipeline:
    """The pipeline, synced through the library with a fresh recorder each run and a clock
    the test can move forward."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.offset = 0.0
        self.last = Recorder()

    def sync(self, **kwargs: Any) -> SyncResult:
        self.last = Recorder()
        extra = {"crm": {"transport": self.last, "clock": lambda: time.time() + self.offset}}
        [result] = api.sync(self.config, connector_extra=extra, **kwargs)
        assert result.failures == [] and not result.error
        return result


def config(folder: Path, crm_url: str) -> Config:
    path = folder / "config.toml"
    path.write_text(
        f"""\
[state]
url = "sqlite:///state.db"

[connectors.crm]
type = "rest"
base_url = "{crm_url}"
rate_limit = 0
max_retries = 1
page_size = {PAGE}

[connectors.crm.entities.customers]
path = "/customers"
updated_field = "updatedAt"
find_params = {{ email = "email" }}
pagination = {{ style = "link", page_param = "_page", size_param = "_limit" }}
incremental = {{ enabled = true, param = "updatedAt_gte", full_every_hours = 24, \
overlap_seconds = 60 }}

[connectors.books]
type = "spreadsheet"
path = "books"

[connectors.office]
type = "memory"

[[pipelines]]
name = "p"
members = ["crm", "books", "office"]
entities = ["customers"]

[pipelines.conflicts]
default = ["crm"]
""",
        encoding="utf-8",
    )
    return load_config(path)


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[JsonServer]:
    with JsonServer(
        ensure_json_server(),
        tmp_path / "crm",
        {"customers": [person(n) for n in range(1, SEEDED + 1)]},
    ) as server:
        yield server


def ops(result: SyncResult) -> list[tuple[str, str]]:
    return sorted((a.op, a.member) for a in result.plan.actions)


def books(csv_path: Path) -> dict[str, dict[str, str]]:
    return {r["Email"]: r for r in read_csv(csv_path)}


def test_incremental_passes_between_complete_ones(tmp_path: Path, crm: JsonServer) -> None:
    csv_path = tmp_path / "books" / "customers.csv"
    write_csv(
        csv_path,
        [
            {
                "First Name": "Bea",
                "Last Name": "Booker",
                "Email": "bea@example.org",
                "City": "Dallas",
            }
        ],
        CSV_HEADER,
    )
    sync = Pipeline(config(tmp_path, crm.url))
    office = MemoryConnector.get_dataset("office")

    # 1. No mark yet: a complete pass. Everyone gets everything.
    first = sync.sync()
    assert len(sync.last.lists()) == FULL_PASS_LISTS
    assert first.plan.entities[0].seen["crm"] == SEEDED
    assert len(crm.records()) == SEEDED + 1 and len(read_csv(csv_path)) == SEEDED + 1
    assert len(office.table("customers")) == SEEDED + 1

    # 2. Nothing changed: one list request (only the newest record is within the overlap).
    quiet = sync.sync()
    assert quiet.plan.actions == []
    assert sync.last.lists() == ["updatedAt_gte=2026-01-01T11%3A59%3A00Z&_page=1&_limit=4"]
    assert sync.last.gets() == [] and sync.last.writes() == []

    # 3. Edits on the CRM arrive through a partial pass; an edit in the sheet reaches a CRM
    #    record that pass did not list (fetched by id, then patched).
    now = stamp()
    crm.patch(2, {"firstName": "Edited2", "updatedAt": now})
    crm.patch(7, {"company": "Company Seven", "updatedAt": now})
    rows = read_csv(csv_path)
    for row in rows:
        if row["Email"] == "person5@example.org":
            row["Last Name"] = "Sheet-Edited"
    write_csv(csv_path, rows, list(rows[0]))
    edits = sync.sync()
    assert len(sync.last.lists()) < FULL_PASS_LISTS
    assert sync.last.lists() == [
        "updatedAt_gte=2026-01-01T11%3A59%3A00Z&_page=1&_limit=4"
    ]  # records 2, 7 and 12
    assert edits.plan.entities[0].seen["crm"] == 3
    assert ops(edits) == [
        ("update", "books"),
        ("update", "books"),
        ("update", "crm"),
        ("update", "office"),
        ("update", "office"),
        ("update", "office"),
    ]
    assert sync.last.gets() == ["/customers/5"]
    assert sync.last.writes() == [("PATCH", "/customers/5")]
    five = crm.by_email("person5@example.org")
    assert five["lastName"] == "Sheet-Edited"
    assert (five["firstName"], five["company"], five["address"]) == (
        "First5",
        "Company 5",
        {"street": "5 Main St", "city": "Austin"},
    )
    sheet = books(csv_path)
    assert sheet["person2@example.org"]["First Name"] == "Edited2"
    assert sheet["person7@example.org"]["Company"] == "Company Seven"
    people = {r["email"]: r for r in office.table("customers").values()}
    assert people["person2@example.org"]["first_name"] == "Edited2"
    assert people["person5@example.org"]["last_name"] == "Sheet-Edited"

    # the mark moved on: the next pass starts a minute before the edits
    again = sync.sync()
    assert again.plan.actions == [] and sync.last.writes() == []
    moved = dt.datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ") - dt.timedelta(seconds=60)
    assert sync.last.lists() == [
        f"updatedAt_gte={stamp(moved).replace(':', '%3A')}&_page=1&_limit=4"
    ]

    # 4. A delete on the CRM: partial passes cannot see it ...
    crm.delete(9)
    partial = sync.sync()
    assert partial.plan.actions == [] and len(sync.last.lists()) == 1
    assert "person9@example.org" in books(csv_path)
    # ... the next complete pass does (the connector makes one every full_every_hours).
    sync.offset = DAY + 60
    complete = sync.sync()
    assert len(sync.last.lists()) == FULL_PASS_LISTS  # 12 records on the CRM again
    assert ops(complete) == [("delete", "books"), ("delete", "office")]
    assert "person9@example.org" not in books(csv_path)
    assert len(office.table("customers")) == SEEDED

    # 5. And a second sync plans nothing, with one list request.
    last = sync.sync()
    assert last.plan.actions == [] and len(sync.last.lists()) == 1
    assert sync.last.writes() == [] and sync.last.gets() == []
    assert len(crm.records()) == SEEDED and len(read_csv(csv_path)) == SEEDED
