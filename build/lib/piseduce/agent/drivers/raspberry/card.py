"""What the agent assumes of an SD card: time budgets and stall detection follow the data size.

Real Raspberry Pi OS images are 2-6 GB and saved environments are card-sized (16-64 GB). A
card writes at 20-40 MB/s and reads at about 44 MB/s on a Pi 4 (about 20 MB/s on a Pi 3B+).
The budgets use a documented worst case, the slowest card the testbed supports:

    WORST_CASE_WRITE = WORST_CASE_READ = 10 MB/s   (SD speed class 10 / UHS-I U1's minimum)

- A step that moves N bytes to or from the card gets `RECOVERY_SECONDS` (one power loss: power
  cycle, netboot, reconnect, start over) plus N / worst-case speed. A 16 GiB image written at the
  worst case needs 29 minutes; its budget is 34 minutes; a card at 20 MB/s writes it in 14.
- A phase is stalled when the helper's count of bytes done stops growing (not when the network
  is silent: a read-back sends nothing to the agent for minutes). The helper flushes every
  `FLUSH_BYTES` and reports at least every `REPORT_INTERVAL` while bytes move, so at the worst
  case a line that advances arrives every few seconds; `stall_seconds()` waits ten times that,
  never less than a minute.
"""

from __future__ import annotations

from pathlib import Path

from piseduce.node.cardio import FLUSH_BYTES
from piseduce.node.image import detect_format
from piseduce.node.meter import REPORT_INTERVAL

MB = 1_000_000
GIB = 1 << 30
WORST_CASE_WRITE_BPS = 10 * MB
WORST_CASE_READ_BPS = 10 * MB
# One power loss during a phase: power cycle, netboot (a Pi 3B+ takes about a minute), reconnect.
RECOVERY_SECONDS = 300.0
# The largest card the testbed expects (budgets of phases whose size is not known in advance).
MAX_CARD_BYTES = 64 * GIB
STALL_FLOOR_SECONDS = 60.0


def write_seconds(nbytes: int, scale: float = 1.0) -> float:
    """Budget of writing `nbytes` to the card (only the recovery part follows the time scale:
    the bytes take real time whatever the simulated clock)."""
    return RECOVERY_SECONDS * scale + max(0, nbytes) / WORST_CASE_WRITE_BPS


def read_seconds(nbytes: int, scale: float = 1.0) -> float:
    return RECOVERY_SECONDS * scale + max(0, nbytes) / WORST_CASE_READ_BPS


def stall_seconds() -> float:
    """No growth of the bytes done for this long: the phase is stalled."""
    expected_gap = FLUSH_BYTES / min(WORST_CASE_WRITE_BPS, WORST_CASE_READ_BPS) + REPORT_INTERVAL
    return max(STALL_FLOOR_SECONDS, 10 * expected_gap)


def card_bytes_of(image: Path, declared: int) -> int:
    """How many bytes writing `image` puts on the card: the environment's declared size, else
    the file's size when it is a raw image, else (compressed, size unknown) the largest card."""
    if declared > 0:
        return declared
    try:
        with image.open("rb") as fh:
            head = fh.read(4096)
        size = image.stat().st_size
    except OSError:
        return MAX_CARD_BYTES
    return size if detect_format(head) == "raw" else MAX_CARD_BYTES


def is_raw(image: Path) -> bool:
    """A raw image (the only kind a board can serve from its card to the next one)."""
    try:
        with image.open("rb") as fh:
            return detect_format(fh.read(4096)) == "raw"
    except OSError:
        return False


def size_words(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB else f"{nbytes >> 20} MiB"
