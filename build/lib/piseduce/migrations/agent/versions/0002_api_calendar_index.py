"""calendar index: reservations by start time

The calendar reads "active holds that overlap [a, b)". Holds are never longer than a known bound
(the maximum duration plus the turnaround gap), so the query also says start >= a - bound and this
index turns it into a short range scan instead of a scan of every reservation.

Revision ID: 0002_api
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_api"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_reservations_start", "reservations", ["start", "busy_until"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_reservations_start", table_name="reservations")
