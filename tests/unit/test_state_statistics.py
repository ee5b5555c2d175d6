"""After an entity's apply changed many records, PostgreSQL's planner statistics of the state
tables are taken again (``StateStore.refresh_statistics``): without them, the next entity and
the next run looked links and records up through the wrong index until autovacuum came."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

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
    """The statistics are an aid to the planner: when taking them fails (a lock held too
    long, a lost connection), the run goes on and says so in its log."""
    from syncengine.errors import StateError

    def refused(self: StateStore) -> None:
        raise StateError("state store: ANALYZE failed: canceling statement due to lock timeout")

    monkeypatch.setattr(StateStore, "refresh_statistics", refused)
    monkeypatch.setattr(engine, "STATISTICS_AFTER", 5)
    crm = MemoryConnector.get_dataset("crm")
    for n in range(5):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
    with capture_logs() as logs:
        [result] = api.sync(memory_config(tmp_path, {"crm": {}, "books": {}}))
    assert result.exit_code == 0
    assert len(MemoryConnector.get_dataset("books").table("customers")) == 5
    [told] = [e for e in logs if e["event"] == "state statistics not refreshed"]
    assert told["log_level"] == "warning" and "lock timeout" in told["error"], told


def test_only_writes_that_took_effect_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes a member refuses come back every run while it does (a CRM down): they change a
    dirty flag, not what the planner should know, and take no ANALYZE each time."""
    calls: list[str] = []
    monkeypatch.setattr(StateStore, "refresh_statistics", lambda self: calls.append("analyze"))
    monkeypatch.setattr(engine, "STATISTICS_AFTER", 5)
    crm = MemoryConnector.get_dataset("crm")
    for n in range(5):
        crm.put("customers", f"c{n}", {"first_name": f"Ann {n}", "email": f"ann{n}@example.com"})
    config = memory_config(tmp_path, {"crm": {}, "books": {}})
    refused = {"books": {"fail_write": lambda op, entity, ref: True}}
    for _ in range(3):
        [failed] = api.sync(config, connector_extra=refused)
        assert len(failed.outcomes[0].failures) == 5
    assert calls == []
    [result] = api.sync(config)
    assert result.exit_code == 0
    assert calls == ["analyze"]
    [again] = api.sync(config)  # nothing to write
    assert again.exit_code == 0
    assert calls == ["analyze"]


def test_an_analyze_waits_for_a_held_lock_only_so_long(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another ANALYZE or a VACUUM of the same tables holds a lock ANALYZE waits for: the
    wait is bounded (``ANALYZE_WAIT``), then it gives up with a ``StateError``."""
    from syncengine.errors import StateError
    from syncengine.state import store as state_store

    monkeypatch.setattr(state_store, "ANALYZE_WAIT", "300ms")
    sent: list[str] = []
    with StateStore.open(pg_url) as store, store.engine.connect() as other:

        @sa.event.listens_for(store.engine, "before_cursor_execute")
        def noted(*args: object) -> None:
            sent.append(str(args[2]))

        other.exec_driver_sql("BEGIN")
        other.exec_driver_sql("LOCK TABLE links IN SHARE UPDATE EXCLUSIVE MODE")
        with pytest.raises(StateError, match="lock timeout"):  # not waited for, for ever
            store.refresh_statistics()
        # no clock: the wait PostgreSQL was given is the one set
        assert "SET LOCAL lock_timeout = '300ms'" in sent, sent
        sa.event.remove(store.engine, "before_cursor_execute", noted)
        other.exec_driver_sql("ROLLBACK")
        store.refresh_statistics()  # once the lock is gone
