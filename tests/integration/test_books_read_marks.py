"""The books' read marks: a CSV file exactly as the sync last left it is not read again.

The spreadsheet connector's incremental pass (``SpreadsheetConnector.read_incremental``)
lists nothing when the file's modification time, size and content digest, and how it is
read, are those of its mark, and every row otherwise; the mark is the file as the run's own
writes left it (``ReadPass.settle``). Such a mark is exact (``ReadPass.exact``): where
another mark would be kept, it is dropped (``syncengine.marks``), so that a file put back
byte for byte to what a mark named is never taken as unchanged once the state moved on.

Against the in-process Housecall Pro sandbox and real files; whether a file was read is what
the run logs ("read incrementally", ``read=0``), and what each run did is checked on both
sides.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from syncengine import api
from syncengine.config import load_config
from syncengine.connectors.housecallpro.sandbox import SyncASGITransport, create_app
from syncengine.engine import SyncResult
from tests.crashpoints import mapping_overrides
from tests.csvfiles import read_csv_table, write_csv
from tests.helpers import ops
from tests.holdpoints import plugin_env, start_held
from tests.integration.conftest import (
    CLI_TIMEOUT,
    SYNCENGINE,
    CliResult,
    assert_clean_exit,
    cli_env,
    start_sandbox,
)

pytestmark = pytest.mark.integration

KEY = "books-marks-key-0123456789"
BASE = "http://hcp.sandbox"

CONFIG = """\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "{base}"
api_key = "{key}"
rate_limit = 0
max_retries = 0

[connectors.books]
type = "spreadsheet"
path = "books"
{books}

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = {entities}

