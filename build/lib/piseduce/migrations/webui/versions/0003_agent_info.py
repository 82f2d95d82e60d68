"""agents' /api/info (features, credential kind, labels)

What each agent last said it supports, as its /api/info answered (the protocol's AgentInfo): the
pages offer what `features` lists. Empty until the health check asks; meanwhile the web UI reads
the agent as one of before the protocol, by its node type.

Revision ID: 0003_agent_info
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_agent_info"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("info", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("info")
