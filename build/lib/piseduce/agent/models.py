"""The agent's database: nodes, reservations, actions (deployments and other processes), events,
environments, switches and monitoring samples.

Every datetime is timezone-aware UTC (`UTCDateTime` stores naive UTC on SQLite and `timestamptz` on
PostgreSQL, and always gives back aware values).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    event,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from piseduce.agent import calendar_generation
from piseduce.agent.lifecycle import CONFIGURING, FINAL_STATUSES
from piseduce.agent.sealed import erase
from piseduce.dbtypes import UTCDateTime, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


# Node statuses.
NODE_AVAILABLE = "available"
NODE_MAINTENANCE = "maintenance"
NODE_BROKEN = "broken"
NODE_STATUSES = (NODE_AVAILABLE, NODE_MAINTENANCE, NODE_BROKEN)

# Action statuses.
ACTION_PENDING = "pending"
ACTION_RUNNING = "running"
ACTION_DONE = "done"
ACTION_FAILED = "failed"
ACTION_CANCELLED = "cancelled"
ACTION_OPEN = (ACTION_PENDING, ACTION_RUNNING)


class Node(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    ip: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default=NODE_AVAILABLE)
    # What users see and filter on (model, cluster, cores, memory, archi...).
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What only the driver uses (switch, port, serial, ssh_port, host_key, network address...).
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # False once a remote inventory (g5k, iot-lab) no longer lists the node.
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# What the calendar reads of a reservation (holds.slots_text), in its index.
CALENDAR_INDEX_COLUMNS = ("start", "busy_until", "status", "node_name", "end", "owner")


class Reservation(Base):
    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name", ondelete="RESTRICT"), index=True)
    owner: Mapped[str] = mapped_column(String(320), index=True)
    bin: Mapped[str] = mapped_column(String(128), default="")
    start: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    end: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # end + turnaround gap: the node is held until then (the exclusion constraint on PostgreSQL uses it).
    busy_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Indexed with end and with start (__table_args__): the scheduling pass's lookups.
    status: Mapped[str] = mapped_column(String(16), default=CONFIGURING)
    # The deploy form's values (environment, part_size, ssh_keys...); its secrets (os_password) are
    # sealed with the key file under "_sealed" (agent/sealed.py) and erased when the reservation ends.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The driver's own bookkeeping (OAR job id, Kadeploy id, experiment id...).
    driver_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What the user needs to reach the node (ssh command, user, host, port, url...).
    connection: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Fernet token of {"user", "password"} forwarded by the webui; erased when the reservation ends.
    credentials: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    node: Mapped[Node] = relationship(lazy="joined")
    actions: Mapped[list[Action]] = relationship(
        back_populates="reservation", order_by="Action.id", cascade="all, delete-orphan"
    )
    events: Mapped[list[Event]] = relationship(
        back_populates="reservation", order_by="Event.id", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_reservations_node_time", "node_name", "start", "busy_until"),
        # The calendar's range scans (migrations 0002_api, 0006): covering, so a week of a big
        # site's slots is read from the index alone, in start order.
        Index("ix_reservations_start", *CALENDAR_INDEX_COLUMNS),
        # The executor's pass every poll interval (migration 0010): what expired (a live status,
        # end <= now) and what is due (scheduled, start <= now), without reading every live row.
        Index("ix_reservations_status_end", "status", "end"),
        Index("ix_reservations_status_start", "status", "start"),
    )


@event.listens_for(Reservation.status, "set")
def _end_forgets_secrets(target: Reservation, value: str, _old: Any, _initiator: Any) -> None:
    """Whatever ends a reservation (destroy done or failed, expiry, cancellation, rollback) erases
    its secrets in the same transaction: the forwarded testbed login and the deploy form's."""
    if value in FINAL_STATUSES:
        target.credentials = None
        target.params = erase(target.params)


class Action(Base):
    """One run of a process (deploy, destroy, reboot, redeploy, bootfiles, register_env) on one
    reservation. The engine advances it step by step; the lease makes one executor own it."""

    __tablename__ = "actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reservation_id: Mapped[int | None] = mapped_column(
        ForeignKey("reservations.id", ondelete="CASCADE"), index=True, nullable=True
    )
    process: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=ACTION_PENDING, index=True)
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    step_name: Mapped[str] = mapped_column(String(64), default="")
    # When the current step began (the reference for reboot_after / fail_after).
    step_started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # True once the current step had its one automatic hard reboot.
    step_rebooted: Mapped[bool] = mapped_column(Boolean, default=False)
    # True while `run()` of the current step has completed and the engine is polling `done()`.
    step_ran: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    locked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    reservation: Mapped[Reservation | None] = relationship(back_populates="actions")


