"""The executor process's garbage collector (engine/executor.py, tune_gc): what exists once it has
started is frozen and young collections are rarer, so that no full collection of the whole heap
stalls a thousand running actions."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from piseduce.agent.engine import executor


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_gc_freezes_what_exists_and_raises_the_young_threshold(restored_gc: None) -> None:
    gc.unfreeze()
    older = gc.get_threshold()[1:]
    kept = [object() for _ in range(10)]
    executor.tune_gc()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (executor.GC_YOUNG_THRESHOLD, *older)


async def test_the_executor_process_runs_with_the_tuned_collector(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    seen: list[tuple[int, int]] = []

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append((gc.get_threshold()[0], gc.get_freeze_count()))

        async def run_forever(self, stop: asyncio.Event) -> None:
            return None

    async def daemon(config: Any, body: Any, **kwargs: Any) -> None:
        await body(None, None, asyncio.Event())

    monkeypatch.setattr(executor, "Executor", Recorder)
    monkeypatch.setattr(executor, "run_daemon", daemon)
    await executor.run_executor(None)  # type: ignore[arg-type]
    assert len(seen) == 1
    threshold, frozen = seen[0]
    assert threshold == executor.GC_YOUNG_THRESHOLD and frozen > 0
