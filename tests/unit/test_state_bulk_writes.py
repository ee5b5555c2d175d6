"""The state store's bulk writes (records, links, intents and their outcomes) go to the driver
directly: what they store must be, byte for byte, what SQLAlchemy's own executemany stores
for the same values, and must read back as written, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.errors import StateError
from syncengine.state import StateStore
from syncengine.state.schema import journal, links, records

E = "customers"
BULK, REFERENCE = "bulk", "reference"
"""The pipeline the store's bulk methods write, and the one SQLAlchemy writes the same to."""


def bases(backend: str) -> dict[str, Any]:
    """key -> a base holding the values whose JSON text could come out differently."""
    values: dict[str, Any] = {
        "k1": {"name": 'Zoë ✓ "quoted" \\ back', "tags": ["a", "é", ""], "none": None},
        "k2": {"nested": {"list": [1, 2.5, -0.1, 1e-7, 12345678901234567890], "ok": True}},
        "k3": {"big": 2**70, "neg": -(2**65), "false": False, "zero": 0.0},
        "k4": {},
        "k5": {"1": "digits as key", "emoji": "\U0001f600", "nl": "a\nb\tc"},
    }
    if backend == "sqlite":  # PostgreSQL's json refuses these whichever way they are sent
        values["k6"] = {"inf": float("inf"), "minus_inf": float("-inf")}
    return values


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    backend = request.param
    url = (
        f"sqlite:///{tmp_path / 'state.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    with StateStore.open(url) as opened:
        yield opened


def backend_of(store: StateStore) -> str:
    return store.engine.dialect.name


def link_rows(pipeline: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for i, (key, base) in enumerate(values.items()):
        for member in ("hcp", "sheet"):
            rows.append(
                {
                    "pipeline": pipeline,
                    "entity": E,
                    "key": key,
                    "member": member,
                    "native_id": f"{member}-{key}",
                    "native_hash": None if i % 2 else f"hash-{key}",
                    "last_seen": None if member == "hcp" and i % 2 else base,
                    "dirty": i % 2 == 0,
                    "tombstone": member == "sheet" and i % 3 == 0,
                }
            )
    return rows


def write_bulk(store: StateStore, values: dict[str, Any]) -> list[int]:
    """Write every kind of bulk row through the store; returns the intent ids."""
    with store.transaction() as tx:
        tx.put_records(
            [{"pipeline": BULK, "entity": E, "key": k, "base": v} for k, v in values.items()]
        )
        tx.put_links(link_rows(BULK, values))
        ids = tx.add_intents(
            [
                {
                    "run_id": "run-1",
                    "pipeline": BULK,
                    "entity": E,
                    "key": key,
                    "member": "sheet",
                    "op": "update" if i % 2 else "create",
                    "payload": base,
                    "holder": None if i % 2 else "holder-1",
                }
                for i, (key, base) in enumerate(values.items())
            ]
        )
    with store.transaction() as tx:  # the first two stay pending
        tx.finish_intents(
            [{"id": ids[2], "state": "done", "native_id": "n-2"}]
            + [{"id": i, "state": "failed", "error": "refused: ünïcode"} for i in ids[3:]]
        )
    return ids


def write_reference(store: StateStore, ids: list[int]) -> dict[int, int]:
    """Write what `write_bulk` wrote again, under the reference pipeline, through SQLAlchemy's
    own executemany (its timestamps as SQLAlchemy reads the bulk ones back); returns bulk
    intent id -> its reference copy's id."""
    with store.engine.begin() as conn:
        stored = [dict(r._mapping) for r in conn.execute(sa.select(records))]
        conn.execute(sa.insert(records), [{**r, "pipeline": REFERENCE} for r in stored])
        stored = [dict(r._mapping) for r in conn.execute(sa.select(links))]
        conn.execute(sa.insert(links), [{**r, "pipeline": REFERENCE} for r in stored])
        stored = [dict(r._mapping) for r in conn.execute(sa.select(journal))]
        copies = {i: max(ids) + n + 1 for n, i in enumerate(ids)}
        conn.execute(
            sa.insert(journal),
            [{**r, "pipeline": REFERENCE, "id": copies[r["id"]]} for r in stored],
        )
    return copies


def raw(store: StateStore, table: sa.Table, order: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` but its pipeline, as the database holds it: on SQLite each
    value with its storage class, on PostgreSQL each value's text."""
    columns = [c.name for c in table.columns if c.name not in ("pipeline", "id")]
    if backend_of(store) == "sqlite":
        select = ", ".join(f'typeof("{c}"), "{c}"' for c in columns)
    else:
        select = ", ".join(f'"{c}"::text' for c in columns)
    sql = f"SELECT pipeline, {select} FROM {table.name} ORDER BY {order}"
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(sql).all()
    return [tuple(row) for row in rows]


def by_pipeline(rows: list[tuple[Any, ...]]) -> dict[str, list[tuple[Any, ...]]]:
    split: dict[str, list[tuple[Any, ...]]] = {BULK: [], REFERENCE: []}
    for pipeline, *values in rows:
        split[pipeline].append(tuple(values))
    return split


def test_bulk_writes_store_the_bytes_sqlalchemy_stores(store: StateStore) -> None:
    values = bases(backend_of(store))
    ids = write_bulk(store, values)
    write_reference(store, ids)

    for table, order in (
        (records, '"key"'),
        (links, '"key", member'),
        (journal, '"key", run_id'),
    ):
        split = by_pipeline(raw(store, table, order))
        assert len(split[BULK]) >= len(values)
        assert split[BULK] == split[REFERENCE], table.name


def test_bulk_writes_read_back_as_written(store: StateStore) -> None:
    values = bases(backend_of(store))
    ids = write_bulk(store, values)

    loaded = store.load_records(BULK, E, list(values))
    assert {k: r.base for k, r in loaded.items()} == values
    for row in link_rows(BULK, values):
        link = loaded[row["key"]].links[row["member"]]
        assert (
            link.native_id,
            link.native_hash,
            link.last_seen,
            link.dirty,
            link.tombstone,
        ) == (
            row["native_id"],
            row["native_hash"],
            row["last_seen"],
            row["dirty"],
            row["tombstone"],
        )
    pending = store.pending_intents(BULK)
    assert [(i.id, i.key, i.payload, i.holder) for i in pending] == [
        (ids[0], "k1", values["k1"], "holder-1"),
        (ids[1], "k2", values["k2"], None),
    ]
    with store.engine.connect() as conn:
        finished = conn.execute(
            sa.select(journal.c.id, journal.c.state, journal.c.native_id, journal.c.error).where(
                journal.c.id.in_(ids[2:])
            )
        ).all()
        stamps = conn.execute(
            sa.select(journal.c.created_at, journal.c.finished_at).where(journal.c.id == ids[2])
        ).one()
    assert sorted(tuple(r) for r in finished) == [(ids[2], "done", "n-2", None)] + [
        (i, "failed", None, "refused: ünïcode") for i in ids[3:]
    ]
    assert stamps.created_at.utcoffset() is not None
    assert stamps.finished_at >= stamps.created_at


def test_bulk_writes_go_to_the_driver_without_sqlalchemys_statement(store: StateStore) -> None:
    compiled: dict[str, bool] = {}

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any) -> None:
        verb = statement.split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE"):
            table = statement.split()[2 if verb == "INSERT" else 1]
            compiled[table] = compiled.get(table, False) or context.compiled is not None

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        write_bulk(store, bases(backend_of(store)))
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)
    assert compiled == {"records": False, "links": False, "journal": False}


def test_a_value_json_cannot_hold_is_refused_as_sqlalchemy_refused_it(store: StateStore) -> None:
    """SQLite: refused before sending, as a `StateError` caused by SQLAlchemy's
    ``StatementError``. PostgreSQL: psycopg serializes the JSON itself while sending, and its
    ``TypeError`` comes through as it did before the bulk writes went to the driver."""
    row = {"pipeline": BULK, "entity": E, "key": "k1", "base": {"price": Decimal("1.50")}}
    refused = StateError if backend_of(store) == "sqlite" else TypeError
    with (
        pytest.raises(refused, match=r"Object of type Decimal is not JSON serializable") as e,
        store.transaction() as tx,
    ):
        tx.put_records([row])
    if refused is StateError:
        assert "write failed" in str(e.value)
        assert isinstance(e.value.__cause__, sa.exc.StatementError)
    assert store.load_records(BULK, E, ["k1"]) == {}


def test_a_column_converts_each_distinct_value_once_per_run_of_it() -> None:
    """A bulk statement converts a timestamp or flag column once per run of one value (the
    rows of a batch share one ``_now()``); rows whose values differ still get each its own
    conversion."""
    import datetime as dt

    from sqlalchemy.dialects import sqlite

    from syncengine.state.store import _driver_statement

    t1 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    t2 = dt.datetime(2026, 1, 2, 3, 4, 6, tzinfo=dt.UTC)
    t3 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)  # equal to t1, another object
    keys = ("pipeline", "entity", "key", "base", "updated_at")
    rows = [
        {"pipeline": "p", "entity": E, "key": f"k{i}", "base": {}, "updated_at": t}
        for i, t in enumerate([t1, t1, t2, t1, t3, t2, t2])
    ]
    statement = _driver_statement(sa.insert(records), sqlite.dialect(), keys)
    converted = statement.driver_rows(rows)
    column = [name for name, *_rest in statement.params].index("updated_at")
    stamps = [row[column] for row in converted]  # type: ignore[index]
    assert stamps == [
        "2026-01-02 03:04:05.000000",
        "2026-01-02 03:04:05.000000",
        "2026-01-02 03:04:06.000000",
        "2026-01-02 03:04:05.000000",
        "2026-01-02 03:04:05.000000",
        "2026-01-02 03:04:06.000000",
        "2026-01-02 03:04:06.000000",
    ]


def test_bulk_dirty_unlink_and_delete_change_what_row_by_row_statements_change(
    store: StateStore,
) -> None:
    """``set_dirty_links``, ``delete_links`` and ``delete_records`` (one statement for many
    keys) leave the tables as SQLAlchemy's statements run key by key leave them: the same
    links dirty, the same links and records gone with their skips and open conflicts, and
    nothing else touched (another pipeline, another entity, a resolved conflict)."""
    from syncengine.state.schema import conflicts, skips

    keys = [f"k{n}" for n in range(6)]

    def seed(pipeline: str) -> None:
        with store.transaction() as tx:
            for entity in (E, "invoices"):
                tx.put_records(
                    [{"pipeline": pipeline, "entity": entity, "key": k, "base": {}} for k in keys]
                )
                tx.put_links(
                    [
                        {"pipeline": pipeline, "entity": entity, "key": k, "member": m}
                        for k in keys
                        for m in ("hcp", "sheet")
                    ]
                )
                for k in keys:
                    tx.add_conflict(pipeline, entity, k, "email", {"hcp": "a", "sheet": "b"}, None)
                    tx.set_skips(pipeline, entity, k, {"hcp": "cannot update"})
            tx.add_conflict(pipeline, E, "k4", "phone", {"hcp": "1", "sheet": "2"}, None)
        resolved = next(
            c
            for c in store.open_conflicts(pipeline)
            if c.entity == E and c.key == "k4" and c.field == "phone"
        )
        with store.transaction() as tx:
            tx.resolve_conflict(resolved.id, {"value": "1"})

    seed(BULK)
    seed(REFERENCE)
    dirty = [("k0", "hcp"), ("k1", "sheet"), ("k1", "hcp")]
    unlinked = [("k2", "sheet")]
    deleted = ["k3", "k4"]
    with store.transaction() as tx:
        tx.set_dirty_links(
            [{"pipeline": BULK, "entity": E, "key": k, "member": m} for k, m in dirty]
        )
        tx.delete_links(
            [{"pipeline": BULK, "entity": E, "key": k, "member": m} for k, m in unlinked]
        )
        tx.delete_records([{"pipeline": BULK, "entity": E, "key": k} for k in deleted])
    with store.engine.begin() as conn:  # the reference: SQLAlchemy, one key at a time
        for k, m in dirty:
            conn.execute(
                sa.update(links)
                .where(
                    links.c.pipeline == REFERENCE,
                    links.c.entity == E,
                    links.c.key == k,
                    links.c.member == m,
                )
                .values(dirty=True)
            )
        for k, m in unlinked:
            conn.execute(
                sa.delete(links).where(
                    links.c.pipeline == REFERENCE,
                    links.c.entity == E,
                    links.c.key == k,
                    links.c.member == m,
                )
            )
        for k in deleted:
            for table in (links, records, skips):
                conn.execute(
                    sa.delete(table).where(
                        table.c.pipeline == REFERENCE, table.c.entity == E, table.c.key == k
                    )
                )
            conn.execute(
                sa.delete(conflicts).where(
                    conflicts.c.pipeline == REFERENCE,
                    conflicts.c.entity == E,
                    conflicts.c.key == k,
                    conflicts.c.status == "open",
                )
            )

    for table, order in (
        (records, 'entity, "key"'),
        (links, 'entity, "key", member'),
        (skips, 'entity, "key", member'),
        (conflicts, 'entity, "key", field'),
    ):
        split = by_pipeline(raw(store, table, order))
        assert split[BULK], table.name
        assert _without_times(table, split[BULK]) == _without_times(table, split[REFERENCE]), (
            table.name
        )
    dirty_links = {
        (r.key, r.member)
        for r in store.query(
            lambda c: c.execute(
                sa.select(links.c.key, links.c.member).where(
                    links.c.pipeline == BULK, links.c.entity == E, links.c.dirty.is_(True)
                )
            ).all()
        )
    }
    assert dirty_links == set(dirty)
    left = {r.key for r in store.iter_records(BULK, E)}
    assert left == set(keys) - set(deleted)
    assert len(list(store.iter_records(BULK, "invoices"))) == len(keys), "another entity"


def _without_times(table: sa.Table, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``raw`` rows without the columns that hold times (and the ids, which differ)."""
    columns = [c.name for c in table.columns if c.name not in ("pipeline", "id")]
    width = 2 if rows and len(rows[0]) == 2 * len(columns) else 1
    keep = [i for i, name in enumerate(columns) if not name.endswith(("_at", "_seen"))]
    return [tuple(v for i in keep for v in row[i * width : (i + 1) * width]) for row in rows]


def test_skips_set_for_many_keys_keep_first_seen_for_an_unchanged_reason(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``set_skips_of`` (one query and a few statements for many keys) does for each key what
    ``set_skips`` promises: an unchanged reason keeps its first-seen time, a changed one
    starts again, a member no longer skipped is dropped, a new one is added; keys not named,
    and other entities, are left alone."""
    from datetime import UTC, datetime

    from syncengine.state import store as state_store
    from syncengine.state.schema import skips

    first, later = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    monkeypatch.setattr(state_store, "_now", lambda: first)
    many = {f"k{n}": {"hcp": "cannot update", "crm": "waits"} for n in range(1_200)}
    with store.transaction() as tx:  # more keys than one query's batch
        tx.set_skips_of(BULK, E, many)
        tx.set_skips_of(BULK, "invoices", {"k0": {"hcp": "cannot update"}})
    monkeypatch.setattr(state_store, "_now", lambda: later)
    with store.transaction() as tx:
        tx.set_skips_of(
            BULK,
            E,
            {
                "k0": {"hcp": "cannot update", "crm": "waits"},  # unchanged
                "k1": {"hcp": "another reason"},  # changed; crm no longer skipped
                "k2": {"hcp": "cannot update", "crm": "waits", "sheet": "new"},  # one more
                "k1199": {},  # none left
            },
        )

    def rows(entity: str) -> dict[tuple[str, str], tuple[str, datetime, datetime]]:
        found = store.query(
            lambda c: c.execute(
                sa.select(
                    skips.c.key,
                    skips.c.member,
                    skips.c.reason,
                    skips.c.first_seen,
                    skips.c.last_seen,
                ).where(skips.c.pipeline == BULK, skips.c.entity == entity)
            ).all()
        )
        return {(k, m): (r, f, s) for k, m, r, f, s in found}

    held = rows(E)
    assert held[("k0", "hcp")] == ("cannot update", first, later)
    assert held[("k0", "crm")] == ("waits", first, later)
    assert held[("k1", "hcp")] == ("another reason", later, later)
    assert ("k1", "crm") not in held
    assert held[("k2", "sheet")] == ("new", later, later)
    assert held[("k2", "hcp")] == ("cannot update", first, later)
    assert not any(k == "k1199" for k, _m in held)
    assert held[("k3", "hcp")] == ("cannot update", first, first), "a key not named"
    assert len(held) == 2 * 1_200 - 1 - 2 + 1
    assert rows("invoices") == {("k0", "hcp"): ("cannot update", first, first)}


def test_bulk_dirty_unlink_delete_and_skips_go_to_the_driver_too(store: StateStore) -> None:
    """The statements for many keys at once are compiled once and sent to the driver, not
    through SQLAlchemy's per-call compilation (a literal value in one would make it fall back
    to ``conn.execute``, correct but slower: found by a review)."""
    keys = [f"k{n}" for n in range(3)]
    with store.transaction() as tx:
        tx.put_records([{"pipeline": BULK, "entity": E, "key": k, "base": {}} for k in keys])
        tx.put_links(
            [{"pipeline": BULK, "entity": E, "key": k, "member": m} for k in keys for m in "ab"]
        )
        tx.set_skips_of(BULK, E, {k: {"a": "cannot update", "b": "waits"} for k in keys})
    sent: dict[tuple[str, str], bool] = {}

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any) -> None:
        words = statement.split()
        verb = words[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE"):
            table = words[1] if verb == "UPDATE" else words[2]
            sent[(verb, table)] = sent.get((verb, table), False) or context.compiled is not None

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        with store.transaction() as tx:
            link = {"pipeline": BULK, "entity": E, "key": "k0"}
            tx.set_dirty_links([{**link, "member": "a"}])
            tx.delete_links([{**link, "member": "b"}])
            tx.set_skips_of(BULK, E, {"k1": {"a": "cannot update", "c": "new"}})
            tx.delete_records([{"pipeline": BULK, "entity": E, "key": "k2"}])
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)
    assert sent == {
        ("UPDATE", "links"): False,
        ("DELETE", "links"): False,
        ("DELETE", "skips"): False,
        ("UPDATE", "skips"): False,
        ("INSERT", "skips"): False,
        ("DELETE", "conflicts"): False,
        ("DELETE", "records"): False,
    }
