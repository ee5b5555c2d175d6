"""Who may run a pipeline, and when: leases, pauses and failure backoff (SQL for `store.py`).

A **lease** makes one runner per pipeline across processes and hosts. ``acquire`` is one
statement, atomic on SQLite and PostgreSQL alike::

    INSERT INTO leases (pipeline, holder, expires_at) VALUES (:p, :me, :now + ttl)
    ON CONFLICT (pipeline) DO UPDATE SET holder = :me, expires_at = :now + ttl
    WHERE leases.expires_at < :now OR leases.holder = :me
    RETURNING holder

A row comes back only when the lease was free, expired or already ours. The holder renews it
(``renew``: only while it is still the holder) and deletes it when done (``release``); a
crashed holder's lease simply expires. "Now" is the database server's clock on PostgreSQL
(daemons on several hosts share one clock) and this host's clock on SQLite (one host).

Every run that writes holds the lease: a daemon's run and a manual ``syncengine sync``
alike (``kind`` says which, ``acquired_at`` since when: ``Lease.describe`` names the run for
the message of one that finds the pipeline busy). ``live_lease`` is the lease that still
holds, by the same clock.

The **pipeline state** row is what the daemon decided about a pipeline: paused (after the
credentials were refused, or by an operator) and the failure count with the backoff that
follows it. It lives in the store so that every daemon and ``syncengine status`` see it.

These functions take an open connection inside a transaction; ``StateStore`` and ``Tx``
expose them (``Tx.acquire_lease``, ``StateStore.leases``, ...).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from syncengine.state.schema import UTCDateTime, dialect_insert, leases, pipeline_state

__all__ = [
    "Lease",
    "PipelineState",
    "acquire",
    "db_now",
    "holder_id",
    "live_lease",
    "pause",
    "read_leases",
    "read_pipeline_states",
    "record_failure",
    "record_success",
    "release",
    "renew",
    "resume",
]


@dataclass(frozen=True)
class Lease:
    pipeline: str
    holder: str
    expires_at: datetime
    kind: str | None = None
    """``sync`` (a manual run) or ``daemon``; None on a lease taken before migration 0004."""
    acquired_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at < now

    def describe(self, now: datetime | None = None) -> str:
        """The run holding the lease, for people: ``sync by pid 1234 on host x, started
        12:01:05`` (in this machine's local time; with the date when not today)."""
        what = _KINDS.get(self.kind or "", "run")
        host, _, rest = self.holder.partition(":")
        pid = rest.partition(":")[0]
        text = (
            f"{what} by pid {pid} on host {host}" if pid.isdigit() else f"{what} by {self.holder}"
        )
        if self.acquired_at is not None:
            local = self.acquired_at.astimezone()
            today = (now or datetime.now(UTC)).astimezone().date()
            when = f"{local:%H:%M:%S}" if local.date() == today else f"{local:%Y-%m-%d %H:%M:%S}"
            text += f", started {when}"
        return text

    def gone_from_here(self) -> bool:
        """Whether the holder is a process of this host that no longer runs (killed, or a
        machine restarted): its lease only waits for its ttl. False when that cannot be told
        (another host, or the process is there)."""
        host, _, rest = self.holder.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:  # there, but another user's
            return False
        return False


_KINDS = {"sync": "sync", "daemon": "daemon run"}
"""How ``Lease.describe`` names each kind of run."""


@dataclass(frozen=True)
class PipelineState:
    """The daemon's state of one pipeline (a missing row means: runnable, no failures)."""

    pipeline: str
    paused: bool = False
    paused_reason: str | None = None
    paused_at: datetime | None = None
    paused_fingerprint: str | None = None
    failures: int = 0
    backoff_until: datetime | None = None
    last_error: str | None = None


def holder_id() -> str:
    """``hostname:pid:random`` — unique per process start, readable in ``status``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def db_now(conn: sa.Connection) -> datetime:
    """The time leases are measured in: the server's on PostgreSQL, this host's elsewhere."""
    if conn.dialect.name == "postgresql":
        value = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
        if isinstance(value, datetime):
            return value.astimezone(UTC)
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------ leases


def acquire(
    conn: sa.Connection, pipeline: str, holder: str, ttl: float, kind: str | None = None
) -> bool:
    """Take the pipeline's lease for ``ttl`` seconds if it is free, expired or ours, for a
    run of ``kind`` (``sync``, ``daemon``)."""
    now = db_now(conn)
    expires = now + timedelta(seconds=ttl)
    stmt = dialect_insert(conn.dialect.name)(leases).values(
        pipeline=pipeline, holder=holder, expires_at=expires, kind=kind, acquired_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["pipeline"],
        set_={
            "holder": stmt.excluded.holder,
            "expires_at": stmt.excluded.expires_at,
            "kind": stmt.excluded.kind,
            "acquired_at": stmt.excluded.acquired_at,
        },
        where=sa.or_(
            leases.c.expires_at < sa.literal(now, UTCDateTime()), leases.c.holder == holder
        ),
    ).returning(leases.c.holder)
    return conn.execute(stmt).scalar_one_or_none() == holder


def renew(conn: sa.Connection, pipeline: str, holder: str, ttl: float) -> bool:
    """Extend our lease by ``ttl`` from now; False when it is no longer ours."""
    expires = db_now(conn) + timedelta(seconds=ttl)
    result = conn.execute(
        sa.update(leases)
        .where(leases.c.pipeline == pipeline, leases.c.holder == holder)
        .values(expires_at=expires)
    )
    return int(result.rowcount) == 1


def release(conn: sa.Connection, pipeline: str, holder: str) -> bool:
    """Give the lease up; False when it was not ours (any more)."""
    result = conn.execute(
        sa.delete(leases).where(leases.c.pipeline == pipeline, leases.c.holder == holder)
    )
    return int(result.rowcount) == 1


_LEASE_COLUMNS = (
    leases.c.pipeline,
    leases.c.holder,
    leases.c.expires_at,
    leases.c.kind,
    leases.c.acquired_at,
)


def read_leases(conn: sa.Connection) -> dict[str, Lease]:
    """Every lease row (expired ones included: ``Lease.expired`` tells)."""
    rows = conn.execute(sa.select(*_LEASE_COLUMNS))
    return {row[0]: Lease(*row) for row in rows}


_LEASE_OF: Final = sa.select(*_LEASE_COLUMNS).where(leases.c.pipeline == sa.bindparam("pipeline"))
"""A pipeline's lease row: every run reads it (built once: building it cost more than
running it on SQLite)."""


def live_lease(conn: sa.Connection, pipeline: str) -> Lease | None:
    """The pipeline's lease while it holds (by the clock leases are measured in), else None."""
    row = conn.execute(_LEASE_OF, {"pipeline": pipeline}).first()
    if row is None:
        return None
    lease = Lease(*row)
    return None if lease.expired(db_now(conn)) else lease


