"""The state store's small reads every run makes per entity and member (links, read and
mapping marks, dirty keys) run on a pooled connection's own cursor: they must return what
SQLAlchemy's execution of the same statement returns, see the caller's open transaction,
take SQLAlchemy's way for a statement whose values need converting, and fail as every other
read fails, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.errors import StateError, StateUnavailableError
from syncengine.state import StateStore, queues
from syncengine.state import store as store_module
from syncengine.state.schema import journal, links

P, E = "p", "customers"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    url = (
        f"sqlite:///{tmp_path / 'state.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    with StateStore.open(url) as opened:
        yield opened


def fill(store: StateStore) -> None:
    """Links of every kind the reads tell apart: live, tombstoned, without a native id,
    dirty, of another member, entity and pipeline; and the marks."""
    rows = []
    for i in range(30):
        for pipeline, entity, member in ((P, E, "hcp"), (P, E, "books"), (P, "invoices", "hcp")):
            rows.append(
                {
                    "pipeline": pipeline,
                    "entity": entity,
                    "key": f"k{i}",
                    "member": member,
                    "native_id": None if i % 7 == 0 else f"{member}-{i} ✓",
                    "native_hash": None if i % 5 == 0 else f"h{i}",
                    "last_seen": None,
                    "dirty": i % 3 == 0,
                    "tombstone": i % 4 == 0,
                }
            )
    rows += [{**r, "pipeline": "other"} for r in rows[:10]]
    keys = {(r["pipeline"], r["entity"], r["key"]) for r in rows}
    with store.transaction() as tx:
        tx.put_records([{"pipeline": p, "entity": e, "key": k, "base": {}} for p, e, k in keys])
        tx.put_links(rows)
        tx.put_read_mark(P, E, "hcp", "token: ünïcode")
        tx.put_mapping_mark(P, E, "hcp", "fingerprint-1")


def through_sqlalchemy(store: StateStore, stmt: sa.Select[Any], params: dict[str, Any]) -> list:
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(stmt, params)]


def test_each_read_returns_what_sqlalchemy_returns(store: StateStore) -> None:
    fill(store)
    where = {"pipeline": P, "entity": E, "member": "hcp"}
    expected = through_sqlalchemy(store, store_module._LINK_INDEX, where)
    assert store.link_index(P, E, "hcp") == {nid: (key, h) for nid, key, h in expected}
    assert len(store.link_index(P, E, "hcp")) == 19  # neither tombstoned nor without an id
    dirty = through_sqlalchemy(store, store_module._DIRTY_KEYS, {"pipeline": P, "entity": E})
    assert store.dirty_keys(P, E) == {key for (key,) in dirty} and len(dirty) == 10
    assert store.read_mark(P, E, "hcp") == "token: ünïcode"
    assert store.mapping_mark(P, E, "hcp") == "fingerprint-1"
    assert store.read_mark(P, E, "books") is None
    assert store.mapping_mark(P, "invoices", "hcp") is None
    assert store.link_index("nobody", E, "hcp") == {}


def test_a_link_whose_native_id_is_its_key_holds_one_text_for_both(store: StateStore) -> None:
    """A sheet's rows carry our keys as their Sync IDs: its link index, read by every run
    that reads the sheet, keeps one string per link, not two equal ones."""
    key = "0191f5a3c2b04e7d9a1b2c3d4e5f6a7b"
    with store.transaction() as tx:
        tx.put_records([{"pipeline": P, "entity": E, "key": k, "base": {}} for k in (key, "k2")])
        for k, nid in ((key, key), ("k2", "row-7")):
            tx.put_link(P, E, k, "books", native_id=nid, native_hash=None, last_seen=None)
    index = store.link_index(P, E, "books")
    assert index == {key: (key, None), "row-7": ("k2", None)}
    ((nid, (same, _)),) = [(n, v) for n, v in index.items() if n == key]
    assert same is nid


def test_the_reads_go_to_the_driver_and_each_is_compiled_once(store: StateStore) -> None:
    """Every run makes them: none goes through SQLAlchemy's execution, and what is compiled
    is kept (a statement SQLAlchemy would see would count here)."""
    fill(store)
    seen: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    store_module._driver_select.cache_clear()
    for _ in range(3):
        store.link_index(P, E, "hcp")
        store.read_mark(P, E, "hcp")
        store.mapping_mark(P, E, "hcp")
        store.dirty_keys(P, E)
    assert seen == []
    info = store_module._driver_select.cache_info()
    assert (info.misses, info.hits) == (4, 8)


def test_inside_a_transaction_a_read_sees_its_writes(store: StateStore) -> None:
    with store.transaction() as tx:
        tx.put_read_mark(P, E, "hcp", "new")
        tx.put_record(P, E, "k", {})
        tx.put_links(
            [
                {
                    "pipeline": P,
                    "entity": E,
                    "key": "k",
                    "member": "hcp",
                    "native_id": "n1",
                    "native_hash": "h",
                    "last_seen": None,
                    "dirty": True,
                    "tombstone": False,
                }
            ]
        )
        assert store.read_mark(P, E, "hcp") == "new"
        assert store.link_index(P, E, "hcp") == {"n1": ("k", "h")}
        assert store.dirty_keys(P, E) == {"k"}
    assert store.read_mark(P, E, "hcp") == "new"


def test_a_statement_whose_values_need_converting_takes_sqlalchemys_way(
    store: StateStore,
) -> None:
    """A timestamp column, a parameter with a value of its own, or (on SQLite, whose driver
    gives JSON as text) a JSON column, is read as SQLAlchemy reads it."""
    dialect = store.engine.dialect
    assert store_module._driver_select(sa.select(journal.c.created_at), dialect) is None
    assert (
        store_module._driver_select(sa.select(links.c.key).where(links.c.member == "x"), dialect)
        is None
    )
    if dialect.name == "sqlite":
        assert store_module._driver_select(sa.select(journal.c.payload), dialect) is None
    with store.transaction() as tx:
        [intent] = tx.add_intents(
            [
                {
                    "run_id": "r",
                    "pipeline": P,
                    "entity": E,
                    "key": "k",
                    "member": "hcp",
                    "op": "create",
                    "payload": {"name": "Ann ✓", "n": 2**70, "x": 0.1},
                    "holder": None,
                }
            ]
        )
    stmt = sa.select(journal.c.payload).where(journal.c.id == sa.bindparam("id"))
    expected = through_sqlalchemy(store, stmt, {"id": intent})
    assert expected == [({"name": "Ann ✓", "n": 2**70, "x": 0.1},)]
    assert store._select(stmt, {"id": intent}) == expected


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_a_damaged_sqlite_file_fails_a_driver_read_as_any_read_fails(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "state.db"
    with StateStore.open(f"sqlite:///{path}") as store:
        fill(store)
        store.engine.dispose()  # no pooled connection keeps the old pages
        data = bytearray(path.read_bytes())
        if damage == "garbage":
            data[:] = bytes(range(256)) * (len(data) // 256)
        else:  # the header is fine, the pages after it are not
            for page in range(1, len(data) // 4096):
                data[page * 4096 + 8 : page * 4096 + 200] = b"\xff" * 192
        path.write_bytes(bytes(data))
        for read in (
            lambda: store.link_index(P, E, "hcp"),
            lambda: store.dirty_keys(P, E),
            lambda: store.read_mark(P, E, "hcp"),
        ):
            with pytest.raises(StateUnavailableError, match=r"read failed.*damaged"):
                read()


def test_a_connection_the_server_closed_is_replaced_before_a_driver_read(pg_url: str) -> None:
    """On PostgreSQL, a pooled connection the server closed is not used for a read: the pool
    checks it first, as it does for SQLAlchemy's own reads."""
    with StateStore.open(pg_url) as store:
        fill(store)
        assert store.read_mark(P, E, "hcp") == "token: ünïcode"
        with store.engine.connect() as conn:
            pids = conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ).scalars()
            for pid in list(pids):
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        assert store.read_mark(P, E, "hcp") == "token: ünïcode"
        assert len(store.link_index(P, E, "hcp")) == 19


