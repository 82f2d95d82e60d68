"""Group commit: the transitions of many concurrent actions written in one transaction.

An action hands its transition (`journal.Entry`) to `GroupCommit.commit` and waits; a flusher
takes every transition queued by then and writes them with `journal.commit_many` in one
transaction, and only once that transaction is committed does each action get its result and go
on. So "every transition committed before the next begins" holds per action, while a thousand
actions cost a few transactions a second instead of thousands (one lock query per table, one
flush, one commit, one fsync per batch). No timer: a batch is whatever queued while the previous
one was being written, so a lone action waits for nothing but its own commit.

A transition that raises (a bad mutation, a constraint, a deadlock) rolls its batch back before
anything is committed; the batch's entries are then written one per transaction, so only that
action gets the error. An error at COMMIT itself is given to every action of the batch and is not
retried: the server may have committed it, and each action's task stops (its lease expires and
the action resumes from what the database holds, as after a crash).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy.orm import Session

from piseduce.agent import lease
from piseduce.agent.engine import journal
from piseduce.agent.engine.db import DbPool

# Most transitions written in one transaction (bounds a batch's lock set and its latency).
MAX_BATCH = 500


class _Rejected(Exception):
    """The batch failed before its COMMIT (rolled back): its entries may be written one by one."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


_Waiter = tuple[journal.Entry, "asyncio.Future[journal.Committed]"]


class GroupCommit:
    """Batches the journal's commits of one executor; `flushers` batches may be written at once
    (one on SQLite, whose writers are serialised anyway)."""

    def __init__(self, db: DbPool, flushers: int = 1, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.flushers = max(1, flushers)
        self.max_batch = max_batch
        self._queue: list[_Waiter] = []
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Batches written and transitions in them (the bench prints the mean batch size).
        self.batches = 0
        self.entries = 0

    async def commit(self, entry: journal.Entry) -> journal.Committed:
        """Write `entry` (with the others queued meanwhile); return once it is committed."""
        future: asyncio.Future[journal.Committed] = asyncio.get_running_loop().create_future()
        self._queue.append((entry, future))
        if self._active < self.flushers:
            self._active += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                # Let the actions that are runnable right now queue their transitions first.
                await asyncio.sleep(0)
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                live = [(e, f) for e, f in batch if not f.done()]
                if live:
                    await self._write(live)
        finally:
            self._active -= 1

    async def _write(self, batch: Sequence[_Waiter]) -> None:
        entries = [e for e, _ in batch]
        try:
            results = await self.db.write(lambda s: _write_batch(s, entries))
        except _Rejected as rejected:
            if len(batch) == 1:
                _settle(batch[0][1], rejected.cause)
                return
            for entry, future in batch:
                try:
                    result: journal.Committed | BaseException = await self.db.write(
                        lambda s, e=entry: journal.commit(s, e)  # type: ignore[misc]
                    )
                except Exception as exc:
                    result = exc
                _settle(future, result)
            return
        except Exception as exc:
            for _, future in batch:
                _settle(future, exc)
            return
        self.batches += 1
        self.entries += len(batch)
        for (_, future), res in zip(batch, results, strict=True):
            _settle(future, res)

    async def close(self) -> None:
        """Wait for the batches being written (a stopping executor)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _write_batch(s: Session, entries: list[journal.Entry]) -> list[journal.Committed | lease.LeaseLost]:
    try:
        results = journal.commit_many(s, entries)
        s.flush()
    except Exception as exc:
        raise _Rejected(exc) from exc
    return results


def _settle(future: asyncio.Future[journal.Committed], result: journal.Committed | BaseException) -> None:
    # A cancelled action no longer waits (its transition may still have been written: it resumes
    # from what the database holds).
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
