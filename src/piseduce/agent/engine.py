"""The durable state-machine executor (`piseduce agent exec`, DESIGN §5.3).

One scheduling pass (`Executor.tick`, every `poll_interval` seconds) does, in one short
transaction: start the deployments of reservations whose slot began, destroy (or cancel) the
reservations whose slot ended, then claim open actions whose lease is free (`agent/lease.py`).
Each claimed action runs in its own asyncio task (`ActionRunner`), at most
`max_concurrent_actions` at once, so nodes advance independently: a slow or hung node only
occupies its own task.

Durability: every transition (process started or resumed, step started, run() finished, progress
with a message, automatic reboot, step done, failure, completion) is committed together with its
event row before the next begins. The action row says where it stands (`step_index`, `step_ran`:
whether run() of that step completed, `step_rebooted`), so an executor that is killed resumes
exactly there: completed steps are never run again; the interrupted step's run() is repeated
(drivers make it idempotent) unless it had completed, in which case only done() is polled again.
Every commit re-checks in the same transaction that this executor still holds the action's lease
(it also extends it), so an action cancelled or superseded by a destroy stops at its next
transition, and the lease renewal loop stops it within a third of the lease otherwise.

Fewer commits, same guarantees: the process start is committed with its first step's start, a step
done at once (done() True right after run()) gets no separate "run finished" commit unless run()
changed the state or connection (a remote job id is saved before done() is first called), and a
bare progress percentage is committed at most once a second (it rides along with the next commit
otherwise). Step clocks (`step_started_at`) are stamped inside the transaction, so time spent
waiting for the database never counts against a step's timeouts; when an executor resumes an
interrupted step, its clock restarts (an executor outage is not the node's fault) but a step
rebooted once is never rebooted again.

Node release: a destroy that completes ends the reservation (the calendar ignores ended ones) and
erases its credentials. A destroy that fails ends the reservation too (the slot is over) but marks
the node `broken`, with an event saying why: it may still hold the user's data, so no later
reservation is deployed on it (they fail at once with the reason) until an administrator makes it
available again.

Errors: a driver error fails its action only (reservation `failed`, with a readable reason); the
executor never exits because of one. A database error stops the action's task without touching
its row: the lease expires and the action is resumed.

Credentials: a reservation's Fernet token is decrypted in memory only (`ctx.credentials`) and is
erased from the database when the reservation ends or is cancelled.

Database calls run in a small thread pool (one thread on SQLite, where writers are serialised
anyway, so that in-process writers never wait on SQLite's busy handler) and never block the loop.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.fernet import Fernet
from sqlalchemy import and_, exists, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent import lease
from piseduce.agent.actions import add_event, open_action, start_action
from piseduce.agent.daemon import run_daemon
from piseduce.agent.drivers.base import (
    Driver,
    DriverError,
    NodeView,
    Process,
    ReservationView,
    Step,
)
from piseduce.agent.models import (
    ACTION_CANCELLED,
    ACTION_DONE,
    ACTION_FAILED,
    ACTION_OPEN,
    ACTION_PENDING,
    ACTION_RUNNING,
    CANCELLED,
    CONFIGURING,
    DEPLOYED,
    DEPLOYING,
    DESTROYING,
    ENDED,
    FAILED,
    NODE_AVAILABLE,
    NODE_BROKEN,
    SCHEDULED,
    Action,
    Node,
    Reservation,
    utcnow,
)
from piseduce.agent.step_context import EngineStepContext
from piseduce.config import AgentConfig
from piseduce.crypto import KeyFileError, decrypt_json, load_fernet
from piseduce.db import write_session

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bound on the automatic hard reboot when the step declares no fail_after.
REBOOT_TIMEOUT = 120.0
# Shortest interval between two commits of a bare progress percentage of one action.
PROGRESS_INTERVAL = 1.0
# How long a stopping executor waits for its cancelled actions.
SHUTDOWN_GRACE = 10.0
# Longest pause between scheduling passes while they fail (database unreachable...).
MAX_BACKOFF = 30.0
# Reservations past their end in one of these are destroyed (the node may hold the user's system).
DESTROY_ON_EXPIRY = (SCHEDULED, DEPLOYING, DEPLOYED, FAILED)
EVENT_LEVELS = ("info", "warning", "error")


class _StepFailed(Exception):
    """The current action fails with this human-readable message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _EngineError(Exception):
    """The engine's own bookkeeping failed under a driver step (database down...): not the
    node's fault, so the action is not failed but resumed later."""