# ---------------------------------------------------------------------------- pipeline state

_STATE_COLUMNS = (
    "paused",
    "paused_reason",
    "paused_at",
    "paused_fingerprint",
    "failures",
    "backoff_until",
    "last_error",
)


def read_pipeline_states(conn: sa.Connection) -> dict[str, PipelineState]:
    query = sa.select(pipeline_state.c.pipeline, *(pipeline_state.c[c] for c in _STATE_COLUMNS))
    out = {}
    for row in conn.execute(query):
        values = dict(zip(("pipeline", *_STATE_COLUMNS), row, strict=True))
        values["paused"] = bool(values["paused"])
        out[row[0]] = PipelineState(**values)
    return out


def _upsert_state(conn: sa.Connection, pipeline: str, values: dict[str, Any]) -> None:
    """Set ``values`` on the pipeline's row, creating it (not paused, no failures) first."""
    now = datetime.now(UTC)
    row = {"pipeline": pipeline, "paused": False, "failures": 0, "updated_at": now, **values}
    stmt = dialect_insert(conn.dialect.name)(pipeline_state).values(**row)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["pipeline"],
            set_={name: stmt.excluded[name] for name in (*values, "updated_at")},
        )
    )


def pause(conn: sa.Connection, pipeline: str, reason: str, fingerprint: str | None = None) -> None:
    """Pause the pipeline until ``resume`` (or, with a ``fingerprint`` of the credentials it
    failed with, until a daemon starts with different ones)."""
    _upsert_state(
        conn,
        pipeline,
        {
            "paused": True,
            "paused_reason": reason,
            "paused_at": datetime.now(UTC),
            "paused_fingerprint": fingerprint,
        },
    )


def resume(conn: sa.Connection, pipeline: str) -> bool:
    """Clear a pause and any backoff; True when there was one to clear."""
    current = read_pipeline_states(conn).get(pipeline)
    if current is None or not (current.paused or current.failures or current.backoff_until):
        return False
    _upsert_state(
        conn,
        pipeline,
        {
            "paused": False,
            "paused_reason": None,
            "paused_at": None,
            "paused_fingerprint": None,
            "failures": 0,
            "backoff_until": None,
            "last_error": None,
        },
    )
    return True


def record_failure(
    conn: sa.Connection, pipeline: str, error: str, backoff: Callable[[int], float]
) -> PipelineState:
    """Count a failed run and set the backoff ``backoff(failures)`` seconds from now."""
    _upsert_state(conn, pipeline, {})
    failures = conn.execute(
        sa.update(pipeline_state)
        .where(pipeline_state.c.pipeline == pipeline)
        .values(failures=pipeline_state.c.failures + 1)
        .returning(pipeline_state.c.failures)
    ).scalar_one()
    until = datetime.now(UTC) + timedelta(seconds=backoff(int(failures)))
    _upsert_state(conn, pipeline, {"backoff_until": until, "last_error": error})
    return read_pipeline_states(conn)[pipeline]


def record_success(conn: sa.Connection, pipeline: str) -> None:
    """A run completed: forget earlier failures and their backoff."""
    conn.execute(
        sa.update(pipeline_state)
        .where(
            pipeline_state.c.pipeline == pipeline,
            sa.or_(pipeline_state.c.failures > 0, pipeline_state.c.backoff_until.is_not(None)),
        )
        .values(failures=0, backoff_until=None, last_error=None, updated_at=datetime.now(UTC))
    )
