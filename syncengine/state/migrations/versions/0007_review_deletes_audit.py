"""Review queue, held deletes and the audit log (the console's state).

- ``review_items``: records new on a member that match several hub records or look like a
  copy of another, one row per (pipeline, entity, member, native id), with a person's
  decision (link to a hub record, or keep separate).
- ``held_deletes``: deletes held for a person's approval (``[pipelines.deletes] approve``)
  and the records of a batch a delete guard stopped.
- ``audit``: who did what to the state, when, with what it changed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HELD = "status = 'held'"


def _ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
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
        _ts("decided_at", nullable=True),
        _ts("first_seen"),
        _ts("last_seen"),
        sa.PrimaryKeyConstraint("id", name="pk_review_items"),
        sa.CheckConstraint(
            "status IN ('open', 'linked', 'separate', 'closed')", name="ck_review_items_status"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "uq_review_items_record",
        "review_items",
        ["pipeline", "entity", "member", "native_id"],
        unique=True,
    )
    op.create_index("ix_review_items_status", "review_items", ["status", "pipeline"])

    op.create_table(
        "held_deletes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("member", sa.String(), nullable=False),
        sa.Column("reach", sa.JSON(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("guard", sa.Text(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        _ts("held_at"),
        sa.Column("decided_by", sa.String(), nullable=True),
        _ts("decided_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_held_deletes"),
        sa.CheckConstraint(
            "status IN ('held', 'approved', 'restored', 'done', 'cleared')",
            name="ck_held_deletes_status",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "uq_held_deletes_held",
        "held_deletes",
        ["pipeline", "entity", "key", "member"],
        unique=True,
        sqlite_where=sa.text(_HELD),
        postgresql_where=sa.text(_HELD),
    )
    op.create_index("ix_held_deletes_status", "held_deletes", ["status", "pipeline", "entity"])

    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _ts("at"),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_at", "audit", ["at"])


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("held_deletes")
    op.drop_table("review_items")
