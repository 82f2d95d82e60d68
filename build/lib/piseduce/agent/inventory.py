"""Nodes of remote-inventory drivers (g5k, iot-lab): the remote API's list, mirrored in `nodes`.

The mirror is refreshed at most every `inventory_refresh_seconds` per process. A node the remote
side no longer lists gets `present = False`: it is hidden and not bookable, but its reservations
(and their history) stay. Raspberry nodes are registered by admins and never synced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from piseduce.agent.drivers.base import Driver, DriverError, NodeSpec
from piseduce.agent.models import NODE_STATUSES, Node
from piseduce.db import write_session

log = logging.getLogger(__name__)


def apply(session: Session, specs: list[NodeSpec]) -> tuple[int, int, int]:
    """Upsert `specs` and mark the others absent. Returns (added, updated, gone)."""
    listed = {s.name: s for s in specs}
    added = updated = gone = 0
    existing = {n.name: n for n in session.scalars(select(Node))}
    for name, spec in listed.items():
        status = spec.status if spec.status in NODE_STATUSES else "broken"
        node = existing.get(name)
        if node is None:
            session.add(
                Node(
                    name=name,
                    ip=spec.ip,
                    status=status,
                    properties=dict(spec.properties),
                    attrs=dict(spec.attrs),
                    present=True,
                )
            )
            added += 1
            continue
        attrs = {**(node.attrs or {}), **spec.attrs}
        if (node.ip, node.status, node.properties, node.attrs, node.present) != (
            spec.ip,
            status,
            spec.properties,
            attrs,
            True,
        ):
            node.ip, node.status, node.properties, node.attrs, node.present = (
                spec.ip,
                status,
                dict(spec.properties),
                attrs,
                True,
            )
            updated += 1
    for name, node in existing.items():
        if name not in listed and node.present:
            node.present = False
            gone += 1
    return added, updated, gone


class Inventory:
    """Per-process cache of the last successful sync."""

    def __init__(self, driver: Driver, sessions: sessionmaker[Session], period: float) -> None:
        self.driver = driver
        self.sessions = sessions
        self.period = period
        self.synced_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def fresh(self) -> bool:
        return self.synced_at is not None and time.monotonic() - self.synced_at < self.period

    async def refresh(self, credentials: Mapping[str, str] | None = None, *, force: bool = False) -> bool:
        """Sync when stale. Returns True when the table was written. Errors of the remote side
        propagate (the API maps them), except when an earlier sync can still be served."""
        if self.driver.inventory is None or (self.fresh and not force):
            return False
        async with self._lock:
            if self.fresh and not force:
                return False
            try:
                specs = await self.driver.sync_nodes(credentials)
            except Exception as exc:
                if self.synced_at is not None or await run_in_threadpool(self._has_nodes):
                    # A driver's refusal (no login forwarded, the testbed said no) is expected and
                    # worded: one line. Anything else is a bug: its traceback.
                    expected = isinstance(exc, DriverError)
                    log.warning("node inventory refresh failed%s; serving the last known nodes",
                                f" ({exc})" if expected else "", exc_info=not expected)
                    return False
                raise
            if specs is None:
                self.synced_at = time.monotonic()
                return False
            await run_in_threadpool(self._store, specs)
            self.synced_at = time.monotonic()
            return True

    def _has_nodes(self) -> bool:
        with self.sessions() as s:
            return s.scalar(select(Node.name).limit(1)) is not None

    def _store(self, specs: list[NodeSpec]) -> None:
        for attempt in range(3):
            try:
                with write_session(self.sessions) as s:
                    added, updated, gone = apply(s, specs)
                break
            except IntegrityError:
                # Another worker inserted the same nodes at the same moment: read them and retry.
                if attempt == 2:
                    raise
        if added or updated or gone:
            log.info("node inventory: %d added, %d updated, %d no longer listed", added, updated, gone)
