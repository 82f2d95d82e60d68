"""event kind: what an event means for the user it concerns (protocol_events.EventKind) and who
acted, written with the event (actions.add_event) instead of read back from its sentence. Events
written before this migration keep `kind` NULL: the event feed classifies those from their text
(agent/event_kinds.py), and only those.

Revision ID: 0008_event_kind
Revises: 0007_executor_presence
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_event_kind"
down_revision: str | None = "0007_executor_presence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no batch copy of the table on SQLite): the events table has no trigger.
    op.add_column("events", sa.Column("kind", sa.String(length=32), nullable=True))
    op.add_column("events", sa.Column("actor", sa.String(length=128), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("actor")
        batch.drop_column("kind")