def _fmt_seconds(seconds: float) -> str:
    # 600 -> "600", 2.5 -> "2.5", 0.04 -> "0.04" (scaled timeouts of the simulators are short).
    if seconds >= 10:
        return f"{seconds:.0f}"
    return f"{seconds:.2g}"


def _merge(db: dict[str, Any], saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """Apply to `db` the keys the step changed since the last save, keeping the keys someone else
    (the API extending a reservation...) changed meanwhile."""
    out = dict(db)
    missing = object()
    for key, value in current.items():
        if saved.get(key, missing) != value:
            out[key] = value
    for key in saved:
        if key not in current:
            out.pop(key, None)
    return out


def default_name(config: AgentConfig) -> str:
    return f"{config.agent_name}@{socket.gethostname()}:{os.getpid()}-{secrets.token_hex(3)}"[:128]


class _Db:
    """Runs short write transactions off the event loop."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        sqlite = bind is None or bind.dialect.name == "sqlite"
        self._pool = ThreadPoolExecutor(max_workers=1 if sqlite else 8, thread_name_prefix="piseduce-db")

    async def write(self, fn: Callable[[Session], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn)

    def _run(self, fn: Callable[[Session], T]) -> T:
        with write_session(self.sessions) as session:
            return fn(session)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def reservation_view(r: Reservation) -> ReservationView:
    node = r.node
    return ReservationView(
        id=r.id,
        node=NodeView(
            name=node.name,
            ip=node.ip,
            status=node.status,
            properties=copy.deepcopy(node.properties or {}),
            attrs=copy.deepcopy(node.attrs or {}),
        ),
        owner=r.owner,
        bin=r.bin,
        start=r.start,
        end=r.end,
        status=r.status,
        params=copy.deepcopy(r.params or {}),
        driver_state=copy.deepcopy(r.driver_state or {}),
        connection=copy.deepcopy(r.connection or {}),
    )


def lock_reservation(s: Session, rid: int) -> Reservation | None:
    """Lock a reservation row (PostgreSQL; SQLite's write transaction is already exclusive) and
    load it fresh. Locked apart from the load: FOR UPDATE cannot cover the outer join of `node`."""
    if s.get_bind().dialect.name != "sqlite":
        s.execute(select(Reservation.id).where(Reservation.id == rid).with_for_update())
    return s.get(Reservation, rid, populate_existing=True)


@dataclass
class _Loaded:
    process: str
    status: str
    step_index: int
    step_name: str
    step_ran: bool
    step_rebooted: bool
    step_started_at: dt.datetime
    progress: int
    args: dict[str, Any]
    reservation: ReservationView | None
    credentials: str | None


Mutation = Callable[[Session, Action, Reservation | None], None]


class ActionRunner:
    """Runs one claimed action to its end (done or failed), committing every transition."""

    def __init__(self, executor: Executor, action_id: int) -> None:
        self.ex = executor
        self.action_id = action_id
        self.reservation_id: int | None = None
        self.process: Process | None = None
        self.process_name = ""
        self.index = 0
        self.step_ran = False
        self.step_rebooted = False
        self.step_started_at = utcnow()
        self.begun = False
        self.progress = 0
        self.extra: dict[str, Any] = {"node": None, "reservation": None, "step": None, "action": None}
        self.saved_state: dict[str, Any] = {}
        self.saved_connection: dict[str, Any] = {}
        self.ctx: EngineStepContext | None = None
        self._prelude: Mutation | None = None
        # Progress without a message is committed at most every PROGRESS_INTERVAL seconds;
        # in between it rides along with the next commit.
        self._progress_dirty = False
        self._progress_committed = time.monotonic()

    # ------------------------------------------------------------ the whole action

    async def run(self) -> None:
        loaded = await self.ex.db.write(self._load)
        self.process_name = loaded.process
        self.process = self.ex.processes.get(loaded.process)
        res = loaded.reservation
        if res is None:
            # An action without reservation (an environment registration): a placeholder view.
            now = utcnow()
            res = ReservationView(
                id=0,
                node=NodeView(name=str(loaded.args.get("node", ""))),
                owner=str(loaded.args.get("owner", "")),
                bin="",
                start=now,
                end=now,
                status="",
                params=dict(loaded.args),
                driver_state=dict(loaded.args.get("driver_state") or {}),
            )
        else:
            self.reservation_id = res.id
        self.extra.update(node=res.node.name or None, reservation=self.reservation_id, action=loaded.process)
        self.index = loaded.step_index
        self.step_ran = loaded.step_ran
        self.step_rebooted = loaded.step_rebooted
        self.step_started_at = loaded.step_started_at
        self.progress = loaded.progress
        self.saved_state = copy.deepcopy(res.driver_state)
        self.saved_connection = copy.deepcopy(res.connection)
        credentials = self.ex.decrypt_credentials(loaded.credentials, self.extra)
        self.ctx = EngineStepContext(res, self.ex.config, loaded.process, loaded.args, credentials, self)

        await self.ex.take_reservation(self.reservation_id, self.action_id)
        try:
            if self.process is None:
                await self._fail(f"unknown process '{loaded.process}' for {self.ex.driver.node_type} nodes")
                return
            await self._begin(loaded)
            try:
                await self._steps(self.process)
            except _StepFailed as failure:
                await self._fail(failure.message)
        finally:
            self.ex.leave_reservation(self.reservation_id, self.action_id)

    def _load(self, s: Session) -> _Loaded:
        a = s.get(Action, self.action_id, populate_existing=True)
        if a is None or a.status not in ACTION_OPEN or a.locked_by != self.ex.name:
            raise lease.LeaseLost(f"action {self.action_id} is not held by {self.ex.name}")
        r = a.reservation
        return _Loaded(
            process=a.process,
            status=a.status,
            step_index=a.step_index,
            step_name=a.step_name,
            step_ran=a.step_ran,
            step_rebooted=a.step_rebooted,
            step_started_at=a.step_started_at,
            progress=a.progress,
            args=copy.deepcopy(a.args or {}),
            reservation=reservation_view(r) if r is not None else None,
            credentials=r.credentials if r is not None else None,
        )

    async def _begin(self, loaded: _Loaded) -> None:
        assert self.process is not None
        process = self.process
        steps = process.steps
        step = steps[self.index] if self.index < len(steps) else None
        if loaded.status == ACTION_PENDING:

            def start(s: Session, a: Action, r: Reservation | None) -> None:
                a.status = ACTION_RUNNING
                if r is not None:
                    r.status = process.running_status
                    r.error = ""
                add_event(s, r, f"{process.name} started", action=a)

            if step is None:
                await self._commit(start)
            else:
                self._prelude = start  # committed with the first step's start: one commit less
            return
        # A resumed action: the step it was in restarts its clock (the outage is not the node's fault).
        resumed_in_step = step is not None and loaded.step_name == step.name

        def resume(s: Session, a: Action, r: Reservation | None) -> None:
            where = f" at step '{step.title}'" if step is not None and resumed_in_step else ""
            add_event(
                s,
                r,
                f"{process.name} resumed by executor {self.ex.name}{where}",
                action=a,
                step=step.name if step is not None else "",
            )
            if resumed_in_step:
                a.step_started_at = utcnow()

        if step is not None and not resumed_in_step:
            self._prelude = resume
            return
        await self._commit(resume)
        if resumed_in_step:
            self.begun = True

    async def _steps(self, process: Process) -> None:
        steps = process.steps
        while self.index < len(steps):
            step = steps[self.index]
            self.extra["step"] = step.name
            if not self.begun:
                await self._start_step(step)
            await self._drive(step)
            if self.index + 1 < len(steps):
                await self._advance(step, steps[self.index + 1])
            else:
                await self._complete(step)
                return
        await self._complete(None)

    # ------------------------------------------------------------ one step

    def _deadline(self, step: Step) -> tuple[dt.datetime | None, str]:
        ra, fa = step.reboot_after, step.fail_after
        if ra is not None and not self.step_rebooted and (fa is None or ra < fa):
            return self.step_started_at + dt.timedelta(seconds=ra), "reboot"
        if fa is not None:
            return self.step_started_at + dt.timedelta(seconds=fa), "fail"
        return None, ""

    async def _drive(self, step: Step) -> None:
        """Run the step (run, then poll done) under its timeouts, with one automatic reboot."""
        ctx = self._context()
        loop = asyncio.get_running_loop()
        while True:
            deadline, kind = self._deadline(step)
            when = None if deadline is None else loop.time() + (deadline - utcnow()).total_seconds()
            timeout = asyncio.timeout_at(when)
            try:
                async with timeout:
                    if not self.step_ran:
                        await self._call(step, step.run(ctx))
                        if step.done is None:
                            return
                        # What run() recorded (a remote job id...) is saved before anything else.
                        if ctx.state != self.saved_state or ctx.connection != self.saved_connection:
                            await self._mark_ran(step)
                        # A step done at once needs no "ran" commit of its own: the "done" commit
                        # follows, and a crash before it only repeats the idempotent run().
                        if await self._call(step, step.done(ctx)):
                            return
                        if not self.step_ran:
                            await self._mark_ran(step)
                        await asyncio.sleep(step.poll)
                    if step.done is not None:
                        while not await self._call(step, step.done(ctx)):
                            if ctx.state != self.saved_state or ctx.connection != self.saved_connection:
                                await self._commit(None)
                            await asyncio.sleep(step.poll)
                return
            except TimeoutError:
                if not timeout.expired():
                    raise
            if kind == "reboot":
                await self._auto_reboot(step)
                continue
            assert step.fail_after is not None
            after = " (even after an automatic hard reboot)" if self.step_rebooted else ""
            raise _StepFailed(f"{step.title}: no result after {_fmt_seconds(step.fail_after)} s{after}")

    async def _call(self, step: Step, coro: Awaitable[T]) -> T:
        """Await a driver coroutine, turning its errors into a readable failure of the action."""
        try:
            return await coro
        except (lease.LeaseLost, _EngineError):
            raise
        except DriverError as exc:
            raise _StepFailed(str(exc) or f"{step.title}: failed") from exc
        except TimeoutError as exc:
            # The driver's own timeout (ours cancels the coroutine instead).
            detail = f" ({exc})" if str(exc) else ""
            raise _StepFailed(f"{step.title}: timed out{detail}") from exc
        except Exception as exc:
            log.error("%s: unexpected error in the driver", step.title, exc_info=True, extra=self.extra)
            raise _StepFailed(f"{step.title}: {str(exc) or type(exc).__name__}") from exc

    async def _start_step(self, step: Step) -> None:
        prelude, self._prelude = self._prelude, None

        def start(s: Session, a: Action, r: Reservation | None) -> None:
            if prelude is not None:
                prelude(s, a, r)
            a.step_index = self.index
            a.step_name = step.name
            a.step_started_at = utcnow()
            a.step_ran = False
            a.step_rebooted = False
            add_event(s, r, f"{step.title}: started", step=step.name, action=a)

        await self._commit(start)
        self.begun = True
        self.step_ran = False
        self.step_rebooted = False

    async def _mark_ran(self, step: Step) -> None:
        def ran(s: Session, a: Action, r: Reservation | None) -> None:
            a.step_ran = True
            add_event(s, r, f"{step.title}: waiting for the result", step=step.name, action=a)

        await self._commit(ran)
        self.step_ran = True

    async def _auto_reboot(self, step: Step) -> None:
        elapsed = (utcnow() - self.step_started_at).total_seconds()

        def rebooting(s: Session, a: Action, r: Reservation | None) -> None:
            # Committed before the reboot: a crash during it never causes a second one.
            a.step_rebooted = True
            a.step_ran = False
            add_event(
                s,
                r,
                f"{step.title}: no answer after {_fmt_seconds(elapsed)} s: automatic hard reboot",
                step=step.name,
                level="warning",
                action=a,
            )

        await self._commit(rebooting)
        self.step_rebooted = True
        self.step_ran = False
        limit = step.fail_after or REBOOT_TIMEOUT
        try:
            async with asyncio.timeout(limit):
                await self._call(step, self.ex.driver.hard_reboot(self._context()))
        except TimeoutError:
            raise _StepFailed(
                f"{step.title}: the automatic hard reboot did not finish within {_fmt_seconds(limit)} s"
            ) from None
        except _StepFailed as failure:
            raise _StepFailed(f"{step.title}: automatic hard reboot failed: {failure.message}") from None

        def rebooted(s: Session, a: Action, r: Reservation | None) -> None:
            a.step_started_at = utcnow()
            add_event(s, r, f"{step.title}: node rebooted, the step starts over", step=step.name, action=a)

        await self._commit(rebooted)

    def _overall(self, index: int, step_percent: int) -> int:
        assert self.process is not None
        steps = self.process.steps
        total = sum(max(s.weight, 0) for s in steps) or 1
        done = sum(max(s.weight, 0) for s in steps[:index])
        current = max(steps[index].weight, 0) * step_percent / 100 if index < len(steps) else 0
        return max(0, min(100, int((done + current) * 100 / total)))

    async def _advance(self, step: Step, nxt: Step) -> None:
        progress = self._overall(self.index + 1, 0)

        def advance(s: Session, a: Action, r: Reservation | None) -> None:
            add_event(s, r, f"{step.title}: done", step=step.name, action=a)
            a.step_index = self.index + 1
            a.step_name = nxt.name
            a.step_started_at = utcnow()
            a.step_ran = False
            a.step_rebooted = False
            a.progress = progress
            add_event(s, r, f"{nxt.title}: started", step=nxt.name, action=a)

        await self._commit(advance)
        self.index += 1
        self.begun = True
        self.step_ran = False
        self.step_rebooted = False
        self.progress = progress
        self.extra["step"] = nxt.name

    async def _complete(self, step: Step | None) -> None:
        assert self.process is not None
        process = self.process

        def complete(s: Session, a: Action, r: Reservation | None) -> None:
            if step is not None:
                add_event(s, r, f"{step.title}: done", step=step.name, action=a)
            a.status = ACTION_DONE
            a.progress = 100
            a.error = ""
            a.locked_by = None
            a.locked_until = None
            if r is not None:
                r.status = process.done_status
                r.error = ""
                if process.done_status == ENDED:
                    r.credentials = None
            add_event(s, r, f"{process.name} finished", action=a)

        await self._commit(complete)
        self.progress = 100

    async def _fail(self, message: str) -> None:
        process = self.process
        step_name = ""
        if process is not None and self.index < len(process.steps):
            step_name = process.steps[self.index].name

        def fail(s: Session, a: Action, r: Reservation | None) -> None:
            a.status = ACTION_FAILED
            a.error = message
            a.locked_by = None
            a.locked_until = None
            add_event(s, r, message, step=step_name, level="error", action=a)
            if r is None or process is None:
                return  # an unknown process leaves the reservation as it was
            r.error = message
            if process.done_status != ENDED:
                r.status = FAILED
                return
            # A failed destroy: the slot is over whatever happens, but the node may still hold the
            # user's system and data, so nobody gets it until an administrator has looked at it.
            r.status = ENDED
            r.credentials = None
            node = s.get(Node, r.node_name, with_for_update=True)
            if node is not None:
                node.status = NODE_BROKEN
            add_event(
                s,
                r,
                f"{process.name} failed, so {r.node_name} is marked broken until an administrator checks it "
                "(it may still hold the previous user's data); the reservation is ended",
                step=step_name,
                level="warning",
                action=a,
            )

        await self._commit(fail)

    # ------------------------------------------------------------ committing

    def _context(self) -> EngineStepContext:
        assert self.ctx is not None
        return self.ctx

    async def _commit(self, mutate: Mutation | None) -> None:
        """One transaction: check the lease (and extend it), persist the step's state and
        connection if they changed, apply `mutate`."""
        ctx = self._context()
        state = copy.deepcopy(ctx.state)
        connection = copy.deepcopy(ctx.connection)
        saved_state, saved_connection = self.saved_state, self.saved_connection
        ex = self.ex
        progress = self.progress if self._progress_dirty else None

        def work(s: Session) -> tuple[dt.datetime | None, dt.datetime]:
            r = None
            if self.reservation_id is not None:
                # Reservation first, then action: the API locks in that order too.
                r = lock_reservation(s, self.reservation_id)
            a = s.get(Action, self.action_id, with_for_update=True, populate_existing=True)
            if a is None or a.status not in ACTION_OPEN or a.locked_by != ex.name:
                raise lease.LeaseLost(f"action {self.action_id} is no longer held by {ex.name}")
            a.locked_until = utcnow() + dt.timedelta(seconds=ex.lease_seconds)
            if progress is not None:
                a.progress = progress
            if r is not None:
                if state != saved_state:
                    r.driver_state = _merge(r.driver_state or {}, saved_state, state)
                if connection != saved_connection:
                    r.connection = _merge(r.connection or {}, saved_connection, connection)
            elif state != saved_state or connection != saved_connection:
                a.args = {**(a.args or {}), "driver_state": state, "connection": connection}
            if mutate is not None:
                mutate(s, a, r)
            # Step clocks are stamped inside the transaction, so waiting for the database
            # never counts against a step's timeouts.
            return (r.end if r is not None else None), a.step_started_at

        end, self.step_started_at = await ex.db.write(work)
        self.saved_state, self.saved_connection = state, connection
        if progress is not None and progress == self.progress:
            self._progress_dirty = False
        self._progress_committed = time.monotonic()
        if end is not None:
            ctx.reservation.end = end  # an extension made meanwhile

    async def _sink_commit(self, mutate: Mutation) -> None:
        try:
            await self._commit(mutate)
        except SQLAlchemyError as exc:
            raise _EngineError(str(exc)) from exc

    # ------------------------------------------------------------ ContextSink (for the steps)

    def _current_step(self) -> Step | None:
        if self.process is None or self.index >= len(self.process.steps):
            return None
        return self.process.steps[self.index]

    async def step_progress(self, percent: int, message: str | None) -> None:
        step = self._current_step()
        pct = max(0, min(100, int(percent)))
        overall = self._overall(self.index, pct)
        # Only a change of the integer percentage (or a message) counts, and a bare percentage is
        # committed at most once per PROGRESS_INTERVAL: no commit storm from chatty steps.
        if overall == self.progress and not message:
            return
        self.progress = overall
        if not message and time.monotonic() - self._progress_committed < PROGRESS_INTERVAL:
            self._progress_dirty = True
            return

        def progress(s: Session, a: Action, r: Reservation | None) -> None:
            a.progress = overall
            if message:
                add_event(s, r, message, step=step.name if step else "", action=a)

        await self._sink_commit(progress)

    async def step_log(self, message: str, level: str) -> None:
        step = self._current_step()
        lvl = level if level in EVENT_LEVELS else "info"

        def event(s: Session, a: Action, r: Reservation | None) -> None:
            add_event(s, r, message, step=step.name if step else "", level=lvl, action=a)

        await self._sink_commit(event)

    async def save_node_attrs(self, attrs: dict[str, Any]) -> None:
        ctx = self._context()
        name = ctx.node.name
        if not name:
            raise _StepFailed("this action has no node to save attributes on")
        values = copy.deepcopy(attrs)

        def save(s: Session, a: Action, r: Reservation | None) -> None:
            node = s.get(Node, name, with_for_update=True, populate_existing=True)
            if node is not None:
                node.attrs = {**(node.attrs or {}), **values}

        await self._sink_commit(save)
        ctx.node.attrs.update(values)


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
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.driver = driver
        self.name = (name or default_name(config))[:128]
        self.lease_seconds = float(lease_seconds or config.lease_seconds or lease.DEFAULT_LEASE_SECONDS)
        self.poll_interval = float(poll_interval or config.poll_interval)
        self.max_concurrent = config.max_concurrent_actions
        self.processes: dict[str, Process] = driver.processes()
        self.db = _Db(sessions)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._by_reservation: dict[int, int] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._backlog = False
        self._fernet: Fernet | None = None
        self._last_renewal = time.monotonic()
        self._closed = False

    # ------------------------------------------------------------ scheduling

    @property
    def running(self) -> list[int]:
        return sorted(self._tasks)

    async def tick(self) -> list[int]:
        """One scheduling pass; returns the ids of the actions claimed (now running here)."""
        now = utcnow()
        free = max(0, self.max_concurrent - len(self._tasks))
        mine = set(self._tasks)

        def work(s: Session) -> tuple[list[tuple[ReservationView, str | None]], list[int]]:
            cancelled = self._schedule(s, now)
            ids = lease.claimable(s, now, free, exclude=mine) if free else []
            claimed = [i for i in ids if lease.claim(s, i, self.name, now, self.lease_seconds)]
            return cancelled, claimed

        cancelled, claimed = await self.db.write(work)
        for view, token in cancelled:
            self._spawn_side(self._cancel_remote(view, token))
        for action_id in claimed:
            self._start(action_id)
        # Every free slot was used: more actions may be waiting, so look again as soon as one ends.
        self._backlog = len(claimed) >= free
        return claimed

    def _schedule(self, s: Session, now: dt.datetime) -> list[tuple[ReservationView, str | None]]:
        """Start due deployments, end expired reservations. Each candidate row is locked and
        checked again, so concurrent executors (and the API) never act twice."""
        has_open = exists().where(
            and_(Action.reservation_id == Reservation.id, Action.status.in_(ACTION_OPEN))
        )
        expired = s.scalars(
            select(Reservation.id).where(
                Reservation.end <= now, Reservation.status.in_((CONFIGURING, *DESTROY_ON_EXPIRY))
            )
        ).all()
        stuck = s.scalars(select(Reservation.id).where(Reservation.status == DESTROYING, ~has_open)).all()
        due = s.scalars(
            select(Reservation.id).where(
                Reservation.status == SCHEDULED, Reservation.start <= now, Reservation.end > now, ~has_open
            )
        ).all()
        cancelled: list[tuple[ReservationView, str | None]] = []
        for rid in sorted(set(expired) | set(stuck) | set(due)):
            r = lock_reservation(s, rid)
            if r is None:
                continue
            current = open_action(s, r.id)
            if r.end <= now and r.status == CONFIGURING:
                cancelled.append((reservation_view(r), r.credentials))
                self._cancel(s, r, current)
            elif (r.end <= now and r.status in DESTROY_ON_EXPIRY) or (
                r.status == DESTROYING and current is None
            ):
                self._destroy(s, r, current, now)
            elif r.status == SCHEDULED and r.start <= now < r.end and current is None:
                self._deploy(s, r)
        return cancelled

    def _deploy(self, s: Session, r: Reservation) -> None:
        node = r.node
        if node.status != NODE_AVAILABLE:
            # A node under maintenance, or marked broken (by a failed destroy...), is not deployed.
            r.status = FAILED
            r.error = (
                f"{node.name} is {node.status}: it cannot be deployed until an administrator makes it "
                "available again"
            )
            add_event(s, r, r.error, level="error")
            return
        start_action(s, r, "deploy", reason="the reservation starts: deployment queued")
        r.status = DEPLOYING

    def _cancel(self, s: Session, r: Reservation, current: Action | None) -> None:
        if current is not None:
            current.status = ACTION_CANCELLED
            current.locked_by = None
            current.locked_until = None
        r.status = CANCELLED
        r.credentials = None
        add_event(s, r, "reservation cancelled: its slot ended before it was configured")

    def _destroy(self, s: Session, r: Reservation, current: Action | None, now: dt.datetime) -> None:
        if current is not None and current.process == "destroy":
            r.status = DESTROYING
            return
        if "destroy" not in self.processes:
            if current is not None:
                current.status = ACTION_CANCELLED
                current.locked_by = None
                current.locked_until = None
            r.status = ENDED
            r.credentials = None
            add_event(s, r, "reservation ended (this node type has nothing to destroy)")
            return
        if r.end <= now:
            reason = f"the reservation ended at {r.end:%Y-%m-%d %H:%M} UTC: destroy queued"
        else:
            reason = "destroy restarted: no action was running"
        start_action(s, r, "destroy", supersede=True, reason=reason)
        r.status = DESTROYING

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

    def _start(self, action_id: int) -> None:
        task = asyncio.create_task(self._guarded(action_id), name=f"piseduce-action-{action_id}")
        self._tasks[action_id] = task
        task.add_done_callback(lambda t: self._finished(action_id, t))

    def _finished(self, action_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(action_id) is task:
            del self._tasks[action_id]
        if self._backlog:
            self._wake.set()

    async def _guarded(self, action_id: int) -> None:
        runner = ActionRunner(self, action_id)
        try:
            await runner.run()
        except lease.LeaseLost as exc:
            log.info("stopped: %s", exc, extra=runner.extra)
        except (SQLAlchemyError, _EngineError):
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
            self._last_renewal = time.monotonic()
            return
        try:
            held = await self.db.write(lambda s: lease.renew(s, ids, self.name, utcnow(), self.lease_seconds))
        except SQLAlchemyError as exc:
            log.warning("cannot renew leases: %s", exc)
            if time.monotonic() - self._last_renewal > self.lease_seconds * 0.8:
                # Another executor may take these actions over any moment: stop before it does.
                log.error(
                    "leases about to expire without contact with the database: stopping %d actions", len(ids)
                )
                for task in list(self._tasks.values()):
                    task.cancel()
            return
        self._last_renewal = time.monotonic()
        for action_id in ids:
            running = self._tasks.get(action_id)
            if action_id not in held and running is not None:
                log.info("action %s was cancelled, finished or taken over: stopping it here", action_id)
                running.cancel()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except Exception:
                log.exception("lease renewal failed")

    # ------------------------------------------------------------ credentials

    def decrypt_credentials(self, token: str | None, extra: dict[str, Any]) -> dict[str, str] | None:
        if not token:
            return None
        if self._fernet is None:
            try:
                self._fernet = load_fernet(self.config.key_path)
            except KeyFileError as exc:
                log.warning(
                    "the reservation carries testbed credentials but they cannot be read: %s",
                    exc,
                    extra=extra,
                )
                return None
        try:
            data = decrypt_json(self._fernet, token)
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

    # ------------------------------------------------------------ lifecycle

    async def run_forever(self, stop: asyncio.Event) -> None:
        log.info(
            "executor %s started (lease %s s, poll %s s, up to %d actions at once)",
            self.name,
            _fmt_seconds(self.lease_seconds),
            _fmt_seconds(self.poll_interval),
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
                        log.exception("scheduling pass failed; retrying in %s s", _fmt_seconds(wait))
                    else:
                        log.warning(
                            "scheduling pass failed again (%s); retrying in %s s", exc, _fmt_seconds(wait)
                        )
                waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(self._wake.wait())}
                _, pending = await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
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
                log.warning("%d actions did not stop within %s s", len(stuck), _fmt_seconds(SHUTDOWN_GRACE))
        try:
            released = await self.db.write(lambda s: lease.release(s, self.name))
            log.info("executor %s stopped: %d actions released, to be resumed", self.name, released)
        except SQLAlchemyError:
            log.exception("cannot release the leases; they expire in %s s", _fmt_seconds(self.lease_seconds))
        self.db.close()


async def run_executor(
    config: AgentConfig, *, name: str | None = None, stop: asyncio.Event | None = None
) -> None:
    """`piseduce agent exec`: run until SIGTERM/SIGINT (or `stop`), then stop cleanly."""
    async def body(sessions: sessionmaker[Session], driver: Driver, stop: asyncio.Event) -> None:
        await Executor(config, sessions, driver, name).run_forever(stop)

    await run_daemon(config, body, tables=("actions", "reservations", "nodes"), stop=stop)
