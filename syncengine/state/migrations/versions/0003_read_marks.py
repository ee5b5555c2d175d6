"""Read marks: where each member's last committed incremental read left off.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "read_marks",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("member", sa.String(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pipeline", "entity", "member", name="pk_read_marks"),
    )


def downgrade() -> None:
    op.drop_table("read_marks")
