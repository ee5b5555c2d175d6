"""The webhook inbox (SQL for ``store.py``): events stored before they are acknowledged, and
which pipeline's run took them (see ``syncengine.events``).

- ``store_event`` inserts an event once per connector and body digest (``INSERT ... ON
  CONFLICT DO NOTHING``): a redelivery of the same body is acknowledged but not stored again.
- ``pending`` lists a pipeline's events that no run of that pipeline took yet, oldest first.
- ``mark_done`` records that a run took them (inside the transaction recording its outcome).
- ``prune`` forgets events every pipeline concerned took, and any event older than a cutoff.

These functions take an open connection inside a transaction; ``StateStore`` and ``Tx``
expose them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final

import sqlalchemy as sa

from syncengine.events import InboxEvent
from syncengine.state.schema import dialect_insert, inbox, inbox_done

__all__ = ["count", "mark_done", "pending", "pending_count", "prune", "store_event"]


def store_event(
    conn: sa.Connection,
    *,
    connector: str,
    digest: str,
    event: str,
    entities: Sequence[str],
    record_id: str | None,
    payload: Mapping[str, Any],
    occurred_at: str | None,
) -> int | None:
    """Store one event; its inbox id, or None when this body was stored before."""
    row = {
        "connector": connector,
        "digest": digest,
        "event": event,
        "entities": list(entities),
        "record_id": record_id,
        "payload": dict(payload),
        "occurred_at": occurred_at,
        "received_at": datetime.now(UTC),
    }
    found = conn.execute(_insert_once(conn.dialect.name), row).scalar()
    return int(found) if found is not None else None


@cache
def _insert_once(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (connector, digest) DO NOTHING RETURNING id``, built once per
    dialect (with the row as parameters, its compiled form is cached too)."""
    insert = dialect_insert(dialect)(inbox)
    return insert.on_conflict_do_nothing(index_elements=["connector", "digest"]).returning(
        inbox.c.id
    )


_PENDING: Final = (
    sa.select(inbox)
    .where(
        inbox.c.connector.in_(sa.bindparam("connectors", expanding=True)),
        ~sa.exists(
            sa.select(inbox_done.c.event_id).where(
                inbox_done.c.pipeline == sa.bindparam("pipeline"),
                inbox_done.c.event_id == inbox.c.id,
            )
        ),
    )
    .order_by(inbox.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
"""The events of some connectors no run of a pipeline took yet: every run reads them
(built once: building it cost more than running it on SQLite)."""


def pending(
    conn: sa.Connection, pipeline: str, connectors: Iterable[str], limit: int
) -> list[InboxEvent]:
    """The events received on ``connectors`` that no run of ``pipeline`` took yet, oldest
    first, at most ``limit``."""
    names = sorted(set(connectors))
    if not names:
        return []
    where = {"pipeline": pipeline, "connectors": names, "limit": limit}
    return [_event(dict(row)) for row in conn.execute(_PENDING, where).mappings()]


def pending_count(conn: sa.Connection, pipeline: str, connectors: Iterable[str]) -> int:
    """How many events received on ``connectors`` no run of ``pipeline`` took yet."""
    names = sorted(set(connectors))
    if not names:
        return 0
    taken = sa.select(inbox_done.c.event_id).where(
        inbox_done.c.pipeline == pipeline, inbox_done.c.event_id == inbox.c.id
    )
    query = (
        sa.select(sa.func.count())
        .select_from(inbox)
        .where(inbox.c.connector.in_(names), ~sa.exists(taken))
    )
    return int(conn.execute(query).scalar_one())


def mark_done(conn: sa.Connection, pipeline: str, event_ids: Sequence[int], run_id: str) -> None:
    """Record that a run of ``pipeline`` took these events (once: taken ones stay as they
    are)."""
    if not event_ids:
        return
    now = datetime.now(UTC)
    rows = [
        {"pipeline": pipeline, "event_id": i, "run_id": run_id, "done_at": now}
        for i in sorted(set(event_ids))
    ]
    stmt = dialect_insert(conn.dialect.name)(inbox_done).on_conflict_do_nothing()
    conn.execute(stmt, rows)


def count(conn: sa.Connection, connector: str | None = None) -> int:
    """How many events the inbox holds (of ``connector``)."""
    query = sa.select(sa.func.count()).select_from(inbox)
    if connector is not None:
        query = query.where(inbox.c.connector == connector)
    return int(conn.execute(query).scalar_one())


def prune(
    conn: sa.Connection,
    concerned: Mapping[str, Sequence[str]],
    *,
    done_before: datetime,
    any_before: datetime,
) -> int:
    """Delete the events received before ``done_before`` that every pipeline concerned
    (``concerned``: connector -> the pipelines that have it as a member) took, and every
    event received before ``any_before`` (scheduled full passes have long covered it).
    How many were deleted."""
    gone: set[int] = set()
    old = sa.select(inbox.c.id).where(inbox.c.received_at < any_before)
    gone.update(int(i) for i in conn.execute(old).scalars())
    for connector, pipelines in concerned.items():
        wanted = sorted(set(pipelines))
        if not wanted:
            continue
        taken = (
            sa.select(sa.func.count(sa.distinct(inbox_done.c.pipeline)))
            .where(inbox_done.c.event_id == inbox.c.id, inbox_done.c.pipeline.in_(wanted))
            .scalar_subquery()
        )
        query = sa.select(inbox.c.id).where(
            inbox.c.connector == connector,
            inbox.c.received_at < done_before,
            taken >= len(wanted),
        )
        gone.update(int(i) for i in conn.execute(query).scalars())
    ids = sorted(gone)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        conn.execute(sa.delete(inbox_done).where(inbox_done.c.event_id.in_(chunk)))
        conn.execute(sa.delete(inbox).where(inbox.c.id.in_(chunk)))
    return len(ids)


def _event(row: Mapping[str, Any]) -> InboxEvent:
    received = row["received_at"]
    return InboxEvent(
        id=int(row["id"]),
        connector=str(row["connector"]),
        event=str(row["event"]),
        entities=tuple(str(e) for e in row["entities"] or ()),
        record_id=row["record_id"],
        payload=row["payload"] if isinstance(row["payload"], dict) else {},
        occurred_at=row["occurred_at"],
        received_at=received.timestamp() if isinstance(received, datetime) else 0.0,
    )
