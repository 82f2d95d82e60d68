"""calendar generation: a counter bumped by triggers on every change the calendar shows

The API's workers cache the calendar of a window (api/nodes.py, agent/calendar_cache.py) and
compare this counter, one row read, before answering from the cache. The calendar's index
(ix_reservations_start) now covers every column the calendar reads: a week of a 5,000-node site
(30,000 slots) is read from the index alone.

Revision ID: 0006_calendar_generation
Revises: 0005_switch_snmp_v3
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from piseduce.agent import calendar_generation

revision: str = "0006_calendar_generation"
down_revision: str | None = "0005_switch_snmp_v3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported from models.CALENDAR_INDEX_COLUMNS, which may change later.
COVERING = ("start", "busy_until", "status", "node_name", "end", "owner")


def upgrade() -> None:
    op.create_table(
        "calendar_generation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False, server_default="0"),
    )
    calendar_generation.install(op.get_bind(), spans=False)
    op.drop_index("ix_reservations_start", table_name="reservations")
    op.create_index("ix_reservations_start", "reservations", list(COVERING), unique=False)


def downgrade() -> None:
    op.drop_index("ix_reservations_start", table_name="reservations")
    op.create_index("ix_reservations_start", "reservations", ["start", "busy_until"], unique=False)
    calendar_generation.uninstall(op.get_bind())
    op.drop_table("calendar_generation")
