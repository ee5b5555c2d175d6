"""The statements every run sends, built once at import with bound parameters (a run's lease,
its row at the start and the end, the journal's pruning, the webhook events it takes, the open
conflicts, the records and links of the keys it plans), on SQLite and PostgreSQL: each
returns or changes exactly what it did when it was built for each call, and is sent as the
one statement built at import."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.state import StateStore
from syncengine.state import inbox as state_inbox
from syncengine.state import leases as state_leases
from syncengine.state import store as state_store

P, E = "p", "customers"


@pytest.fixture
def sent() -> Iterator[list[Any]]:
    """The statements SQLAlchemy compiled and sent, as the objects they were built as."""
    statements: list[Any] = []

    def seen(conn: Any, cursor: Any, text: str, params: Any, context: Any, many: Any) -> None:
        if context is not None and context.compiled is not None:
            statements.append(context.compiled.statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    yield statements
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)


def test_a_runs_row_is_started_and_finished_with_its_values(
    either_store: StateStore, sent: list[Any]
) -> None:
    store = either_store
    with store.transaction() as tx:
        other = tx.start_run("other", False, "u0")
        run = tx.start_run(P, True, "u1")
    assert sent[-1] is state_store._START_RUN
    with store.transaction() as tx:
        tx.finish_run(run, "ok", {"customers": {"read": 3}}, [{"error": "é"}])
    assert any(s is state_store._FINISH_RUN for s in sent)
    [row] = store.runs(P)
    assert (row.id, row.run_uuid, row.pipeline, row.dry_run) == (run, "u1", P, True)
    assert row.outcome == "ok" and row.finished_at is not None
    assert row.finished_at >= row.started_at
    assert row.counts == {"customers": {"read": 3}} and row.errors == [{"error": "é"}]
    [untouched] = store.runs("other")
    assert untouched.id == other and untouched.finished_at is None and untouched.counts == {}
    with pytest.raises(state_store.StateError, match="does not exist"), store.transaction() as tx:
        tx.finish_run(run + 100, "ok", {}, [])


def test_the_journal_keeps_what_is_pending_new_or_of_another_pipeline(
    either_store: StateStore, sent: list[Any]
) -> None:
    store = either_store
    rows = [
        {"run_id": "r", "pipeline": p, "entity": E, "key": f"k{n}", "member": "m", "op": "create",
         "payload": {}}
        for p in (P, "other")
        for n in range(3)
    ]  # fmt: skip
    with store.transaction() as tx:
        ids = tx.add_intents(rows)
        tx.finish_intents(
            [{"id": i, "state": "done"} for i in ids[:2]] + [{"id": ids[3], "state": "failed"}]
        )
    with store.transaction() as tx:
        assert tx.prune_journal(P, datetime.now(UTC) - timedelta(days=1)) == 0
        assert tx.prune_journal(P, datetime.now(UTC) + timedelta(seconds=1)) == 2
    assert sent[-1] is state_store._PRUNE_JOURNAL
    # the pending one of P, and every one of the other pipeline, stay
    assert [i.key for i in store.pending_intents(P)] == ["k2"]
    assert [i.key for i in store.pending_intents("other")] == ["k1", "k2"]


def test_the_records_and_links_of_some_keys(either_store: StateStore, sent: list[Any]) -> None:
    store = either_store
    with store.transaction() as tx:
        # the same keys and members in another entity and another pipeline, with values of
        # their own: a statement that lost a filter would mix them in
        for pipeline, entity in ((P, E), (P, "invoices"), ("other", E)):
            for n in range(4):
                tx.put_record(pipeline, entity, f"k{n}", {"n": n, "of": f"{pipeline}/{entity}"})
                tx.put_link(pipeline, entity, f"k{n}", "a", native_id=f"{entity}{n}",
                            native_hash=pipeline, last_seen={"of": f"{pipeline}/{entity}"},
                            dirty=(pipeline, entity, n) == (P, E, 1))  # fmt: skip
            tx.put_link(pipeline, entity, "k3", "c", native_id="c3", native_hash="h",
                        last_seen=None)  # fmt: skip
        tx.put_link(P, E, "k2", "b", native_id=None, native_hash=None, last_seen=None,
                    tombstone=True)  # fmt: skip
    sent.clear()
    found = store.load_records(P, E, ["k2", "k1", "missing", "k1"])
    assert [s for s in sent if s is state_store._RECORDS_OF_KEYS]
    assert [s for s in sent if s is state_store._LINKS_OF_KEYS]
    assert sorted(found) == ["k1", "k2"]
    assert found["k1"].base == {"n": 1, "of": f"{P}/{E}"}
    assert sorted(found["k1"].links) == ["a"] and found["k1"].links["a"].dirty
    link = found["k1"].links["a"]
    assert (link.native_id, link.native_hash, link.last_seen) == (f"{E}1", P, {"of": f"{P}/{E}"})
    assert sorted(found["k2"].links) == ["a", "b"] and found["k2"].links["b"].tombstone
    assert not found["k2"].links["a"].dirty and found["k2"].links["a"].native_id == f"{E}2"
    assert store.load_records(P, E, []) == {}
    [k3] = store.load_records(P, "invoices", ["k3"]).values()
    assert {m: x.native_id for m, x in k3.links.items()} == {"a": "invoices3", "c": "c3"}
    assert store.load_bases(P, "invoices", ["k3", "k9"]) == {"k3": {"n": 3, "of": f"{P}/invoices"}}


def test_the_open_conflicts_of_a_pipeline(either_store: StateStore, sent: list[Any]) -> None:
    store = either_store
    with store.transaction() as tx:
        first = tx.add_conflict(P, E, "k1", "email", {"a": "x", "b": "y"}, "z")
        tx.add_conflict(P, "invoices", "k2", "total", {"a": 1, "b": 2}, 0)
        tx.add_conflict("other", E, "k1", "email", {"a": "other", "b": "pipeline"}, "z")
        tx.add_conflict("other", E, "k9", "phone", {"a": "other", "b": "pipeline"}, "z")
        tx.add_conflict(P, "invoices", "k1", "email", {"a": "another", "b": "entity"}, "z")
        closed = tx.add_conflict(P, E, "k3", "phone", {"a": "1", "b": "2"}, None)
        tx.resolve_conflict(closed, {"winner": "a"})
    sent.clear()
    rows = store.open_conflicts(P)
    assert sent == [state_store._OPEN_CONFLICTS_OF_PIPELINE]
    assert [(r.entity, r.key, r.field) for r in rows] == [
        (E, "k1", "email"),
        ("invoices", "k2", "total"),
        ("invoices", "k1", "email"),
    ]
    assert rows[0].id == first and rows[0].values == {"a": "x", "b": "y"}
    assert rows == [r for r in store.open_conflicts() if r.pipeline == P]
    assert store.open_conflicts(P, E) == rows[:1]
    sent.clear()
    assert store.open_conflict_fields(P, E) == {"k1": {"email": {"a": "x", "b": "y"}}}
    assert sent == [state_store._OPEN_CONFLICTS]


def test_a_pipelines_lease(either_store: StateStore, sent: list[Any]) -> None:
    store = either_store
    assert store.live_lease(P) is None
    with store.transaction() as tx:
        assert tx.acquire_lease(P, "me", 60.0, "sync")
        assert tx.acquire_lease("other", "you", 60.0)
    sent.clear()
    lease = store.live_lease(P)
    assert lease is not None and (lease.pipeline, lease.holder, lease.kind) == (P, "me", "sync")
    assert any(s is state_leases._LEASE_OF for s in sent)
    with store.transaction() as tx:
        assert tx.release_lease(P, "me")
    assert store.live_lease(P) is None
    other = store.live_lease("other")
    assert other is not None and other.holder == "you"


def test_the_webhook_events_no_run_of_a_pipeline_took(
    either_store: StateStore, sent: list[Any]
) -> None:
    store = either_store
    ids = []
    for n, connector in enumerate(["hcp", "crm", "hcp", "hcp", "books"]):
        with store.transaction() as tx:
            event_id = tx.store_event(
                connector=connector,
                digest=f"d{n}",
                event="customer.updated",
                entities=[E],
                record_id=f"c{n}",
                payload={"n": n},
                occurred_at=None,
            )
        assert event_id is not None
        ids.append(event_id)
    with store.transaction() as tx:
        tx.events_done(P, [ids[0]], "run-1")
        tx.events_done("other", [ids[2]], "run-2")
    sent.clear()
    pending = store.pending_events(P, ["hcp", "crm", "hcp"])
    assert sent == [state_inbox._PENDING]
    assert [e.id for e in pending] == [ids[1], ids[2], ids[3]]
    assert [e.payload for e in pending] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [e.id for e in store.pending_events(P, ["hcp"], limit=1)] == [ids[2]]
    assert [e.id for e in store.pending_events("other", ["hcp"])] == [ids[0], ids[3]]
    assert store.pending_events(P, []) == []
