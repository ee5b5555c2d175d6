"""A first sync of a large entity is applied in slices as it is planned (``syncengine.slices``).

The slices must change nothing but memory: every first sync drawn here (customers typed
twice, without e-mail, with invoices and payments, a bookkeeper's rows already in the sheet
matching some of them or not, a record HCP holds in error) is run twice, once whole and once
in slices of one to three records, and must leave the same CSV files, the same HCP records,
the same state and the same counts and messages. Hub keys come from a counter, so that both
runs give the same Sync IDs. Then: the slices really happen (several flushes of the CSV file,
a progress bar that goes on across them), they do not happen where a slice could not be
undone or weighed (a dry run, a workbook, a second sync), and a stop request between slices
ends the run with what was applied committed, the next run finishing it once each.

The whole unit and property suites can also run sliced:
``SYNCENGINE_TEST_FIRST_SLICE=1 pytest tests/unit tests/property`` (``tests/conftest.py``).
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import syncengine.match
from syncengine import api, slices
from syncengine.config import Config
from syncengine.connectors.memory import MemoryConnector, MemoryDataset
from syncengine.connectors.spreadsheet.connector import SpreadsheetConnector
from syncengine.connectors.spreadsheet.csvtable import CsvTable
from syncengine.engine import Engine, SyncResult
from syncengine.errors import FatalConnectorError, SyncStopped
from tests.csvfiles import read_csv, write_csv
from tests.helpers import ACCOUNTING, memory_config

FILES = ("customers.csv", "invoices.csv", "payments.csv")
STATE_TABLES = {
    "records": "pipeline, entity, key, base",
    "links": "pipeline, entity, key, member, native_id, native_hash, last_seen, dirty, tombstone",
    "skips": "pipeline, entity, key, member, reason",
    "conflicts": 'pipeline, entity, key, field, "values", base_value, status',
    "journal": "entity, key, member, op, state",
}
"""What of the state two runs must leave alike (no time, id or run id)."""


def _config(folder: Path, books: str = "books") -> Config:
    return memory_config(
        folder,
        {
            "hcp": {"entities": list(ACCOUNTING), "only": {"invoices": ["create"], "payments": []}},
            "books": {"type": "spreadsheet", "path": str(folder / books)},
        },
        entities=ACCOUNTING,
    )


@st.composite
def first_syncs(draw: st.DrawFn) -> dict[str, Any]:
    """HCP's records and the rows a bookkeeper typed before the first sync."""
    n = draw(st.integers(0, 8))
    emails = draw(
        st.lists(st.sampled_from(["a@x.com", "b@x.com", "c@x.com", None]), min_size=n, max_size=n)
    )
    customers = {
        f"c{i}": {"first_name": f"Ann {i}", "last_name": "Lee", "email": email}
        for i, email in enumerate(emails)
    }
    invoices: dict[str, dict[str, Any]] = {}
    payments: dict[str, dict[str, Any]] = {}
    for i in range(n):
        for j in range(draw(st.integers(0, 2))):
            number = f"{1000 + 10 * i + j}"
            # a reference to a customer HCP does not hold: a record in error
            customer = f"c{i}" if draw(st.integers(0, 9)) else "c-gone"
            invoices[f"i{i}{j}"] = {
                "invoice_number": number,
                "customer": customer,
                "amount": 100 * (i + 1) + j,
                "balance": 0,
                "status": "paid",
            }
            if draw(st.booleans()):
                payments[f"p{i}{j}"] = {
                    "invoice": f"i{i}{j}",
                    "amount": 100 * (i + 1) + j,
                    "method": "cash",
                    "status": "succeeded",
                }
    typed = draw(st.lists(st.sampled_from(["a@x.com", "d@x.com", ""]), max_size=3))
    rows = [
        {"Sync ID": "", "First Name": f"Bo {k}", "Last Name": "Ray", "Email": email}
        for k, email in enumerate(typed)
    ]
    return {"customers": customers, "invoices": invoices, "payments": payments, "rows": rows}


