"""initial agent schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 10:39:48.756570
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One function per table, in the order their foreign keys need.
    _environments()
    _nodes()
    _samples()
    _switches()
    _reservations()
    _actions()
    _events()
    _no_overlap()


def _environments() -> None:
    op.create_table(
        "environments",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("image", sa.String(length=512), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sector_start", sa.Integer(), nullable=False),
        sa.Column("ssh_user", sa.String(length=64), nullable=False),
        sa.Column("web", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def _nodes() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("ip", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("attrs", sa.JSON(), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def _samples() -> None:
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.create_index("ix_samples_kind_subject_time", ["kind", "subject", "time"], unique=False)
        batch_op.create_index(batch_op.f("ix_samples_time"), ["time"], unique=False)


def _switches() -> None:
    op.create_table(
        "switches",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("ip", sa.String(length=255), nullable=False),
        sa.Column("snmp_port", sa.Integer(), nullable=False),
        sa.Column("community", sa.String(length=128), nullable=False),
        sa.Column("poe_oid", sa.String(length=255), nullable=False),
        sa.Column("oid_offset", sa.Integer(), nullable=False),
        sa.Column("port_count", sa.Integer(), nullable=False),
        sa.Column("power_oid", sa.String(length=255), nullable=False),
        sa.Column("master_port", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def _reservations() -> None:
    op.create_table(
        "reservations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node_name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("bin", sa.String(length=128), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("busy_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("driver_state", sa.JSON(), nullable=False),
        sa.Column("connection", sa.JSON(), nullable=False),
        sa.Column("credentials", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["node_name"], ["nodes.name"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reservations_node_name"), ["node_name"], unique=False)
        batch_op.create_index("ix_reservations_node_time", ["node_name", "start", "busy_until"], unique=False)
        batch_op.create_index(batch_op.f("ix_reservations_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_reservations_status"), ["status"], unique=False)


def _actions() -> None:
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reservation_id", sa.Integer(), nullable=True),
        sa.Column("process", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("step_name", sa.String(length=64), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_rebooted", sa.Boolean(), nullable=False),
        sa.Column("step_ran", sa.Boolean(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("locked_by", sa.String(length=128), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["reservation_id"], ["reservations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_actions_reservation_id"), ["reservation_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_actions_status"), ["status"], unique=False)


def _events() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reservation_id", sa.Integer(), nullable=True),
        sa.Column("action_id", sa.Integer(), nullable=True),
        sa.Column("node_name", sa.String(length=128), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["reservation_id"], ["reservations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_reservation_id"), ["reservation_id"], unique=False)


def _no_overlap() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # The database itself forbids two live bookings of one node that overlap (turnaround
        # gap included, through busy_until), whatever the number of API workers.
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(
            "ALTER TABLE reservations ADD CONSTRAINT reservations_no_overlap EXCLUDE USING gist "
            "(node_name WITH =, tstzrange(start, busy_until, '[)') WITH &&) "
            "WHERE (status NOT IN ('ended', 'cancelled'))"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE reservations DROP CONSTRAINT IF EXISTS reservations_no_overlap")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_reservation_id"))

    op.drop_table("events")
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_actions_status"))
        batch_op.drop_index(batch_op.f("ix_actions_reservation_id"))

    op.drop_table("actions")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reservations_status"))
        batch_op.drop_index(batch_op.f("ix_reservations_owner"))
        batch_op.drop_index("ix_reservations_node_time")
        batch_op.drop_index(batch_op.f("ix_reservations_node_name"))

    op.drop_table("reservations")
    op.drop_table("switches")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_samples_time"))
        batch_op.drop_index("ix_samples_kind_subject_time")

    op.drop_table("samples")
    op.drop_table("nodes")
    op.drop_table("environments")
