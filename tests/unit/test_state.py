"""The state store against real SQLite files (and PostgreSQL when the driver is installed)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from syncengine.errors import StateError
from syncengine.state import StateStore, mask_url
from syncengine.state.schema import metadata
from syncengine.state.store import _SQLITE_PRAGMAS, SCHEMA_HEAD, _pragma, alembic_config
from tests.helpers import migrate_with_alembic

P, E = "main", "customers"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[StateStore]:
    s = StateStore.open(f"sqlite:///{db_path}")
    yield s
    s.close()


class QueryCounter:
    """Counts the statements an engine sends, ignoring transaction control."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements: list[str] = []
        self._engine = engine

    def __enter__(self) -> QueryCounter:
        sa.event.listen(self._engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.split(None, 1)[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


def link_row(key: str, member: str, native_id: str | None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "pipeline": P,
        "entity": E,
        "key": key,
        "member": member,
        "native_id": native_id,
        "native_hash": f"h-{native_id}",
        "last_seen": {"name": key},
    }
    row.update(extra)
    return row


def seed(store: StateStore, count: int, members: tuple[str, ...] = ("hcp", "sheet")) -> None:
    keys = [f"k{i:05d}" for i in range(count)]
    with store.transaction() as tx:
        tx.put_records([{"pipeline": P, "entity": E, "key": k, "base": {"n": k}} for k in keys])
        tx.put_links([link_row(k, m, f"{m}-{k}") for k in keys for m in members])


# -- opening --------------------------------------------------------------------------------


def test_new_file_is_private_and_in_wal_mode(db_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not widen the file
    try:
        store = StateStore.open(f"sqlite:///{db_path}")
    finally:
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        with store.engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 1,
            "foreign_keys": 1,
            "busy_timeout": 30000,
        }
        with store.transaction() as tx:
            tx.put_record(P, E, "k", {})
        for side in (Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            if side.exists():
                assert stat.S_IMODE(side.stat().st_mode) == 0o600
    finally:
        store.close()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_existing_file_is_tightened_to_0600(db_path: Path) -> None:
    db_path.touch()
    db_path.chmod(0o644)
    StateStore.open(f"sqlite:///{db_path}").close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_relative_path_is_resolved_against_base_dir(tmp_path: Path) -> None:
    with StateStore.open("sqlite:///nested/dir/state.db", base_dir=str(tmp_path)) as store:
        assert store.path == tmp_path / "nested" / "dir" / "state.db"
    assert (tmp_path / "nested" / "dir" / "state.db").is_file()


def test_reopen_keeps_data(db_path: Path) -> None:
    with StateStore.open(f"sqlite:///{db_path}") as store, store.transaction() as tx:
        tx.put_record(P, E, "k1", {"name": "Ada"})
        tx.put_link(P, E, "k1", "hcp", native_id="cus_1", native_hash="h1", last_seen={"a": 1})
    with StateStore.open(f"sqlite:///{db_path}") as store:
        state = store.load_records(P, E, ["k1"])["k1"]
    assert state.base == {"name": "Ada"}
    assert state.links["hcp"].native_id == "cus_1"


def test_a_set_up_pragma_waits_for_a_lock_as_the_busy_timeout_does(db_path: Path) -> None:
    """Switching a new file to WAL answers "database is locked" at once, without the busy
    handler, while another connection holds it (two syncs started together on a fresh state
    file failed 1 run in a few hundred): the store's set-up waits for the lock instead."""
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    # timeout=0: the lock error comes at once, as it does for the WAL switch of a new file
    # that another connection is setting up (the race itself: the test below)
    waiting = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    cursor = waiting.cursor()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        cursor.execute("PRAGMA journal_mode=WAL")
    released = threading.Timer(0.3, holder.execute, ["COMMIT"])
    released.start()
    try:
        _pragma(cursor, "PRAGMA journal_mode=WAL")
        assert cursor.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        released.join()
        waiting.close()
        holder.close()


def test_schema_head_is_the_migrations_head() -> None:
    """``SCHEMA_HEAD`` lets a store already there open without Alembic: it must name the head
    the packaged migrations end at (add a migration, move it)."""
    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [SCHEMA_HEAD]


def test_six_connections_setting_up_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """The race itself, made likely: six threads released together set up each of 300 fresh
    files with the store's pragmas. Run plainly, the WAL switch answered "database is locked"
    on 32 and 55 of 1 500 files in two runs; with ``_pragma`` on none."""
    errors: list[str] = []

    def set_up(path: Path, start: threading.Barrier) -> None:
        try:
            start.wait()
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                cursor = conn.cursor()
                for pragma in _SQLITE_PRAGMAS:
                    _pragma(cursor, pragma)
                cursor.execute("CREATE TABLE IF NOT EXISTS t (x)")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            errors.append(str(exc))

    for n in range(300):
        start = threading.Barrier(6)
        threads = [
            threading.Thread(target=set_up, args=(tmp_path / f"{n}.db", start)) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_concurrent_opens_of_a_new_file_all_succeed(db_path: Path) -> None:
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            StateStore.open(f"sqlite:///{db_path}").close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(db_path) as raw:
        heads = ScriptDirectory.from_config(alembic_config()).get_heads()
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (h,) for h in heads
        ]


def test_create_false_on_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    url = "sqlite:///sub/state.db"
    with StateStore.open(url, base_dir=str(tmp_path), create=False) as store:
        assert store.ephemeral
        assert store.load_records(P, E, ["k"]) == {}
        assert store.pipelines() == []
        assert store.pending_intents(P) == []
        with store.transaction() as tx:  # a dry run may record itself; it stays in memory
            tx.start_run(P, True, "u1")
        assert [r.run_uuid for r in store.runs()] == ["u1"]
    assert list(tmp_path.iterdir()) == []


def test_create_false_reads_an_existing_file(db_path: Path) -> None:
    with StateStore.open(f"sqlite:///{db_path}") as store, store.transaction() as tx:
        tx.put_record(P, E, "k1", {"x": 1})
    with StateStore.open(f"sqlite:///{db_path}", create=False) as store:
        assert not store.ephemeral
        assert store.load_records(P, E, ["k1"])["k1"].base == {"x": 1}


def test_migrated_schema_matches_metadata(db_path: Path) -> None:
    migrate_with_alembic(f"sqlite:///{db_path}")
    with StateStore.open(f"sqlite:///{db_path}") as store, store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        # and the comparison is not vacuous: a column the database lacks is reported
        extra = sa.MetaData()
        for table in metadata.tables.values():
            table.to_metadata(extra)
        sa.Table("leases", extra, sa.Column("note", sa.String()), extend_existing=True)
        assert compare_metadata(context, extra) != []


def test_migrations_downgrade_and_upgrade_again(store: StateStore) -> None:
    with store.engine.connect() as conn:
        command.downgrade(alembic_config(conn), "base")
        assert set(sa.inspect(conn).get_table_names()) == {"alembic_version"}
        command.upgrade(alembic_config(conn), "head")
        conn.commit()
        assert set(metadata.tables) <= set(sa.inspect(conn).get_table_names())


def test_newer_schema_revision_is_refused(db_path: Path) -> None:
    StateStore.open(f"sqlite:///{db_path}").close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(StateError) as info:
        StateStore.open(f"sqlite:///{db_path}")
    assert str(info.value).startswith(
        "state store schema is newer than this syncengine; upgrade syncengine"
    )
    assert "9999_from_the_future" in str(info.value)


def test_garbage_file_is_a_state_error_naming_the_path(db_path: Path) -> None:
    db_path.write_bytes(os.urandom(4096))
    with pytest.raises(StateError) as info:
        StateStore.open(f"sqlite:///{db_path}")
    assert str(db_path) in str(info.value)
    assert "not a database" in str(info.value)


def test_directory_instead_of_file_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=str(tmp_path)):
        StateStore.open(f"sqlite:///{tmp_path}")


@pytest.mark.parametrize(
    "url",
    ["not a url", "mysql://u@h/db", "nosuchdialect://h/db"],
)
def test_bad_urls_are_state_errors(url: str) -> None:
    with pytest.raises(StateError, match="URL"):
        StateStore.open(url)


def test_passwords_are_masked() -> None:
    assert mask_url("postgresql+psycopg://bob:hunter22@db/x") == (
        "postgresql+psycopg://bob:***@db/x"
    )
    assert "hunter22" not in mask_url("postgresql+psycopg://bob@db/x?password=hunter22")
    assert "hunter22" not in mask_url("weird://bob:hunter22@[bad")


def test_unreachable_database_error_masks_the_password() -> None:
    # with psycopg installed this fails to connect; without, it fails to load the driver
    url = "postgresql+psycopg://bob:hunter22@127.0.0.1:1/nothing"
    with pytest.raises(StateError) as info:
        StateStore.open(url)
    message = str(info.value)
    assert "hunter22" not in message
    assert "bob:***@127.0.0.1:1" in message


# -- records and links ----------------------------------------------------------------------


def test_upserts_replace_records_and_links(store: StateStore) -> None:
    with store.transaction() as tx:
        tx.put_record(P, E, "k1", {"name": "Ada"})
        tx.put_link(P, E, "k1", "hcp", native_id="c1", native_hash="h1", last_seen={"n": 1})
    with store.transaction() as tx:
        tx.put_record(P, E, "k1", {"name": "Ada L."})
        tx.put_link(P, E, "k1", "hcp", native_id="c1", native_hash="h2", last_seen=None, dirty=True)
        # bulk upserts tolerate the same key twice in one batch: the last row wins
        tx.put_records(
            [
                {"pipeline": P, "entity": E, "key": "k2", "base": {"v": 1}},
                {"pipeline": P, "entity": E, "key": "k2", "base": {"v": 2}},
            ]
        )
        tx.put_links([link_row("k2", "hcp", "c2"), link_row("k2", "hcp", "c2b")])
    states = store.load_records(P, E, ["k1", "k2"])
    assert states["k1"].base == {"name": "Ada L."}
    link = states["k1"].links["hcp"]
    assert (link.native_hash, link.last_seen, link.dirty, link.tombstone) == (
        "h2",
        None,
        True,
        False,
    )
    assert states["k2"].base == {"v": 2}
    assert states["k2"].links["hcp"].native_id == "c2b"


def test_link_index_counts_dirty_keys(store: StateStore) -> None:
    with store.transaction() as tx:
        for key in ("k1", "k2", "k3", "k4"):
            tx.put_record(P, E, key, {})
        tx.put_links(
            [
                link_row("k1", "hcp", "c1"),
                link_row("k2", "hcp", "c2", tombstone=True),
                link_row("k3", "hcp", None),  # not created on hcp yet
                link_row("k1", "sheet", "r1"),
                link_row("k4", "sheet", "r4"),
            ]
        )
        tx.set_dirty(P, E, "k1", ["sheet"])
        tx.set_dirty(P, E, "k4")
    assert store.link_index(P, E, "hcp") == {"c1": ("k1", "h-c1")}
    assert store.linked_count(P, E, "hcp") == 1
    assert store.linked_count(P, E, "sheet") == 2
    assert store.dirty_keys(P, E) == {"k1", "k4"}
    assert store.load_records(P, E, ["k1"])["k1"].links["hcp"].dirty is False


def test_a_native_id_links_to_one_key_only(store: StateStore) -> None:
    with store.transaction() as tx:
        tx.put_record(P, E, "k1", {})
        tx.put_record(P, E, "k2", {})
        tx.put_links([link_row("k1", "hcp", "c1")])
    with pytest.raises(StateError, match="write failed"), store.transaction() as tx:
        tx.put_record(P, E, "k3", {"new": True})
        tx.put_links([link_row("k2", "hcp", "c1")])
    assert store.load_records(P, E, ["k3"]) == {}  # the whole transaction rolled back


def test_a_link_needs_its_record_by_commit(store: StateStore) -> None:
    with store.transaction() as tx:  # link first, record later in the same batch is fine
        tx.put_links([link_row("k1", "hcp", "c1")])
        tx.put_record(P, E, "k1", {})
    with pytest.raises(StateError), store.transaction() as tx:
        tx.put_links([link_row("orphan", "hcp", "c9")])
    assert store.link_index(P, E, "hcp") == {"c1": ("k1", "h-c1")}


def test_delete_record_takes_its_links_and_open_conflicts(store: StateStore) -> None:
    seed(store, 2)
    with store.transaction() as tx:
        old = tx.add_conflict(P, E, "k00000", "email", {"hcp": "a", "sheet": "b"}, None)
        tx.resolve_conflict(old, {"value": "a"})
        tx.add_conflict(P, E, "k00000", "phone", {"hcp": "1", "sheet": "2"}, "0")
    with store.transaction() as tx:
        tx.delete_record(P, E, "k00000")
        tx.delete_link(P, E, "k00001", "sheet")
    assert set(store.load_records(P, E, ["k00000", "k00001"])) == {"k00001"}
    assert set(store.load_records(P, E, ["k00001"])["k00001"].links) == {"hcp"}
    assert "hcp-k00000" not in store.link_index(P, E, "hcp")
    assert store.open_conflicts() == []
    resolved = store.get_conflict(old)
    assert resolved is not None and resolved.status == "resolved"


def test_transaction_rolls_back_on_exception(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put_record(P, E, "k1", {})
        raise RuntimeError("boom")
    assert store.load_records(P, E, ["k1"]) == {}


def test_reads_inside_a_transaction_see_its_writes(store: StateStore, tmp_path: Path) -> None:
    ephemeral = StateStore.open("sqlite:///none.db", base_dir=str(tmp_path), create=False)
    for s in (store, ephemeral):  # the in-memory store has a single connection
        with s.transaction() as tx:
            tx.put_record(P, E, "k1", {"v": 1})
            tx.put_link(P, E, "k1", "hcp", native_id="c1", native_hash=None, last_seen=None)
            assert s.load_records(P, E, ["k1"])["k1"].base == {"v": 1}
            assert s.link_index(P, E, "hcp") == {"c1": ("k1", None)}
            assert [r.key for r in s.iter_records(P, E)] == ["k1"]
        assert s.linked_count(P, E, "hcp") == 1
    ephemeral.close()


def test_a_nested_transaction_is_a_savepoint(store: StateStore) -> None:
    with store.transaction() as outer:
        outer.put_record(P, E, "kept", {})
        with pytest.raises(RuntimeError), store.transaction() as inner:
            inner.put_record(P, E, "undone", {})
            raise RuntimeError("inner fails")
        with store.transaction() as inner:
            inner.put_record(P, E, "also kept", {})
    assert set(store.load_records(P, E, ["kept", "undone", "also kept"])) == {
        "kept",
        "also kept",
    }


def test_load_records_is_batched(store: StateStore) -> None:
    seed(store, 2000)
    keys = [f"k{i:05d}" for i in range(2000)] + ["missing"]
    with QueryCounter(store.engine) as counter:
        states = store.load_records(P, E, keys)
    assert len(states) == 2000
    assert states["k01234"].links["sheet"].native_id == "sheet-k01234"
    # two queries (records, links) per batch of 500 keys, never one per record
    assert counter.count <= 2 * 5


def test_bulk_writes_are_one_statement_per_batch(store: StateStore) -> None:
    keys = [f"k{i}" for i in range(500)]
    with QueryCounter(store.engine) as counter, store.transaction() as tx:
        tx.put_records([{"pipeline": P, "entity": E, "key": k, "base": {}} for k in keys])
        tx.put_links([link_row(k, "hcp", f"c-{k}") for k in keys])
    assert counter.count <= 2 * 2  # executemany may split, but never per row
    assert store.linked_count(P, E, "hcp") == 500


def test_iter_records_streams_everything_in_pages(store: StateStore) -> None:
    seed(store, 2500)
    with store.transaction() as tx:
        tx.put_record(P, "invoices", "other", {})
    with QueryCounter(store.engine) as counter:
        keys = [state.key for state in store.iter_records(P, E, batch=1000)]
    assert keys == [f"k{i:05d}" for i in range(2500)]
    assert counter.count <= 2 * 3
    first = next(store.iter_records(P, E, batch=7))
    assert set(first.links) == {"hcp", "sheet"}
    assert list(store.iter_records(P, "payments")) == []


# -- journal --------------------------------------------------------------------------------


def intent(key: str, op: str = "create") -> dict[str, Any]:
    return {
        "run_id": "run-1",
        "pipeline": P,
        "entity": E,
        "key": key,
        "member": "hcp",
        "op": op,
        "payload": {"name": key},
    }


def test_intent_lifecycle(store: StateStore) -> None:
    with store.transaction() as tx:
        first = tx.add_intent("run-1", P, E, "k1", "hcp", "create", {"name": "k1"})
        ids = tx.add_intents([intent("k2"), intent("k3", "update"), intent("k4", "delete")])
    assert ids == sorted(ids) and first < ids[0]
    pending = store.pending_intents(P)
    assert [(i.key, i.op) for i in pending] == [
        ("k1", "create"),
        ("k2", "create"),
        ("k3", "update"),
        ("k4", "delete"),
    ]
    assert pending[0].payload == {"name": "k1"} and pending[0].run_id == "run-1"
    with store.transaction() as tx:
        tx.finish_intent(first, "done", native_id="cus_1")
        tx.finish_intents(
            [{"id": ids[0], "state": "failed", "error": "422"}, {"id": ids[1], "state": "done"}]
        )
    assert [i.key for i in store.pending_intents(P)] == ["k4"]
    assert store.pending_intents("other") == []

    with store.transaction() as tx:
        assert tx.prune_journal(P, datetime.now(UTC) - timedelta(days=1)) == 0
        assert tx.prune_journal(P, datetime.now(UTC) + timedelta(seconds=1)) == 3
    assert [i.key for i in store.pending_intents(P)] == ["k4"]  # pending is never pruned


def test_intent_mistakes_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="op"), store.transaction() as tx:
        tx.add_intents([intent("k1", "upsert")])
    with pytest.raises(ValueError, match="state"), store.transaction() as tx:
        tx.finish_intent(1, "pending")
    with pytest.raises(StateError, match="unknown"), store.transaction() as tx:
        tx.finish_intent(12345, "done")
    with pytest.raises(ValueError, match="aware"), store.transaction() as tx:
        tx.prune_journal(P, datetime(2024, 1, 1))


def test_intent_ids_are_not_reused_after_pruning(store: StateStore) -> None:
    with store.transaction() as tx:
        (old,) = tx.add_intents([intent("k1")])
        tx.finish_intent(old, "done")
    with store.transaction() as tx:
        tx.prune_journal(P, datetime.now(UTC) + timedelta(seconds=1))
        (new,) = tx.add_intents([intent("k2")])
    assert new > old


# -- conflicts ------------------------------------------------------------------------------


def test_a_conflict_whose_members_agree_is_closed_by_its_field(
    either_store: StateStore,
) -> None:
    store = either_store
    assert store.open_conflict_fields(P, E) == {}
    with store.transaction() as tx:
        email = tx.add_conflict(P, E, "k1", "email", {"hcp": "a@x", "sheet": "b@x"}, "o@x")
        phone = tx.add_conflict(P, E, "k1", "phone", {"hcp": "+1", "sheet": "+2"}, None)
    with store.transaction() as tx:
        tx.close_agreed_conflict(P, E, "k1", "email", "a@x")
        tx.close_agreed_conflict(P, E, "k2", "email", "a@x")  # none open there: nothing
    closed = store.get_conflict(email)
    assert closed is not None and closed.status == "resolved"
    assert closed.resolution == {"value": "a@x", "agreed": True}
    assert [r.id for r in store.open_conflicts(P, E)] == [phone]
    assert store.open_conflict_fields(P, E) == {"k1": {"phone": {"hcp": "+1", "sheet": "+2"}}}


def test_one_open_conflict_per_field_and_resolve(store: StateStore) -> None:
    with store.transaction() as tx:
        c1 = tx.add_conflict(P, E, "k1", "email", {"hcp": "a@x", "sheet": "b@x"}, "o@x")
        again = tx.add_conflict(P, E, "k1", "email", {"hcp": "a@x", "sheet": "c@x"}, "o@x")
        c2 = tx.add_conflict(P, E, "k1", "phone", {"hcp": None, "sheet": "+1"}, None)
        c3 = tx.add_conflict(P, "invoices", "i1", "total", {"hcp": 1, "sheet": 2}, 0)
    assert again == c1 and len({c1, c2, c3}) == 3
    rows = store.open_conflicts(P, E)
    assert [(r.id, r.field) for r in rows] == [(c1, "email"), (c2, "phone")]
    assert rows[0].values == {"hcp": "a@x", "sheet": "c@x"} and rows[0].base_value == "o@x"
    assert rows[0].created_at.tzinfo is not None and rows[0].status == "open"
    assert len(store.open_conflicts()) == 3
    assert store.open_conflict_fields(P, E) == {
        "k1": {"email": {"hcp": "a@x", "sheet": "c@x"}, "phone": {"hcp": None, "sheet": "+1"}}
    }

    with store.transaction() as tx:
        tx.resolve_conflict(c1, {"value": "a@x", "by": "hcp"})
    resolved = store.get_conflict(c1)
    assert resolved is not None
    assert resolved.status == "resolved" and resolved.resolution == {"value": "a@x", "by": "hcp"}
    assert resolved.resolved_at is not None and resolved.resolved_at.tzinfo is UTC
    assert store.open_conflict_fields(P, E) == {"k1": {"phone": {"hcp": None, "sheet": "+1"}}}
    assert store.get_conflict(99999) is None

    with store.transaction() as tx:  # the field may conflict again later: a new conflict
        reopened = tx.add_conflict(P, E, "k1", "email", {"hcp": "d@x", "sheet": "e@x"}, "a@x")
    assert reopened != c1
    with pytest.raises(StateError, match="already resolved"), store.transaction() as tx:
        tx.resolve_conflict(c1, {})
    with pytest.raises(StateError, match="does not exist"), store.transaction() as tx:
        tx.resolve_conflict(99999, {})


# -- runs -----------------------------------------------------------------------------------


def test_runs_history(store: StateStore) -> None:
    assert store.runs() == [] and store.pipelines() == []
    with store.transaction() as tx:
        r1 = tx.start_run(P, False, "u1")
        r2 = tx.start_run("other", True, "u2")
        tx.finish_run(r1, "ok", {"created": 2}, [])
    with store.transaction() as tx:
        tx.finish_run(r2, "failed", {}, [{"record": "k1", "error": "boom"}])
        tx.put_record("third", E, "k", {})
    newest_first = store.runs()
    assert [r.run_uuid for r in newest_first] == ["u2", "u1"]
    one = store.runs(P)[0]
    assert (one.id, one.dry_run, one.outcome, one.counts, one.errors) == (
        r1,
        False,
        "ok",
        {"created": 2},
        [],
    )
    assert one.started_at.tzinfo is UTC and one.finished_at is not None
    assert one.finished_at >= one.started_at
    assert newest_first[0].dry_run is True
    assert newest_first[0].errors == [{"record": "k1", "error": "boom"}]
    assert store.runs(limit=1)[0].run_uuid == "u2"
    assert store.pipelines() == [P, "other", "third"]
    with pytest.raises(StateError, match="does not exist"), store.transaction() as tx:
        tx.finish_run(12345, "ok", {}, [])


# -- PostgreSQL -----------------------------------------------------------------------------


def test_postgresql_runs_the_same_migrations_and_upserts(pg_url: str) -> None:
    migrate_with_alembic(pg_url)
    with StateStore.open(pg_url) as store:
        assert "pg-secret" not in store.url_for_display and "***" in store.url_for_display
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
        seed(store, 1200)
        with store.transaction() as tx:
            tx.put_records([{"pipeline": P, "entity": E, "key": "k00001", "base": {"v": 2}}] * 2)
            tx.put_links([link_row("k00001", "hcp", "new-id", dirty=True)] * 2)
            c1 = tx.add_conflict(P, E, "k00001", "email", {"hcp": "a"}, None)
            c2 = tx.add_conflict(P, E, "k00001", "email", {"hcp": "b"}, None)
            ids = tx.add_intents([intent("k1"), intent("k2")])
            tx.finish_intents([{"id": ids[0], "state": "done", "native_id": "x"}])
            run = tx.start_run(P, False, "u1")
            tx.finish_run(run, "ok", {"n": 1}, [])
        assert c1 == c2
        assert [i.id for i in store.pending_intents(P)] == [ids[1]]
        state = store.load_records(P, E, ["k00001"])["k00001"]
        assert state.base == {"v": 2} and state.links["hcp"].native_id == "new-id"
        assert store.dirty_keys(P, E) == {"k00001"}
        assert sum(1 for _ in store.iter_records(P, E, batch=500)) == 1200
        assert len(store.load_records(P, E, [f"k{i:05d}" for i in range(1200)])) == 1200
        assert store.open_conflicts()[0].values == {"hcp": "b"}
        assert store.runs()[0].started_at.tzinfo is UTC
        assert store.pipelines() == [P]
    with StateStore.open(pg_url) as store:  # re-open: already at head
        assert store.linked_count(P, E, "sheet") == 1200


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_records_holding_finds_match_candidates_by_value(
    backend: str, db_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{db_path}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = StateStore.open(url)
    try:
        with store.transaction() as tx:
            tx.put_records(
                [
                    {
                        "pipeline": P,
                        "entity": E,
                        "key": f"k{i:04d}",
                        "base": {"email": f"n{i}@example.com", "address.zip": f"{i:05d}"},
                    }
                    for i in range(1200)
                ]
                + [
                    {
                        "pipeline": P,
                        "entity": "invoices",
                        "key": "i1",
                        "base": {"email": "n7@example.com"},
                    }
                ]
                + [
                    {
                        "pipeline": "other",
                        "entity": E,
                        "key": "o1",
                        "base": {"email": "n7@example.com"},
                    }
                ]
            )
            tx.put_links([link_row("k0007", "hcp", "c-7")])
        wanted = [f"n{i}@example.com" for i in range(0, 1200, 2)] + [
            "N7@example.com",
            "n7@example.com",
        ]
        found = store.records_holding(P, E, {"email": wanted, "address.zip": ["00009", "99999"]})
        # every other record by email (more values than one query takes), one by a dotted
        # field, case kept exact, nothing of another entity or pipeline
        assert sorted(found) == sorted(
            [f"k{i:04d}" for i in range(0, 1200, 2)] + ["k0007", "k0009"]
        )
        assert found["k0007"].links["hcp"].native_id == "c-7"
        assert store.records_holding(P, E, {"email": []}) == {}
    finally:
        store.close()
