"""Progress lines of `piseduce-node` and the stall rule of long phases.

A phase is stalled when its progress (bytes done) stops growing, not when the connection is
quiet: a card read-back sends nothing but its progress lines for minutes (`card.stall_seconds`
says how long "stops growing" is).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass


class NodeCommandError(Exception):
    """A `piseduce-node` (or other) command failed; the message is the helper's readable reason."""


@dataclass(frozen=True)
class HelperProgress:
    """One progress line of `piseduce-node`: a phase (write, verify, read, wipe), its percent,
    and the bytes done of a total (`received`: the bytes of a compressed image taken from the
    agent, while `done` counts those written on the card)."""

    phase: str
    percent: int
    message: str
    done: int | None = None
    total: int | None = None
    received: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        """What must grow for the phase to be moving."""
        done = self.done if self.done is not None else self.percent
        return self.phase, done, self.received or 0


def parse_progress(line: bytes) -> HelperProgress | None:
    """A helper's JSON progress line, or None for anything else (the result line included)."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "progress" not in data or "ok" in data:
        return None

    def number(key: str) -> int | None:
        value = data.get(key)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    try:
        percent = int(float(data["progress"]))
    except (TypeError, ValueError):
        return None
    return HelperProgress(str(data.get("phase", "")), max(0, min(100, percent)), str(data.get("message", "")),
                          number("done"), number("total"), number("received"))


class StallGuard:
    """A phase is stalled when its progress stops growing for `seconds`, however much the
    connection carries (a heartbeat repeating the same count is no progress) and however quiet
    it is (a read-back sends nothing but its progress lines)."""

    def __init__(self, seconds: float, argv: Sequence[str]) -> None:
        self.seconds = seconds
        self.what = " ".join(argv[:2])
        self.moved = asyncio.Event()
        self.last: tuple[str, int, int] | None = None
        self.where = "before its first progress report"

    def saw(self, progress: HelperProgress) -> None:
        key = progress.key
        last = self.last
        if last is None or key[0] != last[0] or key[1] > last[1] or key[2] > last[2]:
            self.last = key
            self.where = f"last: {progress.message}" if progress.message else f"at {progress.percent} %"
            self.moved.set()

    def data_accepted(self) -> None:
        """Bytes of the image were taken by the board: it is reading its input."""
        self.moved.set()

    async def watch(self) -> None:
        while True:
            self.moved.clear()
            try:
                await asyncio.wait_for(self.moved.wait(), self.seconds)
            except TimeoutError:
                window = f"{self.seconds:.0f}" if self.seconds >= 10 else f"{self.seconds:.2g}"
                raise NodeCommandError(
                    f"'{self.what}' stalled: no progress for {window} s ({self.where})"
                ) from None
