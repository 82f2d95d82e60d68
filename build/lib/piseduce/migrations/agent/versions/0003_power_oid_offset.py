"""switch power OID offset

Some switches number their per-port power readings from an offset, not from 1: the Linksys LGS308P
answers port p at `1.3.6.1.4.1.3955.1000.201.108.1.1.5.1.<48+p>`. Existing switches keep 0.

Revision ID: 0003_power_oid_offset
Revises: 0002_api
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_power_oid_offset"
down_revision: str | None = "0002_api"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("switches", sa.Column("power_oid_offset", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("switches") as batch:
        batch.drop_column("power_oid_offset")
