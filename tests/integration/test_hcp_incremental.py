"""Incremental reads of Housecall Pro against the real sandbox, run in-process
(``SyncASGITransport``), its request log (``GET /_sandbox/requests``) counting what was asked.

The connector on its own: a quiet partial pass over 10,000 customers is one request; an edit
made through the API is listed and moves the mark; a complete pass comes once
``full_every_hours`` passed on the connector's clock (``ConnectorContext.extra["clock"]``) and
sees a delete no partial pass could; invoices without ``updated_at`` (the sandbox's
``live_invoices``, as the live API sends them) are read completely each time; payments follow
the invoices' passes. Then the engine: a pipeline of Housecall Pro and a CSV folder with
incremental customers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from structlog.testing import capture_logs

from syncengine import api
from syncengine.config import load_config
from syncengine.connector import ConnectorContext, NativeRecord, ReadPass
from syncengine.connectors.housecallpro import HousecallProConnector, HousecallProOptions
from syncengine.connectors.housecallpro.sandbox import SyncASGITransport, create_app
from syncengine.engine import SyncResult
from syncengine.incremental import Mark, decode_token
from tests.csvfiles import read_csv, write_csv
from tests.helpers import ops

pytestmark = pytest.mark.integration

KEY = "hcp-incremental-key-0123456789"
BASE = "http://hcp.sandbox"
HOUR = 3600.0
NEWEST_FIRST = "sort_by=updated_at&sort_direction=desc"
OLDEST_FIRST = "sort_by=created_at&sort_direction=asc"


class Clock:
    """The connector's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Sandbox:
    """An in-process sandbox and a client of its API and helper routes, as a person (not the
    engine) would use them."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.client = httpx.Client(
            base_url=BASE,
            transport=SyncASGITransport(app),
            headers={"Authorization": f"Token {KEY}"},
        )

    def lists(self, path: str) -> list[str]:
        """The queries of the ``GET path`` requests logged since the last call (clears the
        log)."""
        entries = self.client.get("/_sandbox/requests").json()["requests"]
        self.client.delete("/_sandbox/requests").raise_for_status()
        return [e["query"] for e in entries if e["method"] == "GET" and e["path"] == path]

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request logged since the log was last cleared."""
        entries = self.client.get("/_sandbox/requests").json()["requests"]
        return [(e["method"], e["path"]) for e in entries]

    def all(self, path: str, key: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {"page": page, "page_size": 200, "sort_by": "created_at"}
            body = self.client.get(path, params={**params, "sort_direction": "asc"}).json()
            found += body[key]
            if page >= body["total_pages"]:
                return found
            page += 1

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.put(path, json=body)
        response.raise_for_status()
        return dict(response.json())

    def pay(self, invoice_id: str, amount: int) -> dict[str, Any]:
        response = self.client.post(
            f"/_sandbox/invoices/{invoice_id}/payments",
            json={"amount": amount, "payment_method": "cash"},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def close(self) -> None:
        self.client.close()


def sandbox(seed: int, **options: Any) -> Sandbox:
    return Sandbox(create_app(KEY, seed=seed, random_seed=3, **options))


def connector(
    box: Sandbox, clock: Clock, *, page_size: int, **options: Any
) -> HousecallProConnector:
    values = {
        "api_key": KEY,
        "base_url": BASE,
        "page_size": page_size,
        "rate_limit": 0,
        "max_retries": 0,
        **options,
    }
    context = ConnectorContext(
        name="hcp", extra={"transport": SyncASGITransport(box.app), "clock": clock}
    )
    return HousecallProConnector(HousecallProOptions(**values), context)


def read(
    hcp: HousecallProConnector, entity: str, token: str | None
) -> tuple[ReadPass, list[NativeRecord]]:
    rp = hcp.read_incremental(entity, token)
    assert rp is not None
    return rp, list(rp.records)


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ------------------------------------------------------------------------ the connector alone


def test_a_quiet_pass_over_10000_customers_is_one_request(clock: Clock) -> None:
    box = sandbox(10_000)
    hcp = connector(box, clock, page_size=100, incremental=["customers"])
    try:
        rp, records = read(hcp, "customers", None)
        assert rp.complete and len(records) == 10_000
        lists = box.lists("/customers")
        assert lists[0] == f"{NEWEST_FIRST}&page=1&page_size=100"  # the mark, asked first
        # every page once; pages read ahead (``concurrency``) may reach the sandbox out of order
        assert sorted(lists[1:]) == sorted(
            f"{OLDEST_FIRST}&page={n}&page_size=100" for n in range(1, 101)
        )

        clock.now += HOUR
        rp, records = read(hcp, "customers", rp.token())
        assert not rp.complete
        assert box.lists("/customers") == [f"{NEWEST_FIRST}&page=1&page_size=100"]
        since = decode_token(rp.token()).since
        assert records and all(r.data["updated_at"] == since for r in records)  # on the mark
        assert box.requests() == []  # and nothing else
    finally:
        hcp.close()
        box.close()


def test_an_edit_through_the_api_is_listed_and_the_mark_moves(clock: Clock) -> None:
    box = sandbox(40)
    hcp = connector(box, clock, page_size=10, incremental=["customers"])
    try:
        first, _records = read(hcp, "customers", None)
        before = decode_token(first.token())
        target = box.all("/customers", "customers")[17]
        edited = box.put(f"/customers/{target['id']}", {"first_name": "Edited"})
        box.lists("/customers")

        rp, records = read(hcp, "customers", first.token())
        assert not rp.complete
        assert records[0].id == target["id"] and records[0].data["first_name"] == "Edited"
        assert box.lists("/customers") == [f"{NEWEST_FIRST}&page=1&page_size=10"]
        after = decode_token(rp.token())
        assert after == Mark(edited["updated_at"], before.full_at)
        assert before.since is not None and after.since != before.since

        rp, records = read(hcp, "customers", rp.token())  # the edit is now on the mark
        assert [r.id for r in records] == [target["id"]]
    finally:
        hcp.close()
        box.close()


def test_a_complete_pass_after_full_every_hours_sees_a_delete(clock: Clock) -> None:
    box = sandbox(30)
    hcp = connector(box, clock, page_size=10, incremental=["customers"], full_every_hours=6)
    try:
        rp, records = read(hcp, "customers", None)
        token = rp.token()
        since = decode_token(token).since
        gone = next(r.id for r in records if r.data["updated_at"] != since)
        box.client.delete(f"/customers/{gone}").raise_for_status()

        clock.now += 5.9 * HOUR
        rp, records = read(hcp, "customers", token)
        assert not rp.complete  # a partial pass cannot tell a delete
        assert gone not in {r.id for r in records}
        token = rp.token()

        clock.now += 0.1 * HOUR  # six hours after the complete pass
        box.lists("/customers")
        rp, records = read(hcp, "customers", token)
        assert rp.complete and len(records) == 29 and gone not in {r.id for r in records}
        assert [q.split("&page=")[0] for q in box.lists("/customers")] == [NEWEST_FIRST] + [
            OLDEST_FIRST
        ] * 3
        assert decode_token(rp.token()).full_at == clock.now
    finally:
        hcp.close()
        box.close()


def test_invoices_without_updated_at_are_read_completely_each_time(clock: Clock) -> None:
    box = sandbox(20, live_invoices=True)
    hcp = connector(box, clock, page_size=10, incremental=["invoices"])
    try:
        with capture_logs() as logs:
            invoices, listed = read(hcp, "invoices", None)
            payments, paid = read(hcp, "payments", None)
            assert invoices.complete and payments.complete
            assert "updated_at" not in listed[0].data
            assert decode_token(invoices.token()).no_mark == "unstamped"
            box.lists("/invoices")

            clock.now += HOUR
            again, relisted = read(hcp, "invoices", invoices.token())
            payments, repaid = read(hcp, "payments", payments.token())
        assert again.complete and payments.complete
        assert len(relisted) == len(listed) and len(repaid) == len(paid) > 0
        queries = box.lists("/invoices")
        assert queries and all(q.startswith(OLDEST_FIRST) for q in queries)  # no mark asked for
        told = [e for e in logs if "read completely each time" in e["event"]]
        assert len(told) == 1 and told[0]["entity"] == "invoices"
        assert "no updated_at" in told[0]["event"]
    finally:
        hcp.close()
        box.close()


@pytest.mark.parametrize("nest_payments", [True, False])
def test_payments_follow_a_partial_invoices_pass(clock: Clock, nest_payments: bool) -> None:
    box = sandbox(30, nest_payments=nest_payments)
    hcp = connector(box, clock, page_size=10, incremental=["invoices"])
    try:
        invoices, _listed = read(hcp, "invoices", None)
        payments, paid = read(hcp, "payments", None)
        assert invoices.complete and payments.complete
        owing = next(
            i
            for i in box.all("/invoices", "invoices")
            if i["status"] not in ("voided", "canceled", "paid") and i["outstanding_balance"] > 1
        )
        payment = box.pay(owing["id"], 1)
        box.lists("/invoices")

        clock.now += HOUR
        invoices, listed = read(hcp, "invoices", invoices.token())
        payments, repaid = read(hcp, "payments", payments.token())
        assert not invoices.complete and not payments.complete
        assert listed[0].id == owing["id"]
        assert {p.data["invoice_id"] for p in repaid} <= {i.id for i in listed}
        assert payment["id"] in {p.id for p in repaid}
        assert len(repaid) < len(paid)
        assert [q.split("&page=")[0] for q in box.lists("/invoices")] == [NEWEST_FIRST]
        assert decode_token(payments.token()).since == decode_token(invoices.token()).since
    finally:
        hcp.close()
        box.close()


def test_a_payments_pass_behind_the_invoices_pass_is_complete(clock: Clock) -> None:
    """A payments pass that was not committed leaves its mark behind the invoices': the next
    one lists every invoice again rather than miss the payments of those not listed since."""
    box = sandbox(30)
    hcp = connector(box, clock, page_size=10, incremental=["invoices"])
    try:
        invoices, _listed = read(hcp, "invoices", None)
        payments, paid = read(hcp, "payments", None)
        old_payments = payments.token()
        invoices, _listed = read(hcp, "invoices", invoices.token())
        payments, _paid = read(hcp, "payments", payments.token())
        assert not payments.complete

        owing = next(
            i
            for i in box.all("/invoices", "invoices")
            if i["status"] not in ("voided", "canceled", "paid") and i["outstanding_balance"] > 1
        )
        box.pay(owing["id"], 1)
        invoices, _listed = read(hcp, "invoices", invoices.token())
        payments, repaid = read(hcp, "payments", payments.token())
        assert not payments.complete  # up to date: follows
        stale = read(hcp, "invoices", invoices.token())[0]
        payments, repaid = read(hcp, "payments", old_payments)
        assert not stale.complete and payments.complete and len(repaid) == len(paid) + 1
        assert read(hcp, "payments", payments.token())[0].complete  # no invoices pass before
    finally:
        hcp.close()
        box.close()


# ------------------------------------------------------------------------------- the engine


CONFIG = """\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "{base}"
api_key = "{key}"
page_size = 10
rate_limit = 0
max_retries = 0
delete_customers = true
incremental = ["customers"]
full_every_hours = 24

[connectors.books]
type = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = ["customers"]

[pipelines.conflicts]
default = ["hcp"]
"""


class Pipeline:
    """HCP (the in-process sandbox) and a CSV folder, synced through the library with a
    fresh transport each run and the connector's clock in the test's hands."""

    def __init__(self, tmp_path: Path, box: Sandbox, clock: Clock) -> None:
        path = tmp_path / "config.toml"
        path.write_text(CONFIG.format(base=BASE, key=KEY), encoding="utf-8")
        self.config = load_config(path, env={})
        self.csv = tmp_path / "books" / "customers.csv"
        self.box = box
        self.clock = clock

    def sync(self) -> SyncResult:
        self.box.client.delete("/_sandbox/requests").raise_for_status()
        extra = {"hcp": {"transport": SyncASGITransport(self.box.app), "clock": self.clock}}
        [result] = api.sync(self.config, connector_extra=extra)
        assert result.failures == [] and not result.error, result.to_json()
        return result

    def rows(self) -> dict[str, dict[str, str]]:
        return {row["Email"]: row for row in read_csv(self.csv)}


@pytest.fixture
def box() -> Iterator[Sandbox]:
    found = sandbox(25)
    yield found
    found.close()


def test_a_pipeline_reads_hcp_customers_incrementally(
    tmp_path: Path, box: Sandbox, clock: Clock
) -> None:
    sync = Pipeline(tmp_path, box, clock)
    with_email = [c for c in box.all("/customers", "customers") if c.get("email")]

    # 1. No mark yet: complete (the mark asked for, then 3 pages oldest first)
    first = sync.sync()
    assert len(box.lists("/customers")) == 4
    assert len(read_csv(sync.csv)) == 25
    assert {a.op for a in first.plan.actions} == {"create"}

    # 2. One edit on HCP: one list request, the edit in the sheet, nothing else changed
    target = with_email[9]
    box.put(f"/customers/{target['id']}", {"last_name": "Edited-In-HCP"})
    edit = sync.sync()
    assert 1 <= len(box.lists("/customers")) <= 2
    assert ops(edit) == [("update", "books")]
    rows = sync.rows()
    assert len(rows) == 25 and rows[target["email"]]["Last Name"] == "Edited-In-HCP"

    # 3. An edit in the sheet reaches a customer the partial pass did not list: fetched by
    #    id, then written
    other = with_email[3]
    table = read_csv(sync.csv)
    for row in table:
        if row["Email"] == other["email"]:
            row["Company"] = "Edited In Sheet"
    write_csv(sync.csv, table, list(table[0]))
    sheet = sync.sync()
    assert ops(sheet) == [("update", "hcp")]
    assert ("PUT", f"/customers/{other['id']}") in box.requests()
    assert box.client.get(f"/customers/{other['id']}").json()["company"] == "Edited In Sheet"

    # 4. A delete on HCP waits for the next complete pass: partial passes list only changes
    box.client.delete(f"/customers/{with_email[5]['id']}").raise_for_status()
    clock.now += 12 * HOUR
    assert sync.sync().plan.actions == []
    assert len(box.lists("/customers")) == 1
    assert len(read_csv(sync.csv)) == 25
    clock.now += 12 * HOUR
    gone = sync.sync()
    assert ops(gone) == [("delete", "books")]
    assert len(box.lists("/customers")) == 4  # complete: mark, then 3 pages
    rows = sync.rows()
    assert len(rows) == 24 and with_email[5]["email"] not in rows

    # 5. Nothing changed: nothing to do, one request
    assert sync.sync().plan.actions == []
    assert len(box.lists("/customers")) == 1
    emails = [row["Email"] for row in read_csv(sync.csv)]
    assert len(emails) == len(set(emails)) == 24