def test_a_driver_read_that_fails_raises_the_stores_error_and_the_next_read_works(
    store: StateStore,
) -> None:
    """The failed read's connection is not handed out again in a failed state (on
    PostgreSQL, a transaction that saw an error refuses every statement after it)."""
    fill(store)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE read_marks RENAME TO read_marks_away")
    with pytest.raises(StateError, match="read failed"):
        store.read_mark(P, E, "hcp")
    assert store.dirty_keys(P, E)  # another table, read on the pool's connections
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE read_marks_away RENAME TO read_marks")
    assert store.read_mark(P, E, "hcp") == "token: ünïcode"


def test_what_the_queues_hold_and_the_keys_with_skips(store: StateStore) -> None:
    """``queue_holdings`` tells every (entity, status) of the review items and every (entity,
    status, held by a guard or not) of the held deletes; ``skipped_keys`` the entity's keys
    with a skipped write. Other pipelines' rows are not counted."""
    assert store.queue_holdings(P) == (set(), set())
    with store.transaction() as tx:
        for pipeline in (P, "other"):
            for i, (entity, guard) in enumerate(
                [(E, None), (E, "too many deletes"), ("invoices", "guard"), ("payments", None)]
            ):
                tx.run(
                    partial(
                        queues.hold_delete,
                        pipeline=pipeline,
                        entity=entity,
                        key=f"k{i}",
                        member="hcp",
                        reach=["books"],
                        label=f"record {i}",
                        guard=guard,
                    )
                )
            tx.run(
                partial(
                    queues.upsert_review,
                    pipeline=pipeline,
                    entity=E,
                    member="books",
                    native_id="row 3",
                    native_hash=None,
                    provisional=True,
                    location="row 3",
                    label="Ann",
                    fields={"first_name": "Ann"},
                    reason="a copy",
                    candidates=[],
                )
            )
        tx.set_skips_of(P, E, {"k1": {"hcp": "cannot update"}, "k2": {"books": "closed"}})
        tx.set_skips_of(P, "invoices", {"k9": {"hcp": "cannot update"}})
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE held_deletes SET status = 'approved' WHERE entity = 'payments'"
        )
    with store.transaction() as tx:  # rows a run or a person is done with are not counted
        for i in range(3):
            tx.run(
                partial(
                    queues.hold_delete,
                    pipeline=P,
                    entity="jobs",
                    key=f"j{i}",
                    member="hcp",
                    reach=["books"],
                    label=f"job {i}",
                )
            )
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE held_deletes SET status = CASE key WHEN 'j0' THEN 'done' "
            "WHEN 'j1' THEN 'cleared' ELSE 'restored' END WHERE entity = 'jobs'"
        )
        conn.exec_driver_sql("UPDATE review_items SET status = 'closed' WHERE pipeline = 'other'")
        conn.exec_driver_sql(
            "INSERT INTO review_items (pipeline, entity, member, native_id, provisional, label, "
            "fields, reason, candidates, status, first_seen, last_seen) SELECT pipeline, "
            "'jobs', member, native_id, provisional, label, fields, reason, candidates, "
            "'closed', first_seen, last_seen FROM review_items WHERE pipeline = 'p'"
        )
    review, held = store.queue_holdings(P)
    assert review == {(E, "open")}
    assert held == {
        (E, "held", False),
        (E, "held", True),
        ("invoices", "held", True),
        ("payments", "approved", False),
    }
    assert store.skipped_keys(P, E) == {"k1", "k2"}
    assert store.skipped_keys(P, "payments") == set()


def test_an_in_memory_store_reads_through_sqlalchemy_and_a_failed_read_loses_nothing() -> None:
    """Its one connection is the database, shared by the process's threads: its reads take
    SQLAlchemy's way (transactions keep the threads apart), and a read that fails leaves
    the store as it was."""
    with StateStore.open("sqlite://") as store:
        fill(store)
        seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        assert store.read_mark(P, E, "hcp") == "token: ünïcode"
        assert any("read_marks" in sql for sql in seen)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE links RENAME TO links_away")
        with pytest.raises(StateError, match="read failed"):
            store.link_index(P, E, "hcp")
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE links_away RENAME TO links")
        assert len(store.link_index(P, E, "hcp")) == 19
        assert store.read_mark(P, E, "hcp") == "token: ünïcode"
