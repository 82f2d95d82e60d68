"""One action run to its end (done or failed), step by step, every transition committed through
the journal before the next begins (see the package's docstring for the resume semantics).

A step runs `run()` then polls `done()` under its deadlines: past `reboot_after` the node gets one
automatic hard reboot and the step starts over; past `fail_after` (or its budget) the action fails
with a readable reason. Time is the executor's clock, and the engine's own database waits (the
commits of progress, logs and state a step makes while it runs) pause the step's countdown: a slow
or busy database never fails a step.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from piseduce.agent import lease, lifecycle
from piseduce.agent.actions import add_event
from piseduce.agent.drivers.base import DriverError, NodeView, Process, ReservationView, Step
from piseduce.agent.engine import journal, outcome
from piseduce.agent.engine.bound import StepBound
from piseduce.agent.engine.claimed import Loaded, load_claimed
from piseduce.agent.engine.journal import Mutation, fmt_seconds
from piseduce.agent.engine.rows import ActionRow, ReservationRow
from piseduce.agent.models import (
    ACTION_PENDING,
    ACTION_RUNNING,
    Node,
)
from piseduce.agent.step_context import EngineStepContext

if TYPE_CHECKING:
    from piseduce.agent.engine.executor import Executor

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bound on the automatic hard reboot when the step declares no fail_after.
REBOOT_TIMEOUT = 120.0
# Shortest interval between two commits of a bare progress percentage of one action.
PROGRESS_INTERVAL = 1.0
EVENT_LEVELS = ("info", "warning", "error")


class StepFailed(Exception):
    """The current action fails with this human-readable message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EngineError(Exception):
    """The engine's own bookkeeping failed under a driver step (database down...): not the
    node's fault, so the action is not failed but resumed later."""


