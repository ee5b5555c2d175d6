"""Migration 0007 and the queue tables (review items, held deletes, audit) on SQLite and
PostgreSQL: the migrated schema matches ``schema.py``, a store at 0006 is upgraded with its
data, and the upserts keep one row per record."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from syncengine.state import StateStore, queues
from syncengine.state.schema import metadata
from syncengine.state.store import alembic_config
from tests.helpers import migrate_with_alembic

MINE = {"review_items", "held_deletes", "audit"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        yield str(request.getfixturevalue("pg_url"))


def _differences(store: StateStore) -> list[object]:
    """What the migrated database and ``schema.py`` disagree on, about the queue tables."""
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, metadata)
    return [d for d in diffs if MINE & set(_tables(d))]


def _tables(diff: object) -> list[str]:
    names = []
    for part in diff if isinstance(diff, list | tuple) else [diff]:
        table = getattr(part, "table", None)
        if isinstance(part, sa.Table):
            names.append(part.name)
        elif isinstance(table, sa.Table):
            names.append(table.name)
        elif isinstance(part, str):
            names.append(part)
        elif isinstance(part, list | tuple):
            names.extend(_tables(part))
    return names


def _review(store: StateStore, native_id: str, reason: str) -> int:
    with store.transaction() as tx:
        return tx.run(
            partial(
                queues.upsert_review,
                pipeline="p",
                entity="customers",
                member="books",
                native_id=native_id,
                native_hash="h1",
                provisional=False,
                location="row 3",
                label="Ann",
                fields={"email": "ann@x.com"},
                reason=reason,
                candidates=["k1", "k2"],
            )
        )


def test_queue_tables_migrate_and_keep_one_row_per_record(url: str) -> None:
    migrate_with_alembic(url)
    with StateStore.open(url) as store:
        assert _differences(store) == []
        first = _review(store, "r1", "matches 2 records")
        assert _review(store, "r1", "matches 2 records, again") == first
        other = _review(store, "r2", "a possible duplicate")
        with store.transaction() as tx:
            tx.run(
                partial(
                    queues.decide_review, item_id=first, status="separate", hub_key=None, actor="me"
                )
            )
            tx.run(
                partial(
                    queues.close_review,
                    pipeline="p",
                    entity="customers",
                    members={"books"},
                    still_open=[],
                )
            )
        rows = {r.id: r for r in store.query(partial(queues.review_rows, status=None))}
        assert (rows[first].status, rows[first].reason) == ("separate", "matches 2 records, again")
        assert rows[other].status == "closed"
        assert _review(store, "r2", "back") == other  # found again: opened again
        assert store.query(queues.review_counts) == {"p": 1}
        hold = partial(
            queues.hold_delete, pipeline="p", entity="customers", key="k1", member="books"
        )
        with store.transaction() as tx:
            a = tx.run(partial(hold, reach=["hcp"], label="Ann"))
            assert tx.run(partial(hold, reach=["hcp", "crm"], label="Ann B")) == a
            tx.run(partial(queues.set_held, ids=[a], status="approved", actor="me"))
            b = tx.run(partial(hold, reach=["hcp"], label="Ann"))  # held again after approval
            tx.run(
                partial(
                    queues.add_audit,
                    actor="me",
                    action="delete.approve",
                    target="held delete 1",
                    pipeline="p",
                    before={"status": "held"},
                    after={"status": "approved", "reach": ["crm", "hcp"]},
                )
            )
        assert b != a
        assert store.query(partial(queues.approved_keys, pipeline="p", entity="customers")) == {
            "k1"
        }
        assert store.query(queues.held_counts) == {"p": 1}
        [entry] = store.query(queues.audit_rows)
        assert entry.after == {"status": "approved", "reach": ["crm", "hcp"]}
        assert entry.at.tzinfo is not None


def test_a_store_at_0006_is_upgraded_to_the_queue_tables_with_its_data(url: str) -> None:
    with StateStore.open(url) as store:
        with store.transaction() as tx:
            tx.put_record("p", "customers", "k1", {"email": "a@x.com"})
        with store.engine.connect() as conn:
            command.downgrade(alembic_config(conn), "0006")
            conn.commit()
            assert not MINE & set(sa.inspect(conn).get_table_names())
    with StateStore.open(url) as store:  # opening migrates to the head again
        assert store.load_records("p", "customers", ["k1"])["k1"].base == {"email": "a@x.com"}
        assert _differences(store) == []
        assert store.query(queues.review_counts) == {}


def test_a_second_decision_on_the_same_id_is_refused_and_changes_nothing(url: str) -> None:
    """Deciding is a conditional update (only from held, only from open), all or nothing
    across the ids: of two decisions sent at once, the one that comes second is told what
    the first did, by whom."""
    with StateStore.open(url) as store:
        hold = partial(queues.hold_delete, pipeline="p", entity="customers", member="books")
        with store.transaction() as tx:
            a = tx.run(partial(hold, key="k1", reach=["hcp"], label="Ann"))
            b = tx.run(partial(hold, key="k2", reach=["hcp"], label="Bob"))
        with store.transaction() as tx:
            tx.run(partial(queues.set_held, ids=[a], status="approved", actor="ann"))
        refused = pytest.raises(
            queues.AlreadyDecided, match=f"held delete {a} was already approved by ann"
        )
        with refused, store.transaction() as tx:
            tx.run(partial(queues.set_held, ids=[b, a], status="restored", actor="bob"))
        rows = {r.id: r for r in store.query(partial(queues.held_rows, status=None))}
        assert (rows[a].status, rows[a].decided_by) == ("approved", "ann")
        assert rows[b].status == "held"  # all or nothing: b was not restored either
        item = _review(store, "r1", "matches 2 records")
        decide = partial(queues.decide_review, item_id=item)
        with store.transaction() as tx:
            tx.run(partial(decide, status="linked", hub_key="k1", actor="ann"))
        refused = pytest.raises(queues.AlreadyDecided, match="already linked to k1 by ann")
        with refused, store.transaction() as tx:
            tx.run(partial(decide, status="separate", hub_key=None, actor="bob"))
        [row] = store.query(partial(queues.review_rows, status=None, ids=[item]))
        assert (row.status, row.hub_key, row.decided_by) == ("linked", "k1", "ann")
