"""An applied entity's plan is cut down before the next entity runs (``EntityPlan.compact``).

A real run keeps, per entity, the records whose delete waits and the first ``DETAILS_KEPT``
records it changed (for ``--verbose``); the counts, the report and the deletes decided at the
run's end still see every record. Memory members; ``DETAILS_KEPT`` is lowered so that a few
records are more than it keeps."""

from __future__ import annotations

import gc
import sys
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from syncengine import api, plan
from syncengine.apply import EntityApply
from syncengine.connectors.memory import MemoryConnector
from syncengine.engine import Engine
from syncengine.render import render_result
from tests.helpers import ACCOUNTING, hcp_books_config, memory_config

ENTITIES = ACCOUNTING
CUSTOMERS = 12


def _config(tmp_path: Path) -> Any:
    return hcp_books_config(tmp_path)


def _seed(hcp: Any) -> None:
    for n in range(CUSTOMERS):
        hcp.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
        hcp.put(
            "invoices",
            f"i{n}",
            {
                "invoice_number": str(1000 + n),
                "customer": f"c{n}",
                "amount": 100 * (n + 1),
                "balance": 0,
                "status": "paid",
            },
        )
        hcp.put(
            "payments",
            f"p{n}",
            {"invoice": f"i{n}", "amount": 100 * (n + 1), "method": "cash", "status": "succeeded"},
        )


def _sync(config: Any) -> Any:
    [result] = api.sync(config)
    return result


