"""executor presence: the executors sharing the database, each with the time it is seen alive
until, so that executors take fair shares of a backlog of actions instead of the first one to
look taking all of it (agent/lease.py).

Revision ID: 0007_executor_presence
Revises: 0006_calendar_generation
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_executor_presence"
down_revision: str | None = "0006_calendar_generation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "executors",
        sa.Column("name", sa.String(length=128), primary_key=True),
        sa.Column("seen_until", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("executors")
