"""A new state store is created straight from ``schema.metadata`` and stamped at the head,
without Alembic; a store already there is migrated by Alembic. Both must end with the same
database: these tests describe each one from the database's own catalogue (columns in order,
types, defaults, keys, checks, partial indexes, deferrable foreign keys, AUTOINCREMENT) and
compare the descriptions, on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from syncengine.errors import StateError
from syncengine.state import StateStore
from syncengine.state.store import SCHEMA_HEAD, alembic_config
from tests.helpers import migrate_with_alembic


def _created(url: str) -> None:
    """Open a new store, which must be created without Alembic's migrations."""
    upgrade = command.upgrade

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a new store was migrated by Alembic, not created at the head")

    command.upgrade = refused
    try:
        StateStore.open(url).close()
    finally:
        command.upgrade = upgrade


def _clauses(create_sql: str) -> list[str]:
    """The top-level clauses of a CREATE TABLE, whitespace and quotes normalised, sorted: an
    ``ALTER TABLE ADD COLUMN`` appends its column at the end of the text, so the clauses are
    compared as a set here and the column order from ``table_xinfo``."""
    body = create_sql[create_sql.index("(") + 1 : create_sql.rindex(")")]
    parts, depth, start = [], 0, 0
    for i, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return sorted(re.sub(r"\s+", " ", p.replace('"', "")).strip() for p in parts)


def _describe_sqlite(path: Path) -> dict[str, Any]:
    with sqlite3.connect(path) as db:
        described: dict[str, Any] = {}
        objects = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        for kind, name, table, sql in objects:
            if kind == "table":
                described[f"table {name}"] = {
                    "columns": db.execute(f"PRAGMA table_xinfo('{name}')").fetchall(),
                    "foreign keys": db.execute(f"PRAGMA foreign_key_list('{name}')").fetchall(),
                    "clauses": _clauses(sql),
                }
            elif kind == "index":
                described[f"index {name}"] = {
                    "table": table,
                    "columns": db.execute(f"PRAGMA index_xinfo('{name}')").fetchall(),
                    "sql": None if sql is None else re.sub(r"\s+", " ", sql.replace('"', "")),
                }
            else:
                described[f"{kind} {name}"] = sql
        described["version"] = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return described


def _describe_postgresql(url: str) -> dict[str, Any]:
    queries = {
        "columns": """SELECT table_name, ordinal_position, column_name, data_type,
                             character_maximum_length, is_nullable, column_default, is_identity
                      FROM information_schema.columns WHERE table_schema = 'public'
                      ORDER BY table_name, ordinal_position""",
        "constraints": """SELECT conrelid::regclass::text, conname, contype, condeferrable,
                                 condeferred, pg_get_constraintdef(oid)
                          FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                          ORDER BY 1, 2""",
        "indexes": """SELECT tablename, indexname, indexdef FROM pg_indexes
                      WHERE schemaname = 'public' ORDER BY 1, 2""",
        "sequences": """SELECT sequence_name, data_type, start_value, increment
                        FROM information_schema.sequences WHERE sequence_schema = 'public'
                        ORDER BY 1""",
        "version": "SELECT version_num FROM alembic_version",
    }
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {name: conn.execute(sa.text(sql)).all() for name, sql in queries.items()}
    finally:
        engine.dispose()


def test_a_new_sqlite_store_is_created_exactly_as_the_migrations_build_it(tmp_path: Path) -> None:
    migrated, created = tmp_path / "migrated.db", tmp_path / "created.db"
    migrate_with_alembic(f"sqlite:///{migrated}")
    _created(f"sqlite:///{created}")
    expected = _describe_sqlite(migrated)
    assert _describe_sqlite(created) == expected
    # the description sees what matters: the journal's column order, a partial index's
    # condition, a deferrable foreign key, AUTOINCREMENT, a check constraint
    journal = [column[1] for column in expected["table journal"]["columns"]]
    assert journal.index("holder") == len(journal) - 1  # added by migration 0004
    assert "WHERE status = 'open'" in expected["index uq_conflicts_open"]["sql"]
    assert any("DEFERRABLE INITIALLY DEFERRED" in c for c in expected["table links"]["clauses"])
    assert any("AUTOINCREMENT" in c for c in expected["table journal"]["clauses"])
    assert any(
        c.startswith("CONSTRAINT ck_journal_op CHECK") for c in expected["table journal"]["clauses"]
    )
    assert expected["version"] == [(SCHEMA_HEAD,)]


def test_a_new_postgresql_store_is_created_exactly_as_the_migrations_build_it(
    pg_url: str, request: pytest.FixtureRequest
) -> None:
    created_url = pg_url
    migrated_url = _second_database(pg_url, request)
    migrate_with_alembic(migrated_url)
    _created(created_url)
    expected = _describe_postgresql(migrated_url)
    assert _describe_postgresql(created_url) == expected
    journal = [row[2] for row in expected["columns"] if row[0] == "journal"]
    assert journal[-1] == "holder"  # added by migration 0004
    assert any("WHERE" in row[2] for row in expected["indexes"])
    assert any(row[3] and row[4] for row in expected["constraints"])  # deferrable, deferred
    assert expected["version"] == [(SCHEMA_HEAD,)]


def _second_database(pg_url: str, request: pytest.FixtureRequest) -> str:
    """Another empty database beside ``pg_url``'s, dropped after the test."""
    import psycopg

    from tests.conftest import PG_ADMIN

    base = pg_url.rsplit("/", 1)
    name = f"{base[1]}_m"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    request.addfinalizer(drop)
    return f"{base[0]}/{name}"


def test_a_new_store_is_created_without_alembic_and_an_older_one_is_migrated(
    tmp_path: Path,
) -> None:
    """Alembic (about 0.15 s to import and run) is loaded only when there is something to
    migrate: not for a new store, not for one at the head."""
    db_path = tmp_path / "state.db"
    probe = (
        "import sys; from syncengine.state import StateStore; "
        f"StateStore.open({f'sqlite:///{db_path}'!r}).close(); "
        "print('alembic' in sys.modules)"
    )

    def opened() -> str:
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    assert opened() == "False"  # a new file: created at the head
    assert opened() == "False"  # at the head: nothing to migrate
    engine = sa.create_engine(f"sqlite:///{db_path}")
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "-1")
    engine.dispose()
    assert opened() == "True"  # behind the head: migrated
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [(SCHEMA_HEAD,)]


def test_a_database_with_other_tables_still_gets_a_new_store(tmp_path: Path) -> None:
    """Tables that are not the store's (a database shared with another application) do not
    make it an existing store: the store's tables are created beside them, the others kept."""
    db_path = tmp_path / "state.db"
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE theirs (id INTEGER PRIMARY KEY, note TEXT)")
        raw.execute("INSERT INTO theirs (note) VALUES ('kept')")
    _created(f"sqlite:///{db_path}")
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT note FROM theirs").fetchall() == [("kept",)]
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [(SCHEMA_HEAD,)]


def test_a_view_by_the_name_of_a_store_table_is_not_a_new_store(tmp_path: Path) -> None:
    """Another application's view named ``runs`` is not skipped over: the store refuses to
    open, naming it, and creates nothing."""
    db_path = tmp_path / "state.db"
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE app_events (id INTEGER PRIMARY KEY, what TEXT)")
        raw.execute("CREATE VIEW runs AS SELECT id, what FROM app_events")
    with pytest.raises(StateError, match="runs"):
        StateStore.open(f"sqlite:///{db_path}")
    with sqlite3.connect(db_path) as raw:
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert names == {"app_events", "runs"}