def _first_sync(tmp_path: Path, kept: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(plan, "DETAILS_KEPT", kept)
    tmp_path.mkdir(exist_ok=True)
    config = _config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    return _sync(config)


@pytest.mark.whole_first_sync
def test_a_compacted_run_counts_and_reports_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _first_sync(tmp_path / "whole", 10_000, monkeypatch)
    MemoryConnector.reset()
    cut = _first_sync(tmp_path / "cut", 3, monkeypatch)
    assert whole.exit_code == cut.exit_code == 0
    assert [ep.compacted for ep in whole.plan.entities] == [None, None, None]
    for ep in cut.plan.entities:
        assert ep.compacted is not None and ep.compacted.changed == CUSTOMERS
        assert ep.compacted.dropped == CUSTOMERS - 3 and len(ep.keys) == 3
    # the counts people, JSON and the run history see are those of the whole plan
    assert cut.to_json()["entities"] == whole.to_json()["entities"]
    assert [ep.counts() for ep in cut.plan.entities] == [ep.counts() for ep in whole.plan.entities]
    console = Console(width=200, record=True)
    render_result(console, cut, verbose=True)
    text = console.export_text()
    assert "customers · and 9 more records, counted above but not listed" in text
    assert text.count("+ create on books") == 3 * 3
    books = MemoryConnector.get_dataset("books")
    assert {e: len(books.table(e)) for e in ENTITIES} == dict.fromkeys(ENTITIES, CUSTOMERS)


@pytest.mark.whole_first_sync
def test_the_customers_plan_is_gone_while_invoices_are_planned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: dict[str, list[weakref.ref[Any]]] = {}
    alive_when_planned: dict[str, int] = {}
    run, plan_entity = EntityApply.run, Engine.plan_entity

    def watch_apply(self: EntityApply, *args: Any, **kwargs: Any) -> bool:
        applied[self.ent.entity] = [weakref.ref(kp) for kp in self.ent.keys]
        return run(self, *args, **kwargs)

    def watch_plan(self: Engine, pipeline: Any, entity: str, *args: Any, **kwargs: Any) -> Any:
        gc.collect()
        alive_when_planned[entity] = sum(
            1 for refs in applied.values() for ref in refs if ref() is not None
        )
        return plan_entity(self, pipeline, entity, *args, **kwargs)

    monkeypatch.setattr(EntityApply, "run", watch_apply)
    monkeypatch.setattr(Engine, "plan_entity", watch_plan)
    result = _first_sync(tmp_path, 3, monkeypatch)
    assert result.exit_code == 0
    assert [len(applied[e]) for e in ENTITIES] == [CUSTOMERS] * 3
    # only the three records kept for the report outlive the entity's apply
    assert alive_when_planned == {"customers": 0, "invoices": 3, "payments": 6}


def test_deletes_decided_at_the_end_see_compacted_plans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _first_sync(tmp_path, 0, monkeypatch)
    assert result.exit_code == 0
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    # HCP deletes two customers with their invoices and payments (a cascade), and a third
    # customer whose invoice stays: that one waits, the other two go in one sync
    for n in (1, 2):
        hcp.remove("customers", f"c{n}")
        hcp.remove("invoices", f"i{n}")
        hcp.remove("payments", f"p{n}")
    hcp.remove("customers", "c3")
    second = _sync(config := _config(tmp_path))
    assert second.exit_code == 0, second.to_json()
    counts = {ep.entity: ep.counts()["books"]["delete"] for ep in second.plan.entities}
    assert counts == {"customers": 2, "invoices": 2, "payments": 2}
    assert second.to_json()["entities"]["customers"]["skipped"] == 1  # c3 waits for i3
    assert len(books.table("customers")) == CUSTOMERS - 2
    assert len(books.table("invoices")) == len(books.table("payments")) == CUSTOMERS - 2
    assert _sync(config).plan.actions == []


def test_a_written_csv_is_dropped_before_the_next_entity_and_read_again_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncengine.connectors.spreadsheet import SpreadsheetConnector

    config = hcp_books_config(tmp_path, {"type": "spreadsheet", "path": "books"})
    hcp = MemoryConnector.get_dataset("hcp")
    _seed(hcp)
    held: dict[str, list[str]] = {}
    made: list[SpreadsheetConnector] = []
    plan_entity, make = Engine.plan_entity, SpreadsheetConnector.__init__

    def watch_make(self: SpreadsheetConnector, *args: Any, **kwargs: Any) -> None:
        make(self, *args, **kwargs)
        made.append(self)

    def watch_plan(self: Engine, pipeline: Any, entity: str, *args: Any, **kwargs: Any) -> Any:
        planned = plan_entity(self, pipeline, entity, *args, **kwargs)
        held[entity] = sorted(made[-1]._work)
        return planned

    monkeypatch.setattr(SpreadsheetConnector, "__init__", watch_make)
    monkeypatch.setattr(Engine, "plan_entity", watch_plan)
    assert _sync(config).exit_code == 0
    # while an entity is planned, the sheets of the entities before it are no longer held
    assert held == {
        "customers": ["customers", "invoices", "payments"],  # all loaded by the structure check
        "invoices": ["invoices", "payments"],
        "payments": ["payments"],
    }
    # a customer HCP deletes with its invoice and payment: the customer's delete is decided
    # at the run's end, after its sheet was dropped, and still reaches it
    for name, native in (("customers", "c4"), ("invoices", "i4"), ("payments", "p4")):
        hcp.remove(name, native)
    second = _sync(config)
    assert second.exit_code == 0, second.to_json()
    rows = (tmp_path / "books" / "customers.csv").read_text().splitlines()
    assert len(rows) == 1 + CUSTOMERS - 1 and not any("ann4@" in r for r in rows)
    assert _sync(config).plan.actions == []


class _Cycle:
    """An object that refers to itself: only the cycle collector frees it."""

    def __init__(self) -> None:
        self.me = self


def _a_sync_leaving_a_cycle(gcs: Any, *, ends: bool = True) -> weakref.ref[_Cycle]:
    """One sync through ``gcs`` that makes a cycle, freezes it as an entity starts, and
    drops it (garbage while frozen); the sync ends unless ``ends`` is False."""
    gcs.enter()
    cycle = _Cycle()
    gcs.settle()
    gone = weakref.ref(cycle)
    del cycle
    if ends:
        gcs.leave()
    return gone


def test_cycles_a_sync_leaves_behind_are_collected_when_the_last_sync_ends() -> None:
    """A sync freezes what the process holds as each entity starts (``SyncCollector.settle``)
    and hands it back when it ends. Cycles that became garbage meanwhile waited in the
    oldest generation for a full pass, which a daemon's next run never let come: its own
    ``settle`` froze them again. A daemon syncing every second grew by about 40 KB a run.
    Now the last sync to end collects them, at most once a minute or every 50 syncs (a pass
    over everything the process holds costs tens of milliseconds), and never more than 10 %
    of the time; while another sync runs, they wait, at most ten minutes."""
    from syncengine.collector import SyncCollector

    gcs = SyncCollector(collect_every=0.0)
    gone = _a_sync_leaving_a_cycle(gcs, ends=False)
    gcs.enter()  # a second sync (another pipeline) starts
    gcs.leave()  # ... and ends while the first still runs: no full pass over its records
    assert gone() is not None
    gcs.leave()
    assert gone() is None, "a cycle left by the sync outlived it"

    # the last pass was less than an hour ago: left for the next pass (or the collector's)
    assert _a_sync_leaving_a_cycle(SyncCollector(collect_every=3600.0))() is not None

    gcs = SyncCollector(collect_every=3600.0, syncs=2)  # ... but a loop of quick syncs
    _a_sync_leaving_a_cycle(gcs)
    gone = _a_sync_leaving_a_cycle(gcs)
    assert gone() is None, "the second sync's cycle outlived the pass due every 2 syncs"

    # a pass waits at least its last one's duration / COLLECT_SHARE (here a billion times)
    gcs = SyncCollector(collect_every=0.0, syncs=1, busy=3600.0, share=1e-9)
    assert _a_sync_leaving_a_cycle(gcs)() is None  # the first pass: its cost is not known
    assert _a_sync_leaving_a_cycle(gcs)() is not None, "a pass came before its share allowed"
    gcs = SyncCollector(collect_every=0.0, syncs=1, busy=0.0, share=1e-9)  # ... at most busy
    _a_sync_leaving_a_cycle(gcs)
    assert _a_sync_leaving_a_cycle(gcs)() is None, "a slow pass put the next off for too long"

    gcs = SyncCollector(collect_every=0.0, busy=0.0)  # syncs that always overlap
    gcs.enter()  # a long first sync
    gcs.settle()
    gone = _a_sync_leaving_a_cycle(gcs)  # a pipeline syncing every second beside it
    assert gone() is None, "a cycle outlived the pass due while other syncs run"
    gcs.leave()
    gc.collect()


@pytest.mark.whole_first_sync
def test_a_growing_plan_is_frozen_while_planned_and_applied_and_handed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector need not walk a plan again and again while it grows: what a sync holds
    is frozen every ``SETTLE_EVERY`` records read and keys planned, and as each batch is
    applied, and all of it is handed back when the sync ends. Outside a sync nothing is
    frozen."""
    from syncengine import collector

    monkeypatch.setattr(collector, "SETTLE_EVERY", 100)
    monkeypatch.setattr(collector.COLLECTOR, "_every_s", 3600.0)  # no pass at the end
    frozen: list[tuple[str, int]] = []
    settle = collector.SyncCollector.settle

    def watched(self: collector.SyncCollector, *, collect: bool = True) -> None:
        settle(self, collect=collect)
        caller = sys._getframe(1).f_code.co_name
        frozen.append((caller, gc.get_freeze_count()))

    monkeypatch.setattr(collector.SyncCollector, "settle", watched)
    crm = MemoryConnector.get_dataset("crm")
    for n in range(450):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
    config = memory_config(tmp_path, {"crm": {}, "books": {}}, batch_size=200)
    assert gc.get_freeze_count() == 0
    assert _sync(config).exit_code == 0
    where = [caller for caller, _count in frozen]
    # as the entity starts; four times while its 450 records are read, and again while
    # they are planned; before each batch is applied
    assert where == ["_sync_entity"] + ["read_member"] * 4 + ["_plan_keys"] * 4 + ["run"] * 3
    counts = [count for _caller, count in frozen]
    assert counts[8] > counts[4] + 450, counts  # the plan, frozen as it was planned
    assert gc.get_freeze_count() == 0, "the sync's end hands everything back"

    collector.SyncCollector().settle()  # no sync runs: no leave() would hand it back
    assert gc.get_freeze_count() == 0


def test_failed_writes_are_not_kept_frozen_until_the_sync_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a sync freezes is not collected before it ends, so it must not freeze garbage:
    the cycles made since the last freeze are collected first, and a failed write keeps its
    error without the frames it was raised through (which refer back to the write). Every
    write of 3,000 records fails here, 200 to a batch: before, each batch's failed writes
    (about 30 objects each) stayed frozen until the end."""
    from syncengine import collector
    from syncengine.state import store as state_store

    found: list[int] = []
    leave = collector.SyncCollector.leave

    def counted(self: collector.SyncCollector) -> None:
        gc.collect()  # the garbage not frozen: the collector's as always
        gc.unfreeze()  # what the sync froze, as its end hands it back
        found.append(gc.collect())
        leave(self)

    monkeypatch.setattr(collector.SyncCollector, "leave", counted)
    crm = MemoryConnector.get_dataset("crm")
    for n in range(3_000):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
    config = memory_config(tmp_path, {"crm": {}, "books": {}}, batch_size=200)
    # as below: the statements compiled for the stores of the tests run before this one on
    # its worker would be evicted during the sync, as garbage
    state_store._driver_statement.cache_clear()
    state_store._driver_select.cache_clear()
    gc.collect()
    extra = {"books": {"fail_write": lambda op, entity, ref: True}}
    [result] = api.sync(config, connector_extra=extra)
    assert result.exit_code != 0
    assert len(result.outcomes[0].failures) == 3_000
    assert found and found[0] < 1_000, f"{found[0]} objects of garbage were kept frozen"


def test_a_freeze_without_a_pass_is_only_for_a_sync_alone_in_its_process() -> None:
    """``settle(collect=False)`` (reading, planning) skips the pass only while no other sync
    runs: another sync's garbage made meanwhile (a daemon runs pipelines side by side) is
    collected first, as before, not frozen until some sync ends."""
    from syncengine.collector import SyncCollector

    gcs = SyncCollector(collect_every=3600.0)
    gc.collect()
    gcs.enter()
    try:
        made = _Cycle()
        gone = weakref.ref(made)
        del made  # garbage, only the collector frees it
        gcs.settle(collect=False)  # alone: frozen as it is
        assert gone() is not None
    finally:
        gcs.leave()
    gc.collect()
    assert gone() is None, "handed back when the sync ends"

    gcs.enter()
    gcs.enter()  # a second sync runs beside the first
    try:
        made = _Cycle()
        gone = weakref.ref(made)
        del made
        gcs.settle(collect=False)
        assert gone() is None, "collected first: another sync runs"
    finally:
        gcs.leave()
        gcs.leave()


@pytest.mark.parametrize("books", ["books", "books.xlsx"])
def test_reading_and_planning_leave_no_garbage_to_freeze(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, books: str
) -> None:
    """Reading and planning freeze what they made without a pass of the collector first
    (``settle(collect=False)``): that is right only while what they make is freed by
    reference counting. A resync of 3,000 customers from a CSV folder or a workbook, with
    rows edited on both sides (conflicts), rows a person copied (one Sync ID twice)
    and records new on both sides, read and planned with a freeze every 100 records: the
    garbage kept frozen until the sync's end stays under a few hundred objects (a cycle per
    record read or planned would be thousands)."""
    from syncengine import collector
    from syncengine.state import store as state_store

    crm = MemoryConnector.get_dataset("crm")
    for n in range(3_000):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
    options = {"type": "spreadsheet", "path": str(tmp_path / books)}
    config = memory_config(tmp_path, {"crm": {}, "books": options})
    [first] = api.sync(config)
    assert first.exit_code == 0

    # edits on both sides, copied rows and new records, so that the resync reads and plans
    # every path: changed, unchanged, conflicting, bad and new
    for n in range(0, 3_000, 3):
        crm.put("customers", f"c{n}", {"first_name": f"Anna {n}", "email": f"ann{n}@example.com"})
    for n in range(3_000, 3_300):
        crm.put("customers", f"c{n}", {"first_name": f"New {n}", "email": f"new{n}@example.com"})
    if books.endswith(".xlsx"):
        import openpyxl

        book = openpyxl.load_workbook(tmp_path / books)
        sheet = book.worksheets[0]
        header = [c.value for c in sheet[1]]
        first_name = header.index("First Name") + 1
        for row in range(2, sheet.max_row + 1, 2):
            sheet.cell(row, first_name).value = f"Edited {row}"
        for row in range(3, sheet.max_row + 1, 50):  # copied rows: one Sync ID twice
            sheet.append([c.value for c in sheet[row]])
        sheet.append(["someone@example.com" if h == "Email" else None for h in header])
        book.save(tmp_path / books)
    else:
        path = tmp_path / books / "customers.csv"
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0].split(",")
        first_name = header.index("First Name")
        for i in range(1, len(lines)):
            cells = lines[i].split(",")
            if i % 2 == 0:
                cells[first_name] = f"Edited {i}"
            lines[i] = ",".join(cells)
        lines += lines[1::50]  # copied rows: one Sync ID twice
        lines.append(",".join("someone@example.com" if c == "Email" else "" for c in header))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    monkeypatch.setattr(collector, "SETTLE_EVERY", 100)
    settled: list[bool] = []
    settle = collector.SyncCollector.settle

    def watched(self: collector.SyncCollector, *, collect: bool = True) -> None:
        settled.append(collect)
        settle(self, collect=collect)

    found: list[int] = []
    kinds: list[list[tuple[str, int]]] = []
    leave = collector.SyncCollector.leave

    def counted(self: collector.SyncCollector) -> None:
        gc.collect()  # the garbage not frozen: the collector's as always
        gc.unfreeze()  # what the sync froze, as its end hands it back
        gc.set_debug(gc.DEBUG_SAVEALL)  # what it was, for the message
        found.append(gc.collect())
        kinds.append(Counter(type(o).__qualname__ for o in gc.garbage).most_common(8))
        gc.set_debug(0)
        gc.garbage.clear()
        leave(self)

    monkeypatch.setattr(collector.SyncCollector, "settle", watched)
    monkeypatch.setattr(collector.SyncCollector, "leave", counted)
    # statements compiled for other tests' stores would be evicted from the cache during
    # the sync, as garbage (a process that opens one store does not churn it)
    state_store._driver_statement.cache_clear()
    state_store._driver_select.cache_clear()
    gc.collect()
    [result] = api.sync(config)
    assert result.plan.entities[0].conflicts, "the resync met conflicts"
    assert result.plan.entities[0].issues, "and rows it cannot take"
    assert settled.count(False) >= 60, "reading and planning froze without a pass"
    assert found and found[0] < 500, f"{found[0]} objects of garbage were kept frozen {kinds}"
