"""default environment

The environment preselected on every deploy form was the first one by name, which could be a
user's private image. The operator now chooses it (`is_default`, at most one row), else the
newest public one (`created_at`; rows from before this migration have none and count as oldest).

Revision ID: 0004_default_environment
Revises: 0003_power_oid_offset
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from piseduce.dbtypes import UTCDateTime

revision: str = "0004_default_environment"
down_revision: str | None = "0003_power_oid_offset"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("environments", sa.Column("is_default", sa.Boolean(), nullable=False,
                                            server_default=sa.false()))
    op.add_column("environments", sa.Column("created_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("environments") as batch:
        batch.drop_column("created_at")
        batch.drop_column("is_default")
