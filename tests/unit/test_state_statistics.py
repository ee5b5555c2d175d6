"""After an entity's apply changed many records, PostgreSQL's planner statistics of the state
tables are taken again (``StateStore.refresh_statistics``): without them, the next entity and
the next run looked links and records up through the wrong index until autovacuum came."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from syncengine import api, engine
from syncengine.connectors.memory import MemoryConnector
from syncengine.state import StateStore
from tests.helpers import memory_config

TABLES = ("records", "links", "skips", "journal")


def _reltuples(store: StateStore) -> dict[str, float]:
    """What the planner believes each table holds (-1: never analyzed)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT relname, reltuples FROM pg_class WHERE relname = ANY(:names)"),
            {"names": list(TABLES)},
        ).all()
    return {name: float(n) for name, n in rows}


def test_a_large_apply_has_postgresql_analyze_the_state_tables(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StateStore.open(pg_url) as store, store.engine.begin() as conn:
        for table in TABLES:  # only the sync's ANALYZE, not autovacuum's, in this test
            conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    crm = MemoryConnector.get_dataset("crm")
    for n in range(60):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
    config = memory_config(tmp_path, {"crm": {}, "books": {}}, state=pg_url)

    monkeypatch.setattr(engine, "STATISTICS_AFTER", 61)  # 60 records: fewer
    [first] = api.sync(config)
    assert first.exit_code == 0
    with StateStore.open(pg_url) as store:
        assert _reltuples(store)["links"] == -1, "not analyzed below the threshold"

    monkeypatch.setattr(engine, "STATISTICS_AFTER", 60)
    for n in range(60):
        crm.put("customers", f"c{n}", {"first_name": f"Anna {n}", "email": f"ann{n}@example.com"})
    [second] = api.sync(config)
    assert second.exit_code == 0
    with StateStore.open(pg_url) as store:
        seen = _reltuples(store)
    assert seen["links"] == 120 and seen["records"] == 60, seen
    assert seen["journal"] > 0


def test_sqlite_needs_no_statistics(tmp_path: Path) -> None:
    """SQLite plans the state's lookups by their keys: nothing is run, nothing is made."""
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.refresh_statistics()
        with store.engine.connect() as conn:
            made = conn.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
            ).scalar_one()
    assert made == 0


def test_a_failed_analyze_fails_no_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statistics are an aid to the planner: when taking them fails (a lock timeout, a
    role that may not), the run goes on and says so in its log."""
    from syncengine.errors import StateError

    def refused(self: StateStore) -> None:
        raise StateError("state store: ANALYZE failed: canceling statement due to lock timeout")

    monkeypatch.setattr(StateStore, "refresh_statistics", refused)
    monkeypatch.setattr(engine, "STATISTICS_AFTER", 5)
    crm = MemoryConnector.get_dataset("crm")
    for n in range(5):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
    [result] = api.sync(memory_config(tmp_path, {"crm": {}, "books": {}}))
    assert result.exit_code == 0
    assert len(MemoryConnector.get_dataset("books").table("customers")) == 5
