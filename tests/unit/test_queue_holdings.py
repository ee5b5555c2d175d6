"""A run reads what the review queue and the held deletes hold once, when it starts
(``parked.QueueHoldings``), and leaves out the per-entity statements that could find nothing:
a quiet run of an installation with empty queues sends none of them. Where the queues hold
something, every step runs as before, and what the run itself adds is seen by its later
steps. A delete a person approves while a run applies stays approved for the next run,
which carries it out (it was marked done without being carried out before)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine import api
from syncengine.config import Config
from syncengine.state import StateStore
from syncengine.state import store as store_module
from tests.helpers import ds, memory_config, ops, run

C = "customers"
QUEUES = ("review_items", "held_deletes")


@contextmanager
def queue_statements() -> Iterator[list[str]]:
    """The statements any state store of the process sends that name a queue table, through
    SQLAlchemy or on a connection's own cursor (``StateStore._select``)."""
    seen: list[str] = []

    def note(sql: str) -> None:
        if sql.startswith("SELECT * FROM") and sql.endswith("LIMIT 1"):
            return  # the store's check of every table when it is opened
        if any(table in sql for table in QUEUES):
            seen.append(" ".join(sql.split()))

    def statement(_conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        note(sql)

    select = StateStore._select

    def driver_select(store: StateStore, stmt: Any, params: Any) -> list[Any]:
        if store_module._driver_select(stmt, store.engine.dialect) is not None:
            note(str(stmt.compile(dialect=store.engine.dialect)))
        return select(store, stmt, params)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", statement)
    StateStore._select = driver_select  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        StateStore._select = select  # type: ignore[method-assign]
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", statement)


@pytest.fixture
def held(tmp_path: Path) -> Config:
    return memory_config(tmp_path, {"a": {}, "b": {"assigns_ids": True}}, deletes={"approve": True})


def three(cfg: Config) -> None:
    for i, name in enumerate(("Ann", "Bob", "Cy")):
        ds("a").put(C, f"a{i}", {"first_name": name, "email": f"{name.lower()}@x.com"})
    assert run(cfg).exit_code == 0


def held_rows(cfg: Config) -> dict[str, str]:
    """first name -> the status of its held delete."""
    store = StateStore.open(cfg.state_url, base_dir=str(cfg.base_dir))
    try:
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT label, status FROM held_deletes").all()
    finally:
        store.close()
    return {label.split()[0]: status for label, status in rows}


def test_a_quiet_run_with_empty_queues_reads_them_once_and_writes_nothing_there(
    held: Config,
) -> None:
    three(held)
    with queue_statements() as seen:
        result = run(held)
    assert result.plan.actions == []
    assert len(seen) == 2, seen
    assert all(s.startswith("SELECT") and "pipeline = ?" in s for s in seen), seen


def test_with_a_delete_held_the_next_runs_look_at_it_and_a_quiet_one_changes_nothing(
    held: Config,
) -> None:
    three(held)
    ds("a").table(C).pop("a1")  # Bob deleted on a: held for approval
    assert run(held).plan.actions == []
    assert held_rows(held) == {"Bob": "held"}
    with queue_statements() as seen:
        assert run(held).plan.actions == []
    assert any("status = ?" in s or "held_deletes.status" in s for s in seen[2:]), seen
    assert held_rows(held) == {"Bob": "held"}
    ds("a").put(C, "a1", {"first_name": "Bob", "email": "bob@x.com"})  # typed back
    assert run(held).exit_code == 0
    assert held_rows(held) == {"Bob": "cleared"}  # settled: nothing left to approve


def test_a_delete_approved_while_the_run_applies_is_carried_out_by_the_next_run(
    held: Config,
) -> None:
    """Ann's delete was approved before the run, Bob's while it applied Ann's: the run
    deletes Ann and marks only hers done; Bob's stays approved, and the next run deletes
    him. Before, the run marked both done and Bob stayed on ``b`` for good."""
    three(held)
    ds("a").table(C).pop("a0")
    ds("a").table(C).pop("a1")
    assert run(held).plan.actions == []
    rows = {h.label.split()[0]: h.id for h in api.list_held_deletes(held)}
    api.approve_delete(held, [rows["Ann"]], "tester")

    approved_during: list[str] = []

    def person_approves_bob(op: str, entity: str, _ref: str) -> bool:
        if op == "delete" and not approved_during:
            api.approve_delete(held, [rows["Bob"]], "tester")
            approved_during.append(entity)
        return False  # the write itself goes through

    result = run(held, connector_extra={"b": {"fail_write": person_approves_bob}})
    assert approved_during == [C]
    assert ops(result) == [("delete", "b")]
    assert held_rows(held) == {"Ann": "done", "Bob": "approved"}
    assert sorted(r["first_name"] for r in ds("b").table(C).values()) == ["Bob", "Cy"]

    result = run(held)
    assert ops(result) == [("delete", "b")]
    assert held_rows(held) == {"Ann": "done", "Bob": "done"}
    assert sorted(r["first_name"] for r in ds("b").table(C).values()) == ["Cy"]


def test_an_open_review_item_is_closed_when_its_record_is_gone(tmp_path: Path) -> None:
    """The queue held an open item when the run started: the run closes it, as before."""
    cfg = memory_config(tmp_path, {"a": {}, "b": {"assigns_ids": True}})
    ds("a").put(C, "a1", {"first_name": "Ann", "email": "ann@x.com"})
    ds("a").put(C, "a2", {"first_name": "Ann", "email": "ann@x.com"})
    run(cfg)
    ds("b").put(C, "b9", {"first_name": "Ann", "email": "ann@x.com"})  # matches both
    run(cfg)
    assert [i.native_id for i in api.list_review(cfg) if i.member == "b"] == ["b9"]
    ds("b").table(C).pop("b9")
    with queue_statements() as seen:
        run(cfg)
    assert any(s.startswith("UPDATE review_items") for s in seen), seen
    assert [i for i in api.list_review(cfg) if i.member == "b"] == []


def test_queue_holdings_answer_for_what_was_read_and_what_the_run_noted() -> None:
    from syncengine.parked import QueueHoldings

    unknown = QueueHoldings.unknown()
    assert unknown.reviews(C, "open") and unknown.holds(C, "approved", guarded=True)
    read = QueueHoldings([(C, "linked")], [("invoices", "held", True)])
    assert read.reviews(C, "open", "linked") and not read.reviews(C, "open")
    assert not read.reviews("invoices", "open", "linked", "separate")
    assert read.holds("invoices", "held") and read.holds("invoices", "held", guarded=True)
    assert not read.holds("invoices", "held", guarded=False)
    assert not read.holds(C, "held", "approved")
    read.note_review("invoices")
    assert read.reviews("invoices", "open") and not read.reviews("invoices", "linked")
    read.note_held(C, guarded=False)
    assert read.holds(C, "held") and read.holds(C, "held", "approved", guarded=False)
    assert not read.holds(C, "held", guarded=True) and not read.holds(C, "approved")
