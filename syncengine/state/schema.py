"""The state store's tables, as SQLAlchemy Core `Table`s on one `MetaData`.

Core, not ORM: the engine streams whole entities (100k records) through the store and
must never hold one Python object per row beyond the batch it is working on.

Migrations under `migrations/versions/` create exactly these tables; a unit test checks
that the migrated schema and this module agree (`alembic` `compare_metadata`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from syncengine.errors import StateError

__all__ = [
    "CONFLICT_STATUSES",
    "INTENT_OPS",
    "INTENT_STATES",
    "UTCDateTime",
    "alerts",
    "audit",
    "conflicts",
    "dialect_insert",
    "held_deletes",
    "inbox",
    "inbox_done",
    "journal",
    "leases",
    "links",
    "mapping_marks",
    "metadata",
    "pipeline_state",
    "read_marks",
    "records",
    "review_items",
    "runs",
    "skips",
]

INTENT_OPS = ("create", "update", "delete", "assign")
INTENT_STATES = ("pending", "done", "failed", "abandoned")
CONFLICT_STATUSES = ("open", "resolved")
REVIEW_STATUSES = ("open", "linked", "separate", "closed")
HELD_STATUSES = ("held", "approved", "restored", "done", "cleared")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    Naive datetimes are refused when written (they are ambiguous). SQLite has no time zone
    type, so there the value is stored as naive UTC and made aware again when read;
    PostgreSQL stores `timestamptz`.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: state store timestamps must be aware")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - drivers return datetimes
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def dialect_insert(dialect: str) -> Callable[[sa.Table], Any]:
    """The store database's ``INSERT`` with ``ON CONFLICT``: SQLite's or PostgreSQL's, whose
    upserts are written alike, so that each statement is written once for both."""
    if dialect == "sqlite":
        return sqlite.insert
    if dialect == "postgresql":
        return postgresql.insert
    raise StateError(f"unsupported database dialect {dialect!r}")


def _in(column: str, allowed: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(a) for a in allowed)})"


metadata = sa.MetaData(naming_convention={"pk": "pk_%(table_name)s"})

# The golden/base canonical record per hub key.
records = sa.Table(
    "records",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("entity", sa.String(), primary_key=True),
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("base", sa.JSON(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# One row per (record, member): the member's native id, the hash of its native record and
# its canonical values as last seen (echo suppression and the raw-hash short-circuit).
# Every link belongs to a record; the check is deferred to commit so that a batch may
# write links before their record.
links = sa.Table(
    "links",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("entity", sa.String(), primary_key=True),
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("member", sa.String(), primary_key=True),
    sa.Column("native_id", sa.String(), nullable=True),
    sa.Column("native_hash", sa.String(), nullable=True),
    sa.Column("last_seen", sa.JSON(), nullable=True),
    sa.Column("dirty", sa.Boolean(), nullable=False),
    sa.Column("tombstone", sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(
        ["pipeline", "entity", "key"],
        ["records.pipeline", "records.entity", "records.key"],
        name="fk_links_records",
        ondelete="CASCADE",
        deferrable=True,
        initially="DEFERRED",
    ),
    sa.Index("uq_links_native_id", "pipeline", "entity", "member", "native_id", unique=True),
    sa.Index("ix_links_dirty", "pipeline", "entity", "dirty"),
)

# Write-ahead intents: recorded before a write is attempted, finished after. An intent
# belongs to its run (``run_id``) and to the lease holder that run synced under (``holder``;
# NULL for intents written before migration 0004, or by a run that held no lease): recovery
# settles it only once that holder's lease on the pipeline is gone.
journal = sa.Table(
    "journal",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(), nullable=False),
    sa.Column("pipeline", sa.String(), nullable=False),
    sa.Column("entity", sa.String(), nullable=False),
    sa.Column("key", sa.String(), nullable=False),
    sa.Column("member", sa.String(), nullable=False),
    sa.Column("op", sa.String(), nullable=False),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("native_id", sa.String(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("holder", sa.String(), nullable=True),  # last: added by migration 0004
    sa.CheckConstraint(_in("op", INTENT_OPS), name="ck_journal_op"),
    sa.CheckConstraint(_in("state", INTENT_STATES), name="ck_journal_state"),
    sa.Index("ix_journal_pipeline_state", "pipeline", "state"),
    sqlite_autoincrement=True,
)

# Field-level conflicts. At most one open conflict per (pipeline, entity, key, field):
# a partial unique index, which the upsert in `Tx.add_conflict` targets.
conflicts = sa.Table(
    "conflicts",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(), nullable=False),
    sa.Column("entity", sa.String(), nullable=False),
    sa.Column("key", sa.String(), nullable=False),
    sa.Column("field", sa.String(), nullable=False),
    sa.Column("values", sa.JSON(), nullable=False),
    sa.Column("base_value", sa.JSON(), nullable=True),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("resolution", sa.JSON(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("resolved_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(_in("status", CONFLICT_STATUSES), name="ck_conflicts_status"),
    sa.Index(
        "uq_conflicts_open",
        "pipeline",
        "entity",
        "key",
        "field",
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    ),
    sa.Index("ix_conflicts_status", "status", "pipeline", "entity"),
    sqlite_autoincrement=True,
)

# Run history.
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("run_uuid", sa.String(), nullable=False),
    sa.Column("pipeline", sa.String(), nullable=False),
    sa.Column("dry_run", sa.Boolean(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("outcome", sa.String(), nullable=True),
    sa.Column("counts", sa.JSON(), nullable=False),
    sa.Column("errors", sa.JSON(), nullable=False),
    sa.Index("uq_runs_run_uuid", "run_uuid", unique=True),
    sa.Index("ix_runs_pipeline_id", "pipeline", "id"),
    sa.Index("ix_runs_started_at", "started_at"),
    sqlite_autoincrement=True,
)

# Writes a member cannot take (remembered so they are reported once, not retried forever).
skips = sa.Table(
    "skips",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("entity", sa.String(), primary_key=True),
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("member", sa.String(), primary_key=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("first_seen", UTCDateTime(), nullable=False),
    sa.Column("last_seen", UTCDateTime(), nullable=False),
)

# One runner per pipeline: a manual sync or a daemon's run (``kind``), since ``acquired_at``
# (both NULL on leases taken before migration 0004).
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("holder", sa.String(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("kind", sa.String(), nullable=True),
    sa.Column("acquired_at", UTCDateTime(), nullable=True),
)

# Per pipeline, what the daemon decided about running it: paused (until someone resumes it)
# and the failure backoff. Shared by every daemon on the store (migration 0002).
pipeline_state = sa.Table(
    "pipeline_state",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("paused", sa.Boolean(), nullable=False),
    sa.Column("paused_reason", sa.Text(), nullable=True),
    sa.Column("paused_at", UTCDateTime(), nullable=True),
    sa.Column("paused_fingerprint", sa.String(), nullable=True),
    sa.Column("failures", sa.Integer(), nullable=False),
    sa.Column("backoff_until", UTCDateTime(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# Per pipeline, entity and member, the token of the member's last incremental read whose
# records were all committed (opaque: the connector gives it and reads it back; migration 0003).
read_marks = sa.Table(
    "read_marks",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("entity", sa.String(), primary_key=True),
    sa.Column("member", sa.String(), primary_key=True),
    sa.Column("token", sa.Text(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)


# Webhook events received and not yet pruned: stored before the delivery is acknowledged,
# once per body (``digest``: a redelivery is the same event), for the runs of every pipeline
# that has the connector as a member (migration 0005).
inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("connector", sa.String(), nullable=False),
    sa.Column("digest", sa.String(), nullable=False),
    sa.Column("event", sa.String(), nullable=False),
    sa.Column("entities", sa.JSON(), nullable=False),
    sa.Column("record_id", sa.String(), nullable=True),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("occurred_at", sa.String(), nullable=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Index("uq_inbox_connector_digest", "connector", "digest", unique=True),
    sa.Index("ix_inbox_received_at", "received_at"),
    sqlite_autoincrement=True,
)

# Which pipeline's run took which inbox event, committed with that run's outcome: an event
# is taken once per pipeline (migration 0005).
inbox_done = sa.Table(
    "inbox_done",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("event_id", sa.Integer(), primary_key=True),
    sa.Column("run_id", sa.String(), nullable=False),
    sa.Column("done_at", UTCDateTime(), nullable=False),
    sa.Index("ix_inbox_done_event_id", "event_id"),
)


# Per pipeline, entity and member, the fingerprint of the mapping its last complete, committed
# read was made with: a changed mapping reads every record again (migration 0006).
mapping_marks = sa.Table(
    "mapping_marks",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("entity", sa.String(), primary_key=True),
    sa.Column("member", sa.String(), primary_key=True),
    sa.Column("fingerprint", sa.String(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)


# The review queue: records new on a member that match several hub records, or look like a
# copy of another (``match``), one row per (pipeline, entity, member, native id), refreshed
# by every run that finds it again. ``linked`` and ``separate`` are a person's decisions (kept
# for good: the next runs act on them); ``closed``: the record is gone or no longer ambiguous
# (migration 0007).
review_items = sa.Table(
    "review_items",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(), nullable=False),
    sa.Column("entity", sa.String(), nullable=False),
    sa.Column("member", sa.String(), nullable=False),
    sa.Column("native_id", sa.String(), nullable=False),
    sa.Column("native_hash", sa.String(), nullable=True),
    sa.Column("provisional", sa.Boolean(), nullable=False),
    sa.Column("location", sa.Text(), nullable=True),
    sa.Column("label", sa.Text(), nullable=False),
    sa.Column("fields", sa.JSON(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("candidates", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("hub_key", sa.String(), nullable=True),
    sa.Column("decided_by", sa.String(), nullable=True),
    sa.Column("decided_at", UTCDateTime(), nullable=True),
    sa.Column("first_seen", UTCDateTime(), nullable=False),
    sa.Column("last_seen", UTCDateTime(), nullable=False),
    sa.CheckConstraint(_in("status", REVIEW_STATUSES), name="ck_review_items_status"),
    sa.Index("uq_review_items_record", "pipeline", "entity", "member", "native_id", unique=True),
    sa.Index("ix_review_items_status", "status", "pipeline"),
    sqlite_autoincrement=True,
)

# Deletes awaiting a person: a record one member deleted, held from the others
# (``[pipelines.deletes] approve``), or one of a batch a delete guard stopped (``guard`` holds
# its explanation). ``approved`` deletes are carried out by the next run (then ``done``);
# ``restored`` ones are given back to the member that deleted them; ``cleared``: a guard's
# batch that no longer stands (migration 0007).
held_deletes = sa.Table(
    "held_deletes",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(), nullable=False),
    sa.Column("entity", sa.String(), nullable=False),
    sa.Column("key", sa.String(), nullable=False),
    sa.Column("member", sa.String(), nullable=False),
    sa.Column("reach", sa.JSON(), nullable=False),
    sa.Column("label", sa.Text(), nullable=False),
    sa.Column("guard", sa.Text(), nullable=True),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("held_at", UTCDateTime(), nullable=False),
    sa.Column("decided_by", sa.String(), nullable=True),
    sa.Column("decided_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(_in("status", HELD_STATUSES), name="ck_held_deletes_status"),
    sa.Index(
        "uq_held_deletes_held",
        "pipeline",
        "entity",
        "key",
        "member",
        unique=True,
        sqlite_where=sa.text("status = 'held'"),
        postgresql_where=sa.text("status = 'held'"),
    ),
    sa.Index("ix_held_deletes_status", "status", "pipeline", "entity"),
    sqlite_autoincrement=True,
)

# Who did what to the state, and when: every action of the console and the CLI, with what
# it changed (``before`` and ``after``, secrets never included; migration 0007).
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Column("action", sa.String(), nullable=False),
    sa.Column("target", sa.Text(), nullable=False),
    sa.Column("pipeline", sa.String(), nullable=True),
    sa.Column("before", sa.JSON(), nullable=True),
    sa.Column("after", sa.JSON(), nullable=True),
    sa.Index("ix_audit_at", "at"),
    sqlite_autoincrement=True,
)


# Alerts (``syncengine.alerts``): one row per condition (pipeline, event, detail), open or
# cleared, with when it was last told (its reminders count from there). Every change is a
# compare-and-set on ``version`` (the first row: an insert that only one daemon wins), so
# that several daemons on one store send each alert once (migration 0008).
alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("pipeline", sa.String(), primary_key=True),
    sa.Column("event", sa.String(), primary_key=True),
    sa.Column("detail", sa.String(), primary_key=True),
    sa.Column("open", sa.Boolean(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("mark", sa.BigInteger(), nullable=True),
    sa.Column("opened_at", UTCDateTime(), nullable=False),
    sa.Column("notified_at", UTCDateTime(), nullable=False),
    sa.Column("cleared_at", UTCDateTime(), nullable=True),
    sa.Column("summary", sa.Text(), nullable=False),
)