class ActionRunner:
    """Runs one claimed action to its end (done or failed), committing every transition."""

    def __init__(self, executor: Executor, action_id: int, loaded: Loaded | None = None) -> None:
        self.ex = executor
        self._loaded = loaded
        self.clock = executor.clock
        self.action_id = action_id
        self.reservation_id: int | None = None
        self.process: Process | None = None
        self.index = 0
        self.step_ran = False
        self.step_rebooted = False
        self.step_started_at = self.clock.now()
        # The step clock as the database has it (step_started_at is the runner's own: see _commit).
        self._stamped: dt.datetime | None = None
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
        self._progress_committed = self.clock.monotonic()
        self._bound = StepBound()
        self._weights: tuple[list[int], int] | None = None

    # ------------------------------------------------------------ the whole action

    async def run(self) -> None:
        loaded = self._loaded if self._loaded is not None else await self.ex.db.write(self._load)
        self.process = self.ex.processes.get(loaded.process)
        res = loaded.reservation
        if res is None:
            res = self._placeholder(loaded.args)
        else:
            self.reservation_id = res.id
        self.extra.update(node=res.node.name or None, reservation=self.reservation_id, action=loaded.process)
        self.index = loaded.step_index
        self.step_ran = loaded.step_ran
        self.step_rebooted = loaded.step_rebooted
        self.step_started_at = self._stamped = loaded.step_started_at
        self.progress = loaded.progress
        self.saved_state = copy.deepcopy(res.driver_state)
        self.saved_connection = copy.deepcopy(res.connection)
        credentials = self.ex.decrypt_credentials(loaded.credentials, self.extra)
        res.params = self.ex.unseal_params(res.params, self.extra)
        self.ctx = EngineStepContext(res, self.ex.config, loaded.process, loaded.args, credentials, self)

        await self.ex.take_reservation(self.reservation_id, self.action_id)
        try:
            if self.process is None:
                await self._fail(f"unknown process '{loaded.process}' for {self.ex.driver.node_type} nodes")
                return
            if loaded.started:
                # Started by the claim's transaction: its first step's clock starts now.
                self.begun = True
                self.step_started_at = self.clock.now()
            else:
                await self._begin(loaded)
            try:
                await self._steps(self.process)
            except StepFailed as failure:
                await self._fail(failure.message)
        finally:
            self.ex.leave_reservation(self.reservation_id, self.action_id)

    def _placeholder(self, args: dict[str, Any]) -> ReservationView:
        """The view of an action without reservation (an environment registration)."""
        now = self.clock.now()
        return ReservationView(
            id=0,
            node=NodeView(name=str(args.get("node", ""))),
            owner=str(args.get("owner", "")),
            bin="",
            start=now,
            end=now,
            status="",
            params=dict(args),
            driver_state=dict(args.get("driver_state") or {}),
        )

    def _load(self, s: Session) -> Loaded:
        loaded = load_claimed(s, [self.action_id], self.ex.name).get(self.action_id)
        if loaded is None:
            raise lease.LeaseLost(f"action {self.action_id} is not held by {self.ex.name}")
        return loaded

    async def _begin(self, loaded: Loaded) -> None:
        assert self.process is not None
        process = self.process
        steps = process.steps
        step = steps[self.index] if self.index < len(steps) else None
        if loaded.status == ACTION_PENDING:

            def start(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
                a.status = ACTION_RUNNING
                if r is not None:
                    lifecycle.begin(r, process.name)
                    r.error = ""
                add_event(s, r, f"{process.name} started", action=a)

            if step is None:
                await self._commit(start)
            else:
                self._prelude = start  # committed with the first step's start: one commit less
            return
        # A resumed action: the step it was in restarts its clock (the outage is not the node's fault).
        resumed_in_step = step is not None and loaded.step_name == step.name

        def resume(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            where = f" at step '{step.title}'" if step is not None and resumed_in_step else ""
            add_event(
                s,
                r,
                f"{process.name} resumed by executor {self.ex.name}{where}",
                action=a,
                step=step.name if step is not None else "",
            )
            if resumed_in_step:
                a.step_started_at = self.clock.now()

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

    def _fail_after(self, step: Step, ctx: EngineStepContext) -> float | None:
        """The step's fail_after for this reservation (its budget when it declares one)."""
        if step.budget is None:
            return step.fail_after
        try:
            return step.budget(ctx)
        except DriverError as exc:
            raise StepFailed(str(exc) or f"{step.title}: failed") from exc

    def _deadline(self, step: Step, fa: float | None) -> tuple[dt.datetime | None, str]:
        ra = step.reboot_after
        if ra is not None and not self.step_rebooted and (fa is None or ra < fa):
            return self.step_started_at + dt.timedelta(seconds=ra), "reboot"
        if fa is not None:
            return self.step_started_at + dt.timedelta(seconds=fa), "fail"
        return None, ""

    async def _drive(self, step: Step) -> None:
        """Run the step (run, then poll done) under its timeouts, with one automatic reboot."""
        ctx = self._context()
        fail_after = self._fail_after(step, ctx)
        while True:
            deadline, kind = self._deadline(step, fail_after)
            left = None if deadline is None else max(0.0, (deadline - self.clock.now()).total_seconds())
            timeout = self.clock.timeout(left)
            try:
                async with self._bound.bounded(timeout):
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
                        await self.clock.sleep(step.poll)
                    if step.done is not None:
                        while not await self._call(step, step.done(ctx)):
                            if ctx.state != self.saved_state or ctx.connection != self.saved_connection:
                                await self._commit(None)
                            await self.clock.sleep(step.poll)
                return
            except TimeoutError:
                if not timeout.expired():
                    raise
            if kind == "reboot":
                await self._auto_reboot(step, fail_after)
                continue
            assert fail_after is not None
            after = " (even after an automatic hard reboot)" if self.step_rebooted else ""
            raise StepFailed(f"{step.title}: no result after {fmt_seconds(fail_after)} s{after}")

    async def _call(self, step: Step, coro: Awaitable[T]) -> T:
        """Await a driver coroutine, turning its errors into a readable failure of the action."""
        try:
            return await coro
        except (lease.LeaseLost, EngineError):
            raise
        except DriverError as exc:
            raise StepFailed(str(exc) or f"{step.title}: failed") from exc
        except TimeoutError as exc:
            # The driver's own timeout (ours cancels the coroutine instead).
            detail = f" ({exc})" if str(exc) else ""
            raise StepFailed(f"{step.title}: timed out{detail}") from exc
        except Exception as exc:
            log.error("%s: unexpected error in the driver", step.title, exc_info=True, extra=self.extra)
            raise StepFailed(f"{step.title}: {str(exc) or type(exc).__name__}") from exc

    async def _start_step(self, step: Step) -> None:
        prelude, self._prelude = self._prelude, None

        def start(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            if prelude is not None:
                prelude(s, a, r)
            a.step_index = self.index
            a.step_name = step.name
            a.step_started_at = self.clock.now()
            a.step_ran = False
            a.step_rebooted = False
            add_event(s, r, f"{step.title}: started", step=step.name, action=a)

        await self._commit(start)
        self.begun = True
        self.step_ran = False
        self.step_rebooted = False

    async def _mark_ran(self, step: Step) -> None:
        def ran(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            a.step_ran = True
            add_event(s, r, f"{step.title}: waiting for the result", step=step.name, action=a)

        await self._commit(ran)
        self.step_ran = True

    async def _auto_reboot(self, step: Step, fail_after: float | None) -> None:
        elapsed = (self.clock.now() - self.step_started_at).total_seconds()

        def rebooting(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            # Committed before the reboot: a crash during it never causes a second one.
            a.step_rebooted = True
            a.step_ran = False
            add_event(
                s,
                r,
                f"{step.title}: no answer after {fmt_seconds(elapsed)} s: automatic hard reboot",
                step=step.name,
                level="warning",
                action=a,
            )

        await self._commit(rebooting)
        self.step_rebooted = True
        self.step_ran = False
        limit = fail_after or REBOOT_TIMEOUT
        try:
            async with self._bound.bounded(self.clock.timeout(limit)):
                await self._call(step, self.ex.driver.hard_reboot(self._context()))
        except TimeoutError:
            raise StepFailed(
                f"{step.title}: the automatic hard reboot did not finish within {fmt_seconds(limit)} s"
            ) from None
        except StepFailed as failure:
            raise StepFailed(f"{step.title}: automatic hard reboot failed: {failure.message}") from None

        def rebooted(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            a.step_started_at = self.clock.now()
            add_event(s, r, f"{step.title}: node rebooted, the step starts over", step=step.name, action=a)

        await self._commit(rebooted)

    def _overall(self, index: int, step_percent: int) -> int:
        assert self.process is not None
        steps = self.process.steps
        if self._weights is None:
            # Summed once per action, not at every progress report.
            weights = [max(s.weight, 0) for s in steps]
            self._weights = ([sum(weights[:i]) for i in range(len(weights) + 1)], sum(weights) or 1)
        before, total = self._weights
        done = before[min(index, len(steps))]
        current = max(steps[index].weight, 0) * step_percent / 100 if index < len(steps) else 0
        return max(0, min(100, int((done + current) * 100 / total)))

    async def _advance(self, step: Step, nxt: Step) -> None:
        progress = self._overall(self.index + 1, 0)

        def advance(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            add_event(s, r, f"{step.title}: done", step=step.name, action=a)
            a.step_index = self.index + 1
            a.step_name = nxt.name
            a.step_started_at = self.clock.now()
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
        await self._commit(outcome.completed(self.process, step))
        self.progress = 100

    async def _fail(self, message: str) -> None:
        process = self.process
        step_name = ""
        if process is not None and self.index < len(process.steps):
            step_name = process.steps[self.index].name
        await self._commit(outcome.failed(process, step_name, message))

    # ------------------------------------------------------------ committing

    def _context(self) -> EngineStepContext:
        assert self.ctx is not None
        return self.ctx

    async def _commit(self, mutate: Mutation | None) -> None:
        """One transition, written with those of other actions (group.py) and committed before
        this returns: check the lease (and extend it), persist the step's state and connection if
        they changed, apply `mutate`."""
        ctx = self._context()
        entry = journal.Entry(
            action_id=self.action_id,
            reservation_id=self.reservation_id,
            owner=self.ex.name,
            lease_seconds=self.ex.lease_seconds,
            now=self.clock.now,
            # The last saved copy when nothing changed (it is never mutated): no copy per commit.
            state=self.saved_state if ctx.state == self.saved_state else copy.deepcopy(ctx.state),
            saved_state=self.saved_state,
            connection=(
                self.saved_connection
                if ctx.connection == self.saved_connection
                else copy.deepcopy(ctx.connection)
            ),
            saved_connection=self.saved_connection,
            progress=self.progress if self._progress_dirty else None,
            mutate=mutate,
        )
        # The step's countdown stops while the engine waits for its own database (bound.py).
        with self._bound.engine_wait():
            end, started = await self.ex.journal.commit(entry)
        if started != self._stamped:
            # A step clock stamped by this commit starts for the step when the commit is done:
            # the wait for its batch (and for this task's turn on a busy loop) is not the node's.
            self._stamped = started
            self.step_started_at = self.clock.now()
        self.saved_state, self.saved_connection = entry.state, entry.connection
        if entry.progress is not None and entry.progress == self.progress:
            self._progress_dirty = False
        self._progress_committed = self.clock.monotonic()
        if end is not None:
            ctx.reservation.end = end  # an extension made meanwhile

    async def _sink_commit(self, mutate: Mutation) -> None:
        try:
            await self._commit(mutate)
        except SQLAlchemyError as exc:
            raise EngineError(str(exc)) from exc

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
        # committed at most once per PROGRESS_INTERVAL: no commit storm from chatty steps. A step's
        # own 100 % rides with the commit that follows its run() (done, or waiting for the result).
        if overall == self.progress and not message:
            return
        self.progress = overall
        soon = pct == 100 or self.clock.monotonic() - self._progress_committed < PROGRESS_INTERVAL
        if not message and soon:
            self._progress_dirty = True
            return

        def progress(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            a.progress = overall
            if message:
                add_event(s, r, message, step=step.name if step else "", action=a)

        await self._sink_commit(progress)

    async def step_log(self, message: str, level: str) -> None:
        step = self._current_step()
        lvl = level if level in EVENT_LEVELS else "info"

        def event(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            add_event(s, r, message, step=step.name if step else "", level=lvl, action=a)

        await self._sink_commit(event)

    async def save_node_attrs(self, attrs: dict[str, Any]) -> None:
        ctx = self._context()
        name = ctx.node.name
        if not name:
            raise StepFailed("this action has no node to save attributes on")
        values = copy.deepcopy(attrs)

        def save(s: Session, a: ActionRow, r: ReservationRow | None) -> None:
            node = s.get(Node, name, with_for_update=True, populate_existing=True)
            if node is not None:
                node.attrs = {**(node.attrs or {}), **values}

        await self._sink_commit(save)
        ctx.node.attrs.update(values)
