"""The alerts' conditions in the state store (SQL for ``store.py``; ``syncengine.alerts``
decides what they mean).

- ``conditions`` reads a pipeline's conditions (open or cleared) with their version;
- ``claim`` writes one condition's new standing only if nobody changed it since it was
  read: the first row is an ``INSERT ... ON CONFLICT DO NOTHING``, every later change an
  ``UPDATE ... WHERE version = <the version read>``. Exactly one of several daemons that
  decide the same change wins (on PostgreSQL the loser's update waits for the winner's
  commit, then finds the version moved on), and only the winner sends the alert.

These functions take an open connection inside a transaction; ``Tx`` exposes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from syncengine.state.schema import alerts, dialect_insert

__all__ = ["ConditionRow", "claim", "conditions"]


@dataclass(frozen=True)
class ConditionRow:
    """One condition as stored: ``(pipeline, event, detail)`` and its standing."""

    pipeline: str
    event: str
    detail: str
    open: bool
    version: int
    mark: int | None
    opened_at: datetime
    notified_at: datetime
    cleared_at: datetime | None
    summary: str


def conditions(conn: sa.Connection, pipeline: str | None = None) -> list[ConditionRow]:
    """The stored conditions of one pipeline (or all), open ones first."""
    query = sa.select(
        alerts.c.pipeline,
        alerts.c.event,
        alerts.c.detail,
        alerts.c.open,
        alerts.c.version,
        alerts.c.mark,
        alerts.c.opened_at,
        alerts.c.notified_at,
        alerts.c.cleared_at,
        alerts.c.summary,
    ).order_by(alerts.c.open.desc(), alerts.c.pipeline, alerts.c.event, alerts.c.detail)
    if pipeline is not None:
        query = query.where(alerts.c.pipeline == pipeline)
    return [ConditionRow(**row._mapping) for row in conn.execute(query)]


def claim(conn: sa.Connection, row: ConditionRow, seen_version: int | None) -> bool:
    """Write ``row`` (its ``version`` is the new one) if the stored condition is still at
    ``seen_version`` (None: there was no row). True: this caller won and sends the alert."""
    values: dict[str, Any] = {
        "open": row.open,
        "version": row.version,
        "mark": row.mark,
        "opened_at": row.opened_at,
        "notified_at": row.notified_at,
        "cleared_at": row.cleared_at,
        "summary": row.summary,
    }
    key = {"pipeline": row.pipeline, "event": row.event, "detail": row.detail}
    if seen_version is None:
        insert = dialect_insert(conn.dialect.name)(alerts).on_conflict_do_nothing()
        # RETURNING, not rowcount: psycopg does not count a row ON CONFLICT DO NOTHING kept
        found = conn.execute(insert.returning(alerts.c.version), {**key, **values}).first()
        return found is not None
    result = conn.execute(
        sa.update(alerts)
        .where(
            alerts.c.pipeline == row.pipeline,
            alerts.c.event == row.event,
            alerts.c.detail == row.detail,
            alerts.c.version == seen_version,
        )
        .values(**values)
    )
    return bool(result.rowcount == 1)
