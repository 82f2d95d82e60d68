"""private calendar feeds

Revision ID: 0007_slots
Revises: 0006_audit
Create Date: 2026-12-03 12:30:00.000000

Each user may have one private iCalendar feed URL (Settings): the row keeps the SHA-256 of its
secret only. calendar_entries remembers, per reservation shown, a digest of what the feed said and
the SEQUENCE / LAST-MODIFIED it gave, so an event's sequence grows when its reservation changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_slots"
down_revision: str | None = "0006_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calendar_feeds",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id"),
    )
    with op.batch_alter_table("calendar_feeds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_calendar_feeds_secret_hash"), ["secret_hash"], unique=True)
    op.create_table(
        "calendar_entries",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=160), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "uid"),
    )


def downgrade() -> None:
    op.drop_table("calendar_entries")
    with op.batch_alter_table("calendar_feeds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calendar_feeds_secret_hash"))
    op.drop_table("calendar_feeds")
