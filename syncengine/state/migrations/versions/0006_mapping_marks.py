"""Mapping marks: which mapping each member's records were last read with.

When a member's mapping changes (a field added, a transform changed, an upgrade that maps a
field the API already sent), a record whose native data did not change must still be read
again, with the new mapping: the short-circuit on the native hash would otherwise keep what
the old mapping made of it. ``mapping_marks`` holds, per pipeline, entity and member, the
fingerprint of the mapping of the member's last complete read that was committed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mapping_marks",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("member", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pipeline", "entity", "member", name="pk_mapping_marks"),
    )


def downgrade() -> None:
    op.drop_table("mapping_marks")
