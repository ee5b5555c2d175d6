"""Initial state store: records, links, journal, conflicts, runs, skips, leases.

Revision ID: 0001
Revises:
Create Date: 2026-05-10

Portable to SQLite and PostgreSQL: no dialect-specific SQL; the partial unique index on open
conflicts is spelled for both dialects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "status = 'open'"


def _ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("pipeline", "entity", "key", name="pk_records"),
    )

    op.create_table(
        "links",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("member", sa.String(), nullable=False),
        sa.Column("native_id", sa.String(), nullable=True),
        sa.Column("native_hash", sa.String(), nullable=True),
        sa.Column("last_seen", sa.JSON(), nullable=True),
        sa.Column("dirty", sa.Boolean(), nullable=False),
        sa.Column("tombstone", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("pipeline", "entity", "key", "member", name="pk_links"),
        sa.ForeignKeyConstraint(
            ["pipeline", "entity", "key"],
            ["records.pipeline", "records.entity", "records.key"],
            name="fk_links_records",
            ondelete="CASCADE",
            deferrable=True,
            initially="DEFERRED",
        ),
    )
    op.create_index(
        "uq_links_native_id",
        "links",
        ["pipeline", "entity", "member", "native_id"],
        unique=True,
    )
    op.create_index("ix_links_dirty", "links", ["pipeline", "entity", "dirty"])

    op.create_table(
        "journal",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
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
        _ts("created_at"),
        _ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_journal"),
        sa.CheckConstraint("op IN ('create', 'update', 'delete', 'assign')", name="ck_journal_op"),
        sa.CheckConstraint(
            "state IN ('pending', 'done', 'failed', 'abandoned')", name="ck_journal_state"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_journal_pipeline_state", "journal", ["pipeline", "state"])

    op.create_table(
        "conflicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("field", sa.String(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("base_value", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("resolution", sa.JSON(), nullable=True),
        _ts("created_at"),
        _ts("resolved_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_conflicts"),
        sa.CheckConstraint("status IN ('open', 'resolved')", name="ck_conflicts_status"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "uq_conflicts_open",
        "conflicts",
        ["pipeline", "entity", "key", "field"],
        unique=True,
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )
    op.create_index("ix_conflicts_status", "conflicts", ["status", "pipeline", "entity"])

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_uuid", sa.String(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sqlite_autoincrement=True,
    )
    op.create_index("uq_runs_run_uuid", "runs", ["run_uuid"], unique=True)
    op.create_index("ix_runs_pipeline_id", "runs", ["pipeline", "id"])

    op.create_table(
        "skips",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("member", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _ts("first_seen"),
        _ts("last_seen"),
        sa.PrimaryKeyConstraint("pipeline", "entity", "key", "member", name="pk_skips"),
    )

    op.create_table(
        "leases",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        _ts("expires_at"),
        sa.PrimaryKeyConstraint("pipeline", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("skips")
    op.drop_index("ix_runs_pipeline_id", table_name="runs")
    op.drop_index("uq_runs_run_uuid", table_name="runs")
    op.drop_table("runs")
    op.drop_index("ix_conflicts_status", table_name="conflicts")
    op.drop_index("uq_conflicts_open", table_name="conflicts")
    op.drop_table("conflicts")
    op.drop_index("ix_journal_pipeline_state", table_name="journal")
    op.drop_table("journal")
    op.drop_index("ix_links_dirty", table_name="links")
    op.drop_index("uq_links_native_id", table_name="links")
    op.drop_table("links")
    op.drop_table("records")
