"""calendar changes: the spans each calendar generation changed, written by the triggers that bump
the generation (agent/calendar_generation.py)

A booking used to invalidate every day each API worker had cached (the generation is global); a
worker now asks which nodes and spans changed since its generation and re-reads only those nodes'
slots in the days and windows they overlap.
The triggers prune the table to its last few thousand generations.

Revision ID: 0009_calendar_changes
Revises: 0008_event_kind
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from piseduce.agent import calendar_generation
from piseduce.dbtypes import UTCDateTime

revision: str = "0009_calendar_changes"
down_revision: str | None = "0008_event_kind"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calendar_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        # The booking's node and span (start, busy_until); a node's change: its name, NULL times.
        sa.Column("node", sa.String(length=128), nullable=True),
        sa.Column("start", UTCDateTime(), nullable=True),
        sa.Column("end", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_calendar_changes_generation", "calendar_changes", ["generation"], unique=False)
    calendar_generation.install(op.get_bind(), spans=True)


def downgrade() -> None:
    calendar_generation.install(op.get_bind(), spans=False)
    op.drop_index("ix_calendar_changes_generation", table_name="calendar_changes")
    op.drop_table("calendar_changes")