[pipelines.conflicts]
default = ["hcp"]
"""


class Books:
    """The sandbox (in-process) and a CSV folder, synced through the library."""

    def __init__(self, tmp_path: Path, *, entities: list[str], seed: int = 6) -> None:
        self.dir = tmp_path
        self.app = create_app(KEY, seed=seed, random_seed=3)
        self.client = httpx.Client(
            base_url=BASE,
            transport=SyncASGITransport(self.app),
            headers={"Authorization": f"Token {KEY}"},
        )
        self.entities = entities
        self.configure()

    def configure(self, books: str = "") -> None:
        path = self.dir / "config.toml"
        text = CONFIG.format(base=BASE, key=KEY, books=books, entities=self.entities)
        path.write_text(text.replace("'", '"'), encoding="utf-8")
        self.config = load_config(path, env={})

    def sync(self, *, dry_run: bool = False) -> tuple[SyncResult, dict[str, int]]:
        """One run: its result, and entity -> rows listed for each books file read by its
        mark (a file missing there was read whole)."""
        extra = {"hcp": {"transport": SyncASGITransport(self.app)}}
        with capture_logs() as logs:
            [result] = api.sync(self.config, connector_extra=extra, dry_run=dry_run)
        assert not result.error and result.failures == [], result.to_json()
        skipped = {
            e["entity"]: e["read"]
            for e in logs
            if e.get("event") == "read incrementally" and e.get("member") == "books"
        }
        return result, skipped

    def path(self, entity: str) -> Path:
        return self.dir / "books" / f"{entity}.csv"

    def rows(self, entity: str) -> list[dict[str, Any]]:
        return read_csv_table(self.path(entity)).rows

    def edit(self, entity: str, index: int, column: str, value: str) -> None:
        table = read_csv_table(self.path(entity))
        table.rows[index][column] = value
        write_csv(self.path(entity), table.rows, table.header, newline=table.newline)

    def customer(self, email: str) -> dict[str, Any]:
        found = self.client.get("/customers", params={"q": email}).json()["customers"]
        [match] = [c for c in found if c.get("email") == email]
        return dict(match)


@pytest.fixture
def books(tmp_path: Path) -> Iterator[Books]:
    found = Books(tmp_path, entities=["customers"])
    yield found
    found.client.close()


def test_a_file_as_the_sync_left_it_is_not_read_again(books: Books) -> None:
    first, skipped = books.sync()
    assert {a.op for a in first.plan.actions} == {"create"} and skipped == {}
    assert len(books.rows("customers")) == 6

    # the file the first run created is the one its mark names
    again, skipped = books.sync()
    assert again.plan.actions == [] and skipped == {"customers": 0}

    # an edit in HCP is written to the file; the mark then names the file as written
    email = books.rows("customers")[2]["Email"]
    books.client.put(f"/customers/{books.customer(email)['id']}", json={"company": "From HCP"})
    written, skipped = books.sync()
    assert ops(written) == [("update", "books")] and skipped == {"customers": 0}
    assert books.rows("customers")[2]["Company"] == "From HCP"
    settled, skipped = books.sync()
    assert settled.plan.actions == [] and skipped == {"customers": 0}


def test_an_edited_file_is_read_whole_and_its_edit_synced(books: Books) -> None:
    books.sync()
    books.sync()
    books.edit("customers", 4, "Company", "Edited In Sheet")
    edited, skipped = books.sync()
    assert ops(edited) == [("update", "hcp")] and skipped == {}
    assert books.customer(books.rows("customers")[4]["Email"])["company"] == "Edited In Sheet"
    quiet, skipped = books.sync()
    assert quiet.plan.actions == [] and skipped == {"customers": 0}


def test_a_dry_run_neither_stores_nor_drops_a_mark(books: Books) -> None:
    books.sync()
    books.edit("customers", 1, "Company", "Planned Only")
    planned, skipped = books.sync(dry_run=True)
    assert ops(planned) == [("update", "hcp")] and skipped == {}
    applied, skipped = books.sync()  # the dry run's read left no mark naming the edited file
    assert ops(applied) == [("update", "hcp")] and skipped == {}
    assert books.customer(books.rows("customers")[1]["Email"])["company"] == "Planned Only"


def test_a_file_put_back_after_a_run_that_left_a_row_out_is_read_whole(books: Books) -> None:
    """A run that syncs one edit but leaves a broken row out keeps no mark (an exact one is
    dropped, not kept): the file put back byte for byte, modification time included, to
    the version the old mark named is read whole, and the edit is undone in HCP too."""
    books.sync()
    path = books.path("customers")
    as_left, times = path.read_bytes(), os.stat(path)
    table = read_csv_table(path)
    original = table.rows[3]["Company"]
    table.rows[3]["Company"] = "Edited In Sheet"
    table.rows.append(dict(table.rows[0]))  # a copied row: two rows share one Sync ID
    write_csv(path, table.rows, table.header, newline=table.newline)
    email = table.rows[3]["Email"]

    extra = {"hcp": {"transport": SyncASGITransport(books.app)}}
    [partly] = api.sync(books.config, connector_extra=extra)
    problems = [i for e in partly.plan.entities for i in e.issues]
    assert ops(partly) == [("update", "hcp")] and problems, partly.to_json()
    assert books.customer(email)["company"] == "Edited In Sheet"

    path.write_bytes(as_left)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    undone, skipped = books.sync()
    assert skipped == {} and ops(undone) == [("update", "hcp")]
    assert (books.customer(email)["company"] or "") == original


def test_a_change_in_how_the_file_is_read_reads_it_whole(books: Books) -> None:
    books.sync()
    _, skipped = books.sync()
    assert skipped == {"customers": 0}
    books.configure('timezone = "America/Chicago"')
    _, skipped = books.sync()
    assert skipped == {}
    _, skipped = books.sync()
    assert skipped == {"customers": 0}


def test_unchanged_files_of_an_entity_a_payment_changed_are_written_not_read(
    tmp_path: Path,
) -> None:
    books = Books(tmp_path, entities=["customers", "invoices", "payments"], seed=20)
    try:
        books.sync()
        _, skipped = books.sync()
        assert skipped == {"customers": 0, "invoices": 0, "payments": 0}
        listed = books.client.get("/invoices", params={"page_size": 200}).json()["invoices"]
        invoice = next(
            i
            for i in listed
            if i["status"] not in ("voided", "canceled", "paid") and i["outstanding_balance"] > 1
        )
        number = invoice["invoice_number"]
        response = books.client.post(
            f"/_sandbox/invoices/{invoice['id']}/payments",
            json={"amount": 1, "payment_method": "cash"},
        )
        assert response.status_code == 201, response.text
        paid, skipped = books.sync()
        assert skipped == {"customers": 0, "invoices": 0, "payments": 0}
        assert sorted(set(ops(paid))) == [("create", "books"), ("update", "books")]
        assert [r for r in books.rows("payments") if r["Invoice #"] == number]
        quiet, skipped = books.sync()
        assert quiet.plan.actions == []
        assert skipped == {"customers": 0, "invoices": 0, "payments": 0}
    finally:
        books.client.close()


HELD_CONFIG = """\
[state]
url = "sqlite:///state.db"

[connectors.hcp]
type = "housecallpro"
base_url = "{base}"
api_key = "${{HCP_API_KEY}}"
rate_limit = 0
max_retries = 1

[connectors.books]
type = "holdpoint"
wraps = "spreadsheet"
path = "books"

[[pipelines]]
name = "hcp-books"
members = ["hcp", "books"]
entities = ["customers"]

[pipelines.conflicts]
default = ["hcp"]

