"""The executor (`piseduce agent exec`): the scheduling loop, one task per claimed action, the
leases of those actions, the reservations' secrets in memory, and a clean stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import socket
from collections.abc import Coroutine
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent import lease, sealed
from piseduce.agent.actions import CLOCK, add_event, bulk_events
from piseduce.agent.clock import SYSTEM, Clock
from piseduce.agent.daemon import run_daemon
from piseduce.agent.drivers.base import Driver, Process, ReservationView
from piseduce.agent.engine.claimed import Loaded, load_claimed
from piseduce.agent.engine.db import DbPool
from piseduce.agent.engine.group import GroupCommit
from piseduce.agent.engine.journal import fmt_seconds
from piseduce.agent.engine.runner import ActionRunner, EngineError
from piseduce.agent.engine.schedule import Cancelled, schedule
from piseduce.agent.models import Reservation
from piseduce.config import AgentConfig
from piseduce.crypto import KeyFileError, decrypt_json

log = logging.getLogger(__name__)

# How long a stopping executor waits for its cancelled actions (real time, whatever the clock).
SHUTDOWN_GRACE = 10.0
# Longest pause between scheduling passes while they fail (database unreachable...).
MAX_BACKOFF = 30.0


def default_name(config: AgentConfig) -> str:
    return f"{config.agent_name}@{socket.gethostname()}:{os.getpid()}-{secrets.token_hex(3)}"[:128]


class Executor:
    """Schedules and runs the actions of one agent's database; several may share the database."""

    def __init__(
        self,
        config: AgentConfig,
        sessions: sessionmaker[Session],
        driver: Driver,
        name: str | None = None,
        *,
        lease_seconds: float | None = None,
        poll_interval: float | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.config = config
        self.clock = clock
        self.driver = driver
        self.name = (name or default_name(config))[:128]
        self.lease_seconds = float(lease_seconds or config.lease_seconds or lease.DEFAULT_LEASE_SECONDS)
        self.poll_interval = float(poll_interval or config.poll_interval)
        self.max_concurrent = config.max_concurrent_actions
        self.processes: dict[str, Process] = driver.processes()
        self.db = DbPool(sessions)
        # Two batches in flight on PostgreSQL: one is written while the next one fills.
        self.journal = GroupCommit(self.db, flushers=1 if self.db.sqlite else 2)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._by_reservation: dict[int, int] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._backlog = False
        # Executors alive on this database (itself included), counted every third of a lease.
        self._peers = 1
        self._last_presence = -float("inf")
        self._fernet: Fernet | None = None
        self._last_renewal = self.clock.monotonic()
        self._closed = False

    # ------------------------------------------------------------ scheduling

    @property
    def running(self) -> list[int]:
        return sorted(self._tasks)

    def action_tasks(self) -> list[asyncio.Task[None]]:
        """The tasks of the running actions (tests drive a fake clock by them)."""
        return list(self._tasks.values())

    async def tick(self) -> list[int]:
        """One scheduling pass; returns the ids of the actions claimed (now running here)."""
        now = self.clock.now()
        room = max(0, self.max_concurrent - len(self._tasks))
        mine = set(self._tasks)
        busy = set(self._by_reservation)
        present = self.clock.monotonic() - self._last_presence >= self.lease_seconds / 3

        def work(s: Session) -> tuple[list[Cancelled], list[int], dict[int, Loaded], int]:
            s.info[CLOCK] = self.clock.now
            with bulk_events(s):
                cancelled = schedule(s, now, self.processes)
            if present:
                self._peers = lease.present(s, self.name, now, self.lease_seconds)
            # Every action ready is claimed in this one pass (a thousand start together), or this
            # executor's fair share of them when others share the database.
            free = lease.share(s, now, self._peers, len(mine), room, self.lease_seconds / 3)
            ids = lease.claimable(s, now, free, exclude=mine) if free else []
            claimed = lease.claim_many(s, ids, self.name, now, self.lease_seconds)
            # Loaded (and started) with the claim: no transaction per action before its first step.
            with bulk_events(s):
                loaded = load_claimed(s, claimed, self.name, self.processes, busy)
            return cancelled, claimed, loaded, free

        cancelled, claimed, loaded, free = await self.db.write(work)
        if present:
            self._last_presence = self.clock.monotonic()
        for view, token in cancelled:
            self._spawn_side(self._cancel_remote(view, token))
        for action_id in claimed:
            self._start(action_id, loaded.get(action_id))
        # Every free slot was used: more actions may be waiting, so look again as soon as one ends.
        self._backlog = room == 0 or (free == room and len(claimed) >= free)
        return claimed

    async def _cancel_remote(self, view: ReservationView, token: str | None) -> None:
        extra = {"node": view.node.name, "reservation": view.id, "step": None, "action": "cancel"}
        credentials = self.decrypt_credentials(token, extra)
        try:
            await self.driver.on_cancel(view, credentials)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("remote cancellation failed: %s", reason, extra=extra)

            def note(s: Session) -> None:
                r = s.get(Reservation, view.id)
                add_event(s, r, f"remote cancellation failed: {reason}", level="warning")

            try:
                await self.db.write(note)
            except SQLAlchemyError:
                log.exception("cannot record the failed remote cancellation", extra=extra)

    # ------------------------------------------------------------ tasks

    def _spawn_side(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _start(self, action_id: int, loaded: Loaded | None = None) -> None:
        task = asyncio.create_task(self._guarded(action_id, loaded), name=f"piseduce-action-{action_id}")
        self._tasks[action_id] = task
        task.add_done_callback(lambda t: self._finished(action_id, t))

    def _finished(self, action_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(action_id) is task:
            del self._tasks[action_id]
        if self._backlog:
            self._wake.set()

    async def _guarded(self, action_id: int, loaded: Loaded | None = None) -> None:
        runner = ActionRunner(self, action_id, loaded)
        try:
            await runner.run()
        except lease.LeaseLost as exc:
            log.info("stopped: %s", exc, extra=runner.extra)
        except (SQLAlchemyError, EngineError):
            log.exception(
                "database error on action %s; it resumes when its lease expires",
                action_id,
                extra=runner.extra,
            )
        except Exception:
            log.exception(
                "engine error on action %s; it resumes when its lease expires", action_id, extra=runner.extra
            )

    async def take_reservation(self, reservation_id: int | None, action_id: int) -> None:
        """One action per reservation at a time in this executor: a superseding action (a destroy)
        first stops the superseded one, which would stop at its next transition anyway."""
        if reservation_id is None:
            return
        other = self._by_reservation.get(reservation_id)
        if other is not None and other != action_id:
            task = self._tasks.get(other)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._by_reservation[reservation_id] = action_id

    def leave_reservation(self, reservation_id: int | None, action_id: int) -> None:
        if reservation_id is not None and self._by_reservation.get(reservation_id) == action_id:
            del self._by_reservation[reservation_id]

    async def drain(self) -> None:
        """Wait until every running action has finished (tests)."""
        while self._tasks or self._side_tasks:
            await asyncio.gather(*self._tasks.values(), *self._side_tasks, return_exceptions=True)

    # ------------------------------------------------------------ leases

    async def renew(self) -> None:
        """Extend the leases of the running actions; stop those this executor no longer holds."""
        ids = list(self._tasks)
        if not ids:
            self._last_renewal = self.clock.monotonic()
            return
        try:
            held = await self.db.write(
                lambda s: lease.renew(s, ids, self.name, self.clock.now(), self.lease_seconds)
            )
        except SQLAlchemyError as exc:
            log.warning("cannot renew leases: %s", exc)
            if self.clock.monotonic() - self._last_renewal > self.lease_seconds * 0.8:
                # Another executor may take these actions over any moment: stop before it does.
                log.error(
                    "leases about to expire without contact with the database: stopping %d actions", len(ids)
                )
                for task in list(self._tasks.values()):
                    task.cancel()
            return
        self._last_renewal = self.clock.monotonic()
        for action_id in ids:
            running = self._tasks.get(action_id)
            if action_id not in held and running is not None:
                log.info("action %s was cancelled, finished or taken over: stopping it here", action_id)
                running.cancel()

    async def _renew_loop(self) -> None:
        while True:
            await self.clock.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except Exception:
                log.exception("lease renewal failed")

    # ------------------------------------------------------------ credentials

    def key(self, extra: dict[str, Any]) -> Fernet | None:
        """The key file (read once; a raspberry agent creates its own when there is none)."""
        if self._fernet is None:
            try:
                self._fernet = sealed.agent_key(self.config, create=not self.driver.needs_credentials)
            except KeyFileError as exc:
                log.warning("the reservation's secrets cannot be read: %s", exc, extra=extra)
                return None
        return self._fernet

    def decrypt_credentials(self, token: str | None, extra: dict[str, Any]) -> dict[str, str] | None:
        if not token:
            return None
        fernet = self.key(extra)
        if fernet is None:
            return None
        try:
            data = decrypt_json(fernet, token)
        except ValueError:
            log.warning(
                "the reservation's testbed credentials do not decrypt with %s",
                self.config.key_path,
                extra=extra,
            )
            return None
        if not isinstance(data, dict):
            return None
        return {str(k): str(v) for k, v in data.items()}

    def unseal_params(self, params: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """The deploy form's values with their secrets, in memory only. When they cannot be
        opened the secrets are left out (the step that needs one fails saying it is missing)."""
        if sealed.SEALED not in params:
            return params
        try:
            return sealed.unseal(self.key(extra), params)
        except sealed.SealError as exc:
            log.warning("%s (%s)", exc, self.config.key_path, extra=extra)
            return sealed.public(params)

    # ------------------------------------------------------------ lifecycle

    async def run_forever(self, stop: asyncio.Event) -> None:
        log.info(
            "executor %s started (lease %s s, poll %s s, up to %d actions at once)",
            self.name,
            fmt_seconds(self.lease_seconds),
            fmt_seconds(self.poll_interval),
            self.max_concurrent,
        )
        renewer = asyncio.create_task(self._renew_loop())
        try:
            failures = 0
            while not stop.is_set():
                self._wake.clear()
                wait = self.poll_interval
                try:
                    await self.tick()
                    failures = 0
                except Exception as exc:
                    # Back off while the database is unreachable; the traceback once, then one line.
                    failures += 1
                    wait = min(self.poll_interval * 2**failures, MAX_BACKOFF)
                    if failures == 1:
                        log.exception("scheduling pass failed; retrying in %s s", fmt_seconds(wait))
                    else:
                        log.warning(
                            "scheduling pass failed again (%s); retrying in %s s", exc, fmt_seconds(wait)
                        )
                waiters = {
                    asyncio.create_task(stop.wait()),
                    asyncio.create_task(self._wake.wait()),
                    asyncio.create_task(self.clock.sleep(wait)),
                }
                _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in pending:
                    w.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop the running actions where they are (they resume later) and release their leases."""
        if self._closed:
            return
        self._closed = True
        if self._side_tasks:
            # Remote cancellations are short; give them a moment rather than leaving a remote job.
            await asyncio.wait(set(self._side_tasks), timeout=5)
        tasks = list(self._tasks.values()) + list(self._side_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            if stuck:
                # A driver step that ignores cancellation must not keep the executor alive.
                log.warning("%d actions did not stop within %s s", len(stuck), fmt_seconds(SHUTDOWN_GRACE))
        await self.journal.close()
        try:
            def leave(s: Session) -> int:
                lease.absent(s, self.name)
                return lease.release(s, self.name)

            released = await self.db.write(leave)
            log.info("executor %s stopped: %d actions released, to be resumed", self.name, released)
        except SQLAlchemyError:
            log.exception("cannot release the leases; they expire in %s s", fmt_seconds(self.lease_seconds))
        self.db.close()


# Objects allocated (less those freed) before a young collection: CPython's 700 made a thousand
# concurrent actions trigger hundreds a second, and every tenth of the older ones a full one.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """The executor process's garbage collector. What exists once it has started (modules, the
    ORM's mappings, the driver) is frozen: a full collection no longer scans it. With a thousand
    actions running, one took 60-80 ms of CPU (every action stalled meanwhile) and came three
    times in a 1,000-node deployment; young collections wait for 10,000 new objects."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def run_executor(
    config: AgentConfig, *, name: str | None = None, stop: asyncio.Event | None = None
) -> None:
    """`piseduce agent exec`: run until SIGTERM/SIGINT (or `stop`), then stop cleanly."""
    async def body(sessions: sessionmaker[Session], driver: Driver, stop: asyncio.Event) -> None:
        tune_gc()
        await Executor(config, sessions, driver, name).run_forever(stop)

    await run_daemon(config, body, tables=("actions", "reservations", "nodes"), stop=stop)
