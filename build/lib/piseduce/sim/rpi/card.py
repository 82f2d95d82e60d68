"""The simulated SD card: a sparse file with the speed of a real card.

A real card writes at 20–40 MB/s and reads at about 44 MB/s (a Pi 4's SD bus); the simulated
card is a file on the host's disk, a hundred times faster. So that long phases (writing a
multi-gigabyte image, reading it back, saving a card) take the time they take on a board, each
board's card has a write and a read speed in MB/s (`CardSpeed`, None = as fast as the host).

The speed belongs to the card, not to the helper: the board runs the real `piseduce-node`
through this module (`python -m piseduce.sim.rpi.card --write-mbps W --read-mbps R -- ARGS`),
which paces every bulk access the helper makes to the card (`piseduce.node.cardio.open_card`,
the helper's single path to the card's data) like a slow device would, then runs the helper's
own `main`. Nothing in the helper knows: the same command on a real board has no such layer.
Holes punched for zero blocks are paced as writes too: a real card writes those bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from piseduce.node import cardio

MB = 1_000_000
# A realistic spread for the demo and the benchmarks: each board's card is a little different.
REALISTIC_WRITE_MBPS = (20.0, 40.0)
REALISTIC_READ_MBPS = 44.0


@dataclass(frozen=True)
class CardSpeed:
    write_mbps: float | None = None
    read_mbps: float | None = None

    def __post_init__(self) -> None:
        for name in ("write_mbps", "read_mbps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None: unlimited)")

    @property
    def limited(self) -> bool:
        return self.write_mbps is not None or self.read_mbps is not None

    def describe(self) -> str:
        def one(v: float | None) -> str:
            return "unlimited" if v is None else f"{v:.0f} MB/s"
        return f"write {one(self.write_mbps)}, read {one(self.read_mbps)}"

    def argv(self) -> list[str]:
        out = []
        if self.write_mbps is not None:
            out += ["--write-mbps", f"{self.write_mbps:g}"]
        if self.read_mbps is not None:
            out += ["--read-mbps", f"{self.read_mbps:g}"]
        return out


def spread(boards: int, write: tuple[float, float] | None, read: float | None) -> list[CardSpeed]:
    """Per-board speeds: write speeds evenly spread over [low, high] (board 1 the slowest)."""
    out = []
    for i in range(boards):
        w = None
        if write is not None:
            low, high = write
            w = low if boards == 1 else low + (high - low) * i / (boards - 1)
        out.append(CardSpeed(w, read))
    return out


def parse_speed(text: str) -> tuple[tuple[float, float] | None, float | None]:
    """`unlimited`, `realistic` (20-40 MB/s write, 44 MB/s read) or `W[-W2][:R]` in MB/s:
    the (write range, read speed) of ClusterOptions. ValueError with the accepted forms."""
    text = text.strip().lower()
    if text in ("", "unlimited", "none"):
        return None, None
    if text == "realistic":
        return REALISTIC_WRITE_MBPS, REALISTIC_READ_MBPS
    write, _, read = text.partition(":")
    try:
        low, _, high = write.partition("-")
        lo = float(low)
        hi = float(high) if high else lo
        rd = float(read) if read else None
    except ValueError:
        raise ValueError(f"card speed {text!r}: expected unlimited, realistic, W, W1-W2 or W1-W2:R "
                         "(MB/s)") from None
    if not 0 < lo <= hi or (rd is not None and not rd > 0):
        raise ValueError(f"card speed {text!r}: speeds must be positive, low before high")
    return (lo, hi), rd


class Pace:
    """The card's time at `rate` bytes/s: `charge(n)` returns when n more bytes are done, or, with
    a `backlog` of b bytes, as soon as the card is at most b bytes behind (the kernel's write-back:
    a writer goes on while the card catches up, and waits for it at `drain`, its fsync).
    Idle time earns nothing: a card is never faster after a pause."""

    def __init__(self, mbps: float | None) -> None:
        self.rate = mbps * MB if mbps else None
        self.free_at = 0.0

    def charge(self, n: int, backlog: int = 0) -> None:
        if self.rate is None or n <= 0:
            return
        now = time.monotonic()
        self.free_at = max(self.free_at, now) + n / self.rate
        wait = self.free_at - now - backlog / self.rate
        if wait > 0:
            time.sleep(wait)

    def drain(self) -> None:
        """Until every byte charged is on the card."""
        wait = self.free_at - time.monotonic()
        if self.rate is not None and wait > 0:
            time.sleep(wait)


class SlowCard(cardio.CardIO):
    """The card at its own speed."""

    def __init__(self, device: Path, *, write: bool, reads: Pace, writes: Pace) -> None:
        super().__init__(device, write=write)
        self.reads = reads
        self.writes = writes

    def pread(self, length: int, offset: int) -> bytes:
        data = super().pread(length, offset)
        self.reads.charge(len(data))
        return data

    def _wrote(self, n: int) -> None:
        # Written data waits in the page cache, at most what the helper writes between two flushes,
        # while the card writes it: receiving the image and writing the card overlap, as on a Pi.
        self.writes.charge(n, backlog=cardio.FLUSH_BYTES)
        super()._wrote(n)

    def flush(self) -> None:
        self.writes.drain()
        super().flush()

    def close(self) -> None:
        self.writes.drain()  # the last close of a block device writes its dirty pages back
        super().close()


def install(speed: CardSpeed) -> None:
    """From now on, the helper in this process reaches its card at `speed`."""
    if not speed.limited:
        return
    # One budget per direction for the whole command: a phase that reopens the card keeps its pace.
    reads, writes = Pace(speed.read_mbps), Pace(speed.write_mbps)

    def open_card(device: Path, *, write: bool = False) -> cardio.CardIO:
        return SlowCard(device, write=write, reads=reads, writes=writes)

    cardio.open_card = open_card  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="piseduce.sim.rpi.card",
                                     description="run piseduce-node against a card of a given speed")
    parser.add_argument("--write-mbps", type=float, default=None)
    parser.add_argument("--read-mbps", type=float, default=None)
    parser.add_argument("helper_args", nargs=argparse.REMAINDER, help="-- then the helper's arguments")
    args = parser.parse_args(argv)
    rest = list(args.helper_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    install(CardSpeed(args.write_mbps, args.read_mbps))
    from piseduce.node.cli import main as helper_main

    return helper_main(rest)


if __name__ == "__main__":
    sys.exit(main())
