"""Read marks in the state store (migration 0003), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from syncengine.state import StateStore
from syncengine.state.schema import metadata
from syncengine.state.store import alembic_config
from tests.helpers import migrate_with_alembic

P, E = "main", "customers"


def check_marks(store: StateStore) -> None:
    assert store.read_mark(P, E, "crm") is None
    with store.transaction() as tx:
        tx.put_read_mark(P, E, "crm", '{"since":"2026-01-01T00:00:00Z"}')
        tx.put_read_mark(P, E, "hcp", "h1")
        tx.put_read_mark(P, "invoices", "crm", "i1")
        tx.put_read_mark("other", E, "crm", "o1")
    assert store.read_mark(P, E, "crm") == '{"since":"2026-01-01T00:00:00Z"}'
    with store.transaction() as tx:  # an upsert: the newer token replaces the older
        tx.put_read_mark(P, E, "crm", "c2")
    assert store.read_mark(P, E, "crm") == "c2"
    assert (
        store.read_mark(P, E, "hcp"),
        store.read_mark(P, "invoices", "crm"),
        store.read_mark("other", E, "crm"),
    ) == ("h1", "i1", "o1")
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put_read_mark(P, E, "crm", "rolled back")
        raise RuntimeError("before the commit")
    assert store.read_mark(P, E, "crm") == "c2"
    with store.transaction() as tx:  # dropped: the member's next read is a complete one
        tx.delete_read_mark(P, E, "hcp")
        tx.delete_read_mark(P, E, "nobody")
    assert store.read_mark(P, E, "hcp") is None and store.read_mark(P, E, "crm") == "c2"


def test_read_marks_on_sqlite(tmp_path: Path) -> None:
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        check_marks(store)


def test_a_store_at_0002_is_upgraded_with_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with StateStore.open(url) as store:
        with store.transaction() as tx:
            tx.put_record(P, E, "k1", {"email": "a@x.com"})
        with store.engine.connect() as conn:
            command.downgrade(alembic_config(conn), "0002")
            conn.commit()
            assert "read_marks" not in sa.inspect(conn).get_table_names()
    with StateStore.open(url) as store:  # opening migrates to the head again
        assert store.load_records(P, E, ["k1"])["k1"].base == {"email": "a@x.com"}
        assert store.read_mark(P, E, "crm") is None
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []


def test_read_marks_on_postgresql(pg_url: str) -> None:
    migrate_with_alembic(pg_url)
    with StateStore.open(pg_url) as store:
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
        check_marks(store)
    with StateStore.open(pg_url) as store:  # re-open: already at head, marks kept
        assert store.read_mark(P, E, "crm") == "c2" and store.read_mark(P, E, "hcp") is None
