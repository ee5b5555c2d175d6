"""Every sync holds its pipeline's lease, and a journal intent belongs to its run's holder.

- ``journal.holder``: the lease holder of the run that journalled the intent; recovery settles
  an intent only once that holder's lease on the pipeline is gone. Intents written before
  this revision keep NULL: a run of this version recovers them once it holds the lease (no
  older run can still be writing then: an older syncengine refuses a store migrated past it).
- ``leases.kind`` (``sync``, ``daemon``) and ``leases.acquired_at``: what kind of run holds
  the lease and since when, for the message of a run that finds the pipeline busy. NULL on a
  lease taken before this revision (it shows as "a run").

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("journal", sa.Column("holder", sa.String(), nullable=True))
    op.add_column("leases", sa.Column("kind", sa.String(), nullable=True))
    op.add_column("leases", sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("leases", "acquired_at")
    op.drop_column("leases", "kind")
    op.drop_column("journal", "holder")