def _run(folder: Path, drawn: dict[str, Any], first_slice: int) -> dict[str, Any]:
    """Seed, sync once with slices of ``first_slice`` records, and say what it left."""
    MemoryConnector.reset()
    folder.mkdir()
    (folder / "books").mkdir()
    if drawn["rows"]:
        header = ["Sync ID", "First Name", "Last Name", "Email"]
        write_csv(folder / "books" / "customers.csv", drawn["rows"], header)
    hcp = MemoryConnector.get_dataset("hcp")
    counter = itertools.count(1)
    with (
        mock.patch.object(MemoryDataset, "_tick", 0),  # HCP's update times, from the start
        mock.patch.object(syncengine.match, "new_key", lambda: f"k{next(counter):04d}"),
        mock.patch.object(slices, "FIRST_SLICE", first_slice),
    ):
        for entity in ACCOUNTING:
            for native_id, record in drawn[entity].items():
                hcp.put(entity, native_id, dict(record))
        [result] = api.sync(_config(folder))
    state = sqlite3.connect(folder / "state.db")
    try:
        tables = {
            name: sorted(map(repr, state.execute(f"SELECT {columns} FROM {name}")))
            for name, columns in STATE_TABLES.items()
        }
    finally:
        state.close()
    return {
        "exit": result.exit_code,
        "counts": [o.counts(dry_run=False) for o in result.outcomes],
        "issues": [i.describe() for o in result.outcomes for i in (o.plan.issues + o.failures)],
        "notes": [o.plan.notes for o in result.outcomes],
        "files": {
            name: (folder / "books" / name).read_bytes()
            for name in FILES
            if (folder / "books" / name).exists()
        },
        "hcp": {e: sorted(map(repr, hcp.table(e).items())) for e in ACCOUNTING},
        "state": tables,
    }


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(drawn=first_syncs(), first_slice=st.integers(1, 3))
def test_a_first_sync_in_slices_leaves_what_a_whole_one_leaves(
    tmp_path_factory: pytest.TempPathFactory, drawn: dict[str, Any], first_slice: int
) -> None:
    base = tmp_path_factory.mktemp("first-sync")
    whole = _run(base / "whole", drawn, 1_000_000)
    sliced = _run(base / "sliced", drawn, first_slice)
    assert sliced == whole


def _customers(n: int) -> None:
    hcp = MemoryConnector.get_dataset("hcp")
    for i in range(n):
        hcp.put("customers", f"c{i}", {"first_name": f"N{i}", "email": f"n{i}@example.com"})


def _csv_books(tmp_path: Path, customers: int) -> Config:
    """HCP's first ``customers`` customers, and a folder of CSV files yet to be written."""
    _customers(customers)
    (tmp_path / "books").mkdir()
    return _config(tmp_path)


