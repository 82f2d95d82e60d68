"""A helper's progress lines, turned into the step's progress and a few events.

Progress reports are database commits: the step's percent is sent when it moved enough; an
event (the reservation's timeline) marks the start of a phase and each quarter of it, with the
bytes done, the total and the rate, so that the Manage page shows how far a long write is.
"""

from __future__ import annotations

import time

from piseduce.agent.drivers.base import StepContext
from piseduce.agent.drivers.raspberry.ssh import HelperProgress

MILESTONES = (25, 50, 75)


class PhaseProgress:
    def __init__(self, ctx: StepContext, label: str = "", step: int = 1, every: float = 1.0) -> None:
        self.ctx = ctx
        self.label = label
        self.step = step
        self.every = every
        self.phase: str | None = None
        self.last = -100
        self.at = 0.0
        self.milestones: list[int] = []

    async def __call__(self, p: HelperProgress) -> None:
        prefix = f"{self.label}: " if self.label else ""
        if p.phase != self.phase:
            self.phase = p.phase
            self.milestones = list(MILESTONES)
            self.last, self.at = p.percent, time.monotonic()
            await self.ctx.progress(p.percent, f"{prefix}{p.message}" if p.message else None)
            return
        if self.milestones and p.percent >= self.milestones[0]:
            while self.milestones and p.percent >= self.milestones[0]:
                self.milestones.pop(0)
            self.last, self.at = p.percent, time.monotonic()
            await self.ctx.progress(p.percent, f"{prefix}{p.message}")
            return
        now = time.monotonic()
        if p.percent >= 100 or (p.percent - self.last >= self.step and now - self.at >= self.every):
            self.last, self.at = p.percent, now
            await self.ctx.progress(p.percent)
