"""The webhook inbox: events stored before they are acknowledged, and which run took them.

- ``inbox``: one row per event body received on a connector's webhook (a redelivery of the
  same body is stored once: ``uq_inbox_connector_digest``).
- ``inbox_done``: per pipeline, the events one of its runs took, written in the transaction
  that records that run's outcome.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("connector", sa.String(), nullable=False),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("entities", sa.JSON(), nullable=False),
        sa.Column("record_id", sa.String(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("occurred_at", sa.String(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inbox"),
        sqlite_autoincrement=True,
    )
    op.create_index("uq_inbox_connector_digest", "inbox", ["connector", "digest"], unique=True)
    op.create_index("ix_inbox_received_at", "inbox", ["received_at"])
    op.create_table(
        "inbox_done",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pipeline", "event_id", name="pk_inbox_done"),
    )
    op.create_index("ix_inbox_done_event_id", "inbox_done", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_inbox_done_event_id", table_name="inbox_done")
    op.drop_table("inbox_done")
    op.drop_index("ix_inbox_received_at", table_name="inbox")
    op.drop_index("uq_inbox_connector_digest", table_name="inbox")
    op.drop_table("inbox")
