"""The engine's `StepContext`: what a driver step sees of the action it is part of.

`state` and `connection` are plain dicts the step mutates; the engine persists them after every
call of `run` or `done`. `progress`, `log` and `save_node_attrs` go straight to the action runner,
which commits them at once.
"""

from __future__ import annotations

from typing import Any, Protocol

from piseduce.agent.drivers.base import ReservationView, StepContext
from piseduce.config import AgentConfig


class ContextSink(Protocol):
    """The action runner, seen from a step."""

    async def step_progress(self, percent: int, message: str | None) -> None: ...

    async def step_log(self, message: str, level: str) -> None: ...

    async def save_node_attrs(self, attrs: dict[str, Any]) -> None: ...


class EngineStepContext(StepContext):
    def __init__(
        self,
        reservation: ReservationView,
        config: AgentConfig,
        process: str,
        args: dict[str, Any],
        credentials: dict[str, str] | None,
        sink: ContextSink,
    ) -> None:
        self.reservation = reservation
        self.config = config
        self.process = process
        self.args = args
        self.credentials = credentials
        self._sink = sink

    def __repr__(self) -> str:
        # Never show the credentials, even in a traceback's locals.
        return (
            f"<EngineStepContext reservation={self.reservation.id} node={self.reservation.node.name!r} "
            f"process={self.process!r} credentials={'<hidden>' if self.credentials else None}>"
        )

    async def progress(self, percent: int, message: str | None = None) -> None:
        await self._sink.step_progress(percent, message)

    async def log(self, message: str, level: str = "info") -> None:
        await self._sink.step_log(message, level)

    async def save_node_attrs(self, **attrs: Any) -> None:
        await self._sink.save_node_attrs(attrs)