def _sync_with_bar(config: Config) -> tuple[SyncResult, list[tuple[int, int | None]]]:
    """One sync of the config's pipeline, and (done, total) of each report of the step
    "applying customers"."""
    bar: list[tuple[int, int | None]] = []

    def progress(what: str, done: int, total: int | None) -> None:
        if what == "applying customers":
            bar.append((done, total))

    [pipeline] = config.pipeline(None)
    store = api.open_store(config)
    try:
        return Engine(config, store, progress=progress).sync(pipeline), bar
    finally:
        store.close()


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The size of each slice applied, as the engine applies them."""
    sizes: list[int] = []
    apply = slices.Slices.apply

    def counting(self: slices.Slices, ent: Any, **kwargs: Any) -> None:
        sizes.append(len(ent.after_compaction()))
        apply(self, ent, **kwargs)

    monkeypatch.setattr(slices.Slices, "apply", counting)
    monkeypatch.setattr(slices, "FIRST_SLICE", 4)
    yield sizes


def test_a_large_first_sync_is_written_slice_by_slice_with_one_progress_bar(
    tmp_path: Path, applied: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _csv_books(tmp_path, 30)
    flushed: list[int] = []  # the rows of customers.csv after each of its flushes
    parked: list[int] = []  # and the rows of its working copy waiting on disk then
    save = SpreadsheetConnector.flush

    def counting(self: Any, entity: str) -> None:
        save(self, entity)
        if entity == "customers":
            flushed.append(len(read_csv(tmp_path / "books" / "customers.csv")))
            parked.append(self._work["customers"].rows.parked)

    monkeypatch.setattr(SpreadsheetConnector, "flush", counting)
    result, bar = _sync_with_bar(config)
    assert result.exit_code == 0
    # slices of 4, then a quarter of what is applied: 4, 4, 4, 4, 4, 5, and the 5 left
    assert applied == [4, 4, 4, 4, 4, 5, 5]
    assert flushed == [4, 8, 12, 16, 20, 25, 30]
    # every row saved waits on disk, not in memory, while the next slices are planned
    assert parked == flushed
    assert {total for _done, total in bar} == {30}
    assert [done for done, _total in bar] == sorted(done for done, _total in bar)
    assert bar[-1] == (30, 30)
    assert result.outcomes[0].counts(dry_run=False)["books"]["create"] == 30
    rows = read_csv(tmp_path / "books" / "customers.csv")
    assert sorted(r["Email"] for r in rows) == sorted(f"n{i}@example.com" for i in range(30))
    [again] = api.sync(config)
    assert again.exit_code == 0 and again.plan.actions == []


def test_the_bar_of_a_sliced_first_sync_ends_at_what_it_wrote(
    tmp_path: Path, applied: list[int]
) -> None:
    """Records planned that need no write (a tag holding the books' list separator: reported,
    left alone) are in the bar's total until the last slice, which knows what was written:
    the bar ends full, not short of them."""
    config = _csv_books(tmp_path, 28)
    hcp = MemoryConnector.get_dataset("hcp")
    for i in (28, 29):
        hcp.put(
            "customers", f"c{i}", {"first_name": f"N{i}", "email": f"n{i}@x.com", "tags": ["a,b"]}
        )
    result, bar = _sync_with_bar(config)
    assert len(applied) > 2 and sum(applied) == 28
    issues = [i for ep in result.plan.entities for i in ep.issues]
    assert len(issues) == 2 and all("separator" in i.message for i in issues)
    assert bar[0] == (0, 30) and bar[-1] == (28, 28)
    assert len(read_csv(tmp_path / "books" / "customers.csv")) == 28


def test_no_slices_where_a_slice_could_not_be_taken_back_or_weighed(
    tmp_path: Path, applied: list[int]
) -> None:
    config = _csv_books(tmp_path, 30)
    [dry] = api.sync(config, dry_run=True)
    assert dry.exit_code == 0 and applied == []  # a dry run writes nothing
    [first] = api.sync(config)
    assert first.exit_code == 0 and applied != []
    applied.clear()
    _customers(40)  # ten more: the hub holds the entity now
    [second] = api.sync(config)
    assert second.exit_code == 0 and applied == []
    assert second.outcomes[0].counts(dry_run=False)["books"]["create"] == 10


def test_a_workbook_saved_whole_is_flushed_once(tmp_path: Path, applied: list[int]) -> None:
    _customers(30)
    config = _config(tmp_path, books="books.xlsx")
    [result] = api.sync(config)
    assert result.exit_code == 0 and applied == []
    assert result.outcomes[0].counts(dry_run=False)["books"]["create"] == 30


def test_a_stop_between_slices_commits_what_was_applied_and_the_next_run_ends_it(
    tmp_path: Path, applied: list[int]
) -> None:
    config = _csv_books(tmp_path, 30)
    stop = threading.Event()

    def progress(what: str, done: int, total: int | None) -> None:
        if what == "applying customers" and done >= 10:
            stop.set()

    [pipeline] = config.pipeline(None)
    store = api.open_store(config)
    try:
        with pytest.raises(SyncStopped):
            Engine(config, store, progress=progress, stop=stop).sync(pipeline)
        assert store.pending_intents("p") == []
        [run] = store.runs("p", limit=1)
        # the run's history says what the slices before the stop wrote
        assert run.outcome == "stopped" and run.counts["customers"]["books"]["create"] == 12
    finally:
        store.close()
    # the slice the stop came in was finished: 4, 4, then 4 of which the tenth set it
    assert len(read_csv(tmp_path / "books" / "customers.csv")) == 12
    [result] = api.sync(config)
    assert result.exit_code == 0
    assert result.outcomes[0].counts(dry_run=False)["books"]["create"] == 18
    rows = read_csv(tmp_path / "books" / "customers.csv")
    assert sorted(r["Email"] for r in rows) == sorted(f"n{i}@example.com" for i in range(30))


def test_a_save_failing_in_one_slice_writes_none_of_the_later_ones(
    tmp_path: Path, applied: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save that fails (a disk full, a file made read-only) fails every write of the
    entity that waits for it, as it does for a whole plan: the later slices are not written
    either, so the file never holds rows the state records as failed (the next run writes
    them)."""
    config = _csv_books(tmp_path, 12)
    save = CsvTable.save
    failures = iter([FatalConnectorError("disk full", connector="books")])

    def failing_once(self: CsvTable, sheet: Any) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        save(self, sheet)

    monkeypatch.setattr(CsvTable, "save", failing_once)
    [first] = api.sync(config)
    assert first.exit_code != 0 and applied == [4, 4, 4]
    assert first.outcomes[0].counts(dry_run=False)["books"]["create"] == 0
    failed = [i.describe() for i in first.outcomes[0].failures]
    assert sum("create failed" in f for f in failed) == 12, failed
    assert not (tmp_path / "books" / "customers.csv").exists()
    [second] = api.sync(config)
    assert second.exit_code == 0
    assert second.outcomes[0].counts(dry_run=False)["books"]["create"] == 12
    assert len(read_csv(tmp_path / "books" / "customers.csv")) == 12
