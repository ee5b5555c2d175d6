"""References between entities through the engine, with memory members.

"hcp" plays Housecall Pro (invoices created, never updated; payments read-only) and "books"
a member that takes everything. References are each member's own native ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncengine import api
from syncengine.connectors.memory import MemoryConnector
from tests.helpers import memory_config

ENTITIES = ("customers", "invoices", "payments")


def _config(tmp_path: Path, **hcp: Any) -> Any:
    return memory_config(
        tmp_path,
        {
            "hcp": {
                "entities": list(ENTITIES),
                "only": {"invoices": ["create"], "payments": []},
                **hcp,
            },
            "books": {"entities": list(ENTITIES)},
        },
        entities=ENTITIES,
    )


def _sync(config: Any, *, dry_run: bool = False) -> Any:
    [result] = api.sync(config, dry_run=dry_run)
    return result


def _seed(hcp: Any) -> None:
    hcp.put("customers", "c1", {"first_name": "Ann", "email": "ann@example.com"})
    hcp.put("customers", "c2", {"first_name": "Bob", "email": "bob@example.com"})
    hcp.put(
        "invoices",
        "i1",
        {
            "invoice_number": "1001",
            "customer": "c1",
            "amount": 10000,
            "balance": 2500,
            "status": "sent",
        },
    )
    hcp.put(
        "invoices",
        "i2",
        {"invoice_number": "1002", "customer": "c2", "amount": 500, "balance": 0, "status": "paid"},
    )
    hcp.put(
        "payments", "p1", {"invoice": "i1", "amount": 7500, "method": "cash", "status": "succeeded"}
    )
    hcp.put(
        "payments", "p2", {"invoice": "i2", "amount": 500, "method": "check", "status": "succeeded"}
    )


def _by(table: dict[str, dict[str, Any]], **want: Any) -> tuple[str, dict[str, Any]]:
    found = [(k, v) for k, v in table.items() if all(v.get(f) == x for f, x in want.items())]
    assert len(found) == 1, (want, table)
    return found[0]


def test_references_are_translated_to_each_members_ids(tmp_path: Path) -> None:
    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    _seed(hcp)

    dry = _sync(config, dry_run=True)
    assert dry.exit_code == 0, dry.to_json()
    assert [len(ep.actions) for ep in dry.plan.entities] == [2, 2, 2]
    assert not any(ep.skips for ep in dry.plan.entities), "a dry run sees planned customers"

    first = _sync(config)
    assert first.exit_code == 0, first.to_json()
    ann_id, _ = _by(books.table("customers"), email="ann@example.com")
    inv_id, inv = _by(books.table("invoices"), invoice_number="1001")
    assert inv["customer"] == ann_id  # books' own id of Ann, not hcp's c1
    _pay_id, pay = _by(books.table("payments"), amount=7500)
    assert pay["invoice"] == inv_id

    second = _sync(config)
    assert second.plan.actions == [], [a.describe() for a in second.plan.actions]
    assert second.exit_code == 0


def test_a_payment_recorded_later_arrives_once(tmp_path: Path) -> None:
    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    _seed(hcp)
    _sync(config)
    hcp.put(
        "payments", "p3", {"invoice": "i1", "amount": 2500, "method": "ach", "status": "succeeded"}
    )
    hcp.edit("invoices", "i1", balance=0, status="paid")
    result = _sync(config)
    assert result.exit_code == 0
    counts = {ep.entity: ep.counts()["books"] for ep in result.plan.entities}
    assert counts["payments"]["create"] == 1
    assert counts["invoices"]["update"] == 1
    assert len(books.table("payments")) == 3
    assert _sync(config).plan.actions == []


def test_writes_hcp_cannot_take_are_skipped_and_listed(tmp_path: Path) -> None:
    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    _seed(hcp)
    _sync(config)
    inv_id, _ = _by(books.table("invoices"), invoice_number="1001")
    books.edit("invoices", inv_id, amount=12000)
    books.put(
        "payments",
        "bp",
        {"invoice": inv_id, "amount": 100, "method": "cash", "status": "succeeded"},
    )
    dry = _sync(config, dry_run=True)
    reasons = sorted(s.reason for ep in dry.plan.entities for s in ep.skips)
    assert reasons == ["memory cannot create payments", "memory cannot update invoices"]
    result = _sync(config)
    assert result.exit_code == 0
    [status] = api.status(config)
    assert sorted(s["reason"] for s in status.skipped) == reasons
    # not retried forever: the next run plans nothing and says nothing new
    again = _sync(config)
    assert again.plan.actions == [] and not any(ep.skips for ep in again.plan.entities)
    assert hcp.table("invoices")["i1"]["amount"] == 10000


def test_a_record_whose_reference_is_missing_waits(tmp_path: Path) -> None:
    failing = {"n": 0}

    def fail(op: str, entity: str, ref: str) -> bool:
        return op == "create" and entity == "customers" and failing["n"] == 0

    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    _seed(hcp)
    [first] = api.sync(config, connector_extra={"books": {"fail_write": fail}})
    assert first.exit_code == 1  # the failed creates
    skips = [s for ep in first.plan.entities for s in ep.skips]
    assert {s.kind for s in skips} == {"deferred"}
    assert any("customer is not on books yet" in s.reason for s in skips)
    assert books.table("invoices") == {} and books.table("payments") == {}
    failing["n"] = 1
    second = _sync(config)
    assert second.exit_code == 0, second.to_json()
    assert len(books.table("invoices")) == 2 and len(books.table("payments")) == 2
    assert _sync(config).plan.actions == []


def test_unresolvable_reference_is_a_row_error_and_blocks_nothing_else(tmp_path: Path) -> None:
    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    _seed(hcp)
    _sync(config)
    books.put(
        "payments",
        "orphan",
        {"invoice": "nope", "amount": 1, "method": "cash", "status": "succeeded"},
    )
    hcp.edit("customers", "c2", first_name="Robert")
    result = _sync(config)
    assert result.exit_code == 1
    [issue] = [i for ep in result.plan.entities for i in ep.issues]
    assert "no invoice with that id" in issue.message and issue.member == "books"
    assert _by(books.table("customers"), email="bob@example.com")[1]["first_name"] == "Robert"
    assert "orphan" in books.table("payments")


def test_a_customer_deleted_with_its_invoices_goes_after_them(tmp_path: Path) -> None:
    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    _seed(hcp)
    _sync(config)
    # HCP deletes a customer with its invoice and payment (a cascade)
    hcp.remove("customers", "c2")
    hcp.remove("invoices", "i2")
    hcp.remove("payments", "p2")
    result = _sync(config)
    # deletes are decided after every entity is planned, those referring first: the
    # payment, the invoice nobody refers to any more and the customer go in one sync
    assert [s.reason for ep in result.plan.entities for s in ep.skips] == []
    assert sorted(a.describe() for a in result.plan.actions) == [
        "delete on books",
        "delete on books",
        "delete on books",
    ]
    assert len(books.table("customers")) == 1 and len(books.table("invoices")) == 1
    assert len(books.table("payments")) == len(hcp.table("payments"))
    assert len(hcp.table("customers")) == 1  # nothing is re-created in HCP
    assert _sync(config).plan.actions == []


def test_a_customer_deleted_while_its_invoices_stay_is_restored(tmp_path: Path) -> None:
    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    _seed(hcp)
    _sync(config)
    ann_id, _ = _by(books.table("customers"), email="ann@example.com")
    books.remove("customers", ann_id)  # the bookkeeper deletes Ann; her invoice stays
    first = _sync(config)
    [skip] = [s for ep in first.plan.entities for s in ep.skips]
    assert skip.kind == "deferred"
    assert len(hcp.table("customers")) == 2  # not deleted where invoices refer to it
    second = _sync(config)
    # Ann comes back to books, and books' invoice is pointed at her new id there
    assert [a.describe() for a in second.plan.actions] == ["create on books", "update on books"]
    new_ann, _ = _by(books.table("customers"), email="ann@example.com")
    _inv_id, inv = _by(books.table("invoices"), invoice_number="1001")
    assert new_ann != ann_id and inv["customer"] == new_ann
    assert _sync(config).plan.actions == []


def test_reconcile_report_is_clean_after_a_sync_and_names_disagreements(tmp_path: Path) -> None:
    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    _seed(hcp)
    _sync(config)
    [report] = api.reconcile_report(config)
    assert report.clean, report.to_json()
    assert report.totals()["books"] == {
        "invoices": 2,
        "amount": 10500,
        "paid": 8000,
        "balance": 2500,
    }

    inv_id, _ = _by(books.table("invoices"), invoice_number="1001")
    books.edit("invoices", inv_id, balance=100)  # balance ≠ amount − paid
    pay_id, _ = _by(books.table("payments"), amount=500)
    books.remove("payments", pay_id)  # payment on one side only
    books.put("invoices", "dup", {"invoice_number": "1002", "amount": 1, "status": "open"})
    [report] = api.reconcile_report(config)
    assert report.exit_code == 1
    kinds = {(p.kind, p.member) for line in report.invoices for p in line.problems}
    assert ("balance", "books") in kinds
    assert ("missing", "books") in kinds
    assert ("duplicate", "books") in kinds
    books.put(
        "payments", "new", {"invoice": inv_id, "amount": 5, "method": "cash", "status": "pending"}
    )
    [report] = api.reconcile_report(config)
    assert [p.kind for p in report.general] == ["unlinked"]


@pytest.mark.whole_first_sync
def test_a_stop_request_finishes_the_batch_commits_and_the_next_run_goes_on(tmp_path: Path) -> None:
    import threading

    from syncengine.engine import Engine
    from syncengine.errors import SyncStopped

    config = _config(tmp_path)
    hcp = MemoryConnector.get_dataset("hcp")
    books = MemoryConnector.get_dataset("books")
    for i in range(450):
        hcp.put("customers", f"c{i}", {"first_name": f"N{i}", "email": f"n{i}@example.com"})
    stop = threading.Event()

    def progress(what: str, done: int, total: int | None) -> None:
        if what.startswith("applying") and done >= 200:
            stop.set()  # after the first batch of 200

    [pipeline] = config.pipeline(None)
    store = api.open_store(config)
    try:
        engine = Engine(config, store, progress=progress, stop=stop)
        with pytest.raises(SyncStopped):
            engine.sync(pipeline)
        assert len(books.table("customers")) == 200
        assert store.pending_intents("p") == []
        assert store.runs("p", limit=1)[0].outcome == "stopped"
    finally:
        store.close()
    result = _sync(config)
    assert result.exit_code == 0
    assert len(books.table("customers")) == 450
    assert _sync(config).plan.actions == []


def test_a_manual_sync_refuses_a_pipeline_a_daemon_is_running(tmp_path: Path) -> None:
    from syncengine.errors import PipelineBusyError

    config = _config(tmp_path)
    _seed(MemoryConnector.get_dataset("hcp"))
    store = api.open_store(config)
    try:
        with store.transaction() as tx:
            assert tx.acquire_lease("p", "otherhost:4242:abcd", 60, "daemon")
    finally:
        store.close()
    busy = "pipeline p is busy: a daemon run by pid 4242 on host otherhost, started "
    with pytest.raises(PipelineBusyError, match=busy):
        _sync(config)
    # a dry run's plan would be wrong while another run applies one: refused the same way
    with pytest.raises(PipelineBusyError, match=busy):
        _sync(config, dry_run=True)
    assert MemoryConnector.get_dataset("books").table("customers") == {}