class ExecutorPresence(Base):
    """An executor sharing this database, seen alive until `seen_until` (it renews that with its
    leases and deletes its row when it stops cleanly): executors count each other to take fair
    shares of a backlog (agent/lease.py)."""

    __tablename__ = "executors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reservation_id: Mapped[int | None] = mapped_column(
        ForeignKey("reservations.id", ondelete="CASCADE"), index=True, nullable=True
    )
    action_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    node_name: Mapped[str] = mapped_column(String(128), default="")
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    step: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    # protocol_events.EventKind, set where the event is written (actions.add_event); NULL only for
    # events written before migration 0008, which the feed classifies from their text.
    kind: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    actor: Mapped[str] = mapped_column(String(128), default="", server_default="")  # who acted

    reservation: Mapped[Reservation | None] = relationship(back_populates="events")


class Environment(Base):
    __tablename__ = "environments"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    image: Mapped[str] = mapped_column(String(512), default="")  # file name inside env_path
    size: Mapped[int] = mapped_column(Integer, default=0)  # bytes of the uncompressed image
    sector_start: Mapped[int] = mapped_column(Integer, default=0)  # first sector of the root partition
    ssh_user: Mapped[str] = mapped_column(String(64), default="root")
    web: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="available")
    description: Mapped[str] = mapped_column(Text, default="")
    checksum: Mapped[str] = mapped_column(String(128), default="")  # sha256 of the image file
    owner: Mapped[str] = mapped_column(String(320), default="")  # "" = public
    # The operator's choice for every deploy form (at most one; only a public one counts).
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=utcnow, nullable=True)


class Switch(Base):
    __tablename__ = "switches"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    ip: Mapped[str] = mapped_column(String(255))
    snmp_port: Mapped[int] = mapped_column(Integer, default=161)
    # Clear community of rows saved before `secrets` existed; emptied when the driver seals it.
    community: Mapped[str] = mapped_column(String(128), default="")
    snmp_version: Mapped[str] = mapped_column(String(8), default="v2c", server_default="v2c")
    v3_user: Mapped[str] = mapped_column(String(64), default="", server_default="")
    v3_auth_protocol: Mapped[str] = mapped_column(String(16), default="SHA", server_default="SHA")
    v3_priv_protocol: Mapped[str] = mapped_column(String(16), default="AES", server_default="AES")
    # Fernet token (the agent's key file) of {"community", "auth_key", "priv_key"}: never in clear.
    secrets: Mapped[str] = mapped_column(Text, default="", server_default="")
    poe_oid: Mapped[str] = mapped_column(String(255), default="1.3.6.1.2.1.105.1.1.1.3.1")
    oid_offset: Mapped[int] = mapped_column(Integer, default=0)
    port_count: Mapped[int] = mapped_column(Integer, default=8)
    power_oid: Mapped[str] = mapped_column(String(255), default="")
    # Port p's power reading is <power_oid>.<power_oid_offset + p> (48 on a Linksys LGS308P).
    power_oid_offset: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    master_port: Mapped[int] = mapped_column(Integer, default=0)  # the uplink: never powered off


class Sample(Base):
    """A monitoring sample: power of a switch port (W) or a node's temperature (°C)."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "power" | "temperature"
    subject: Mapped[str] = mapped_column(String(128))  # node name, or "switch:port"
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_samples_kind_subject_time", "kind", "subject", "time"),)


class CalendarGeneration(Base):
    """One row whose `n` grows with every change to what the calendar shows (a reservation's node,
    window, owner or status; a node added, removed or gone from the inventory). Database triggers
    bump it (calendar_generation.py), so the API's workers know when their cached calendars are
    stale whatever wrote the change."""

    __tablename__ = "calendar_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class CalendarChange(Base):
    """A booking's node and span (start, busy_until) a generation of the calendar changed, written
    by the triggers that bump the counter; NULL times for a node's change (all its time). The API's
    workers re-read only those nodes' slots in the days they overlap (calendar_cache.py)."""

    __tablename__ = "calendar_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation: Mapped[int] = mapped_column(BigInteger, index=True)
    node: Mapped[str | None] = mapped_column(String(128), nullable=True)
    start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


event.listen(Base.metadata, "after_create", calendar_generation.after_create)


def _settle_energy(session: Session, _context: object, _instances: object) -> None:
    """The end-of-reservation hook that writes a reservation's energy into it, registered here so
    that every process opening the agent's database has it; energy.py is imported when a flush
    holds a reservation (lazily: it reads its samples through these models)."""
    if any(isinstance(o, Reservation) for o in (*session.dirty, *session.new)):
        from piseduce.agent import energy

        energy.settle(session)


event.listen(Session, "before_flush", _settle_energy)
