"""reservations by status and end (and by status and start): the executor's scheduling pass

Every poll interval each executor asks which reservations expired (a live status, end <= now)
and which are due (scheduled, start <= now). With the index on status alone both read every
reservation in those statuses (a thousand deployed nodes: a thousand rows each pass, 2.5-3.5 ms
of CPU a pass); by (status, end) and (status, start) they read only what is due. Either one
serves a lookup by status alone, so the index on status alone goes.

Revision ID: 0010_reservations_status_end
Revises: 0009_calendar_changes
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010_reservations_status_end"
down_revision: str | None = "0009_calendar_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_reservations_status_end", "reservations", ["status", "end"], unique=False)
    op.create_index("ix_reservations_status_start", "reservations", ["status", "start"], unique=False)
    op.drop_index("ix_reservations_status", table_name="reservations")


def downgrade() -> None:
    op.create_index("ix_reservations_status", "reservations", ["status"], unique=False)
    op.drop_index("ix_reservations_status_start", table_name="reservations")
    op.drop_index("ix_reservations_status_end", table_name="reservations")