{overrides}"""


@pytest.mark.parametrize("held", ["get", "update"])
def test_a_file_edited_after_the_run_read_it_by_its_mark_is_not_written_over(
    tmp_path: Path, cli: Callable[..., CliResult], held: str
) -> None:
    """The run reads the sheet by its mark (nothing loaded) and is held before it writes
    HCP's edit into it; the bookkeeper saves another edit meanwhile. The run must not write
    over a file it never read: the write is refused, and the next run reads the file whole
    and syncs both edits. Held before the row is looked up (``get``), the file is loaded
    after the edit and found to be another file than its mark named; held before the write
    (``update``), it was loaded before the edit and its save is refused."""
    sandbox = start_sandbox(tmp_path / "sandbox", seed=6)
    try:
        folder = tmp_path / "work"
        folder.mkdir()
        config = folder / "config.toml"
        overrides = mapping_overrides({"books": "spreadsheet"}, ["customers"])
        config.write_text(
            HELD_CONFIG.format(base=sandbox.base_url, overrides=overrides), encoding="utf-8"
        )
        env = {**cli_env(), **plugin_env(tmp_path / "plugin")}
        for _ in range(2):  # the second run stores the mark of the file the first wrote
            assert_clean_exit(cli("sync", "--config", config, env=env), 0)
        sheet = folder / "books" / "customers.csv"
        rows = read_csv_table(sheet).rows
        first, other = rows[0]["Email"], rows[4]["Email"]
        [customer] = [c for c in sandbox.customers() if c.get("email") == first]
        sandbox._client.put(f"/customers/{customer['id']}", json={"company": "From HCP"})

        hold = folder / "hold"
        proc = start_held(
            [str(SYNCENGINE), "sync", "--config", str(config)],
            at=f"books:{held}:customers:1:before",
            hold=hold,
            env=env,
            cwd=folder,
            timeout=CLI_TIMEOUT,
        )
        try:
            table = read_csv_table(sheet)
            [row] = [r for r in table.rows if r["Email"] == other]
            row["Company"] = "Typed Meanwhile"
            write_csv(sheet, table.rows, table.header, newline=table.newline, replace=True)
            (hold / "release").touch()
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1 and "Traceback" not in out + err, (out, err)
        assert "customers.csv" in out + err and "since it was read" in out + err
        assert {r["Email"]: r["Company"] for r in read_csv_table(sheet).rows}[other] == (
            "Typed Meanwhile"
        )

        assert_clean_exit(cli("sync", "--config", config, env=env), 0)
        books = {r["Email"]: r["Company"] for r in read_csv_table(sheet).rows}
        hcp = {c.get("email"): c.get("company") or "" for c in sandbox.customers()}
        assert books[first] == hcp[first] == "From HCP"
        assert books[other] == hcp[other] == "Typed Meanwhile"
        quiet = cli("sync", "--config", config, "--json", env=env)
        assert_clean_exit(quiet, 0)
        assert json.loads(quiet.stdout)["entities"]["customers"]["read"]["books"] == 0
    finally:
        sandbox.stop()


def test_a_file_put_back_after_a_held_delete_is_read_whole(tmp_path: Path) -> None:
    """A customer others may refer to is deleted once every entity is planned (a held
    delete), after the customers' mark was stored: that mark goes first (found by the cold
    review), so the sheet put back byte for byte as it was is read whole, not taken as
    unchanged while its restored row is unknown to the state."""
    books = Books(tmp_path, entities=["customers", "invoices", "payments"], seed=20)
    try:
        books.sync()
        _, skipped = books.sync()
        assert skipped == {"customers": 0, "invoices": 0, "payments": 0}
        path = books.path("customers")
        as_left, times = path.read_bytes(), os.stat(path)
        listed = books.client.get("/invoices", params={"page_size": 200}).json()["invoices"]
        billed = {i["customer_id"] for i in listed}
        customers = books.client.get("/customers", params={"page_size": 200}).json()
        gone = next(c for c in customers["customers"] if c["id"] not in billed and c["email"])
        books.client.delete(f"/customers/{gone['id']}").raise_for_status()
        deleted, _ = books.sync()
        assert ("delete", "books") in ops(deleted)
        assert gone["email"] not in {r["Email"] for r in books.rows("customers")}

        path.write_bytes(as_left)
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
        restored, skipped = books.sync(dry_run=True)
        assert "customers" not in skipped, skipped
        assert ("create", "hcp") in ops(restored)
    finally:
        books.client.close()


def test_an_invoices_file_written_again_after_its_mark_was_stored_is_read_whole(
    tmp_path: Path,
) -> None:
    """A line edited in the sheet reaches HCP, which totals the invoice again; the same run
    syncs that invoice again and writes its new totals to invoices.csv, after the invoices'
    mark was stored. That mark goes first, so invoices.csv put back as it was before the run
    is read whole."""
    books = Books(tmp_path, entities=["customers", "invoices", "payments", "line_items"], seed=16)
    try:
        books.sync()
        _, skipped = books.sync()
        assert skipped.get("invoices") == 0, skipped
        invoices = books.path("invoices")
        as_left, times = invoices.read_bytes(), os.stat(invoices)
        table = read_csv_table(books.path("line_items"))
        listed = books.client.get("/invoices", params={"page_size": 200}).json()["invoices"]
        open_numbers = {
            i["invoice_number"] for i in listed if i["status"] not in ("voided", "canceled")
        }
        row = next(r for r in table.rows if str(r["Invoice #"]) in open_numbers)
        row["Quantity"] = str(float(row["Quantity"].replace(",", "")) + 1.25)
        write_csv(books.path("line_items"), table.rows, table.header, newline=table.newline)
        totalled, _ = books.sync()
        assert ("update", "hcp") in ops(totalled) and ("update", "books") in ops(totalled)
        assert invoices.read_bytes() != as_left  # the new totals

        invoices.write_bytes(as_left)
        os.utime(invoices, ns=(times.st_atime_ns, times.st_mtime_ns))
        _, skipped = books.sync(dry_run=True)
        assert "invoices" not in skipped, skipped
    finally:
        books.client.close()
