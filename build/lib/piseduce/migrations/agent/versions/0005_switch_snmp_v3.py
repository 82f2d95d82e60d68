"""switch SNMP version, v3 user and sealed secrets

A switch is driven in SNMP v1, v2c or v3 (USM user, authentication and privacy protocols). Its
community and v3 pass phrases live in `secrets`, a Fernet token made with the agent's key file;
the migration cannot encrypt (it has no key), so existing clear communities stay in `community`
until the raspberry driver seals them at its next start.

Revision ID: 0005_switch_snmp_v3
Revises: 0004_default_environment
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_switch_snmp_v3"
down_revision: str | None = "0004_default_environment"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("snmp_version", sa.String(length=8), "v2c"),
    ("v3_user", sa.String(length=64), ""),
    ("v3_auth_protocol", sa.String(length=16), "SHA"),
    ("v3_priv_protocol", sa.String(length=16), "AES"),
    ("secrets", sa.Text(), ""),
)


def upgrade() -> None:
    with op.batch_alter_table("switches") as batch:
        for name, kind, default in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=False, server_default=default))


def downgrade() -> None:
    # The sealed secrets cannot be decrypted here: a downgraded switch needs its community again.
    with op.batch_alter_table("switches") as batch:
        for name, _kind, _default in reversed(COLUMNS):
            batch.drop_column(name)
