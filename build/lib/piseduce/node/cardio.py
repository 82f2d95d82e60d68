"""Bulk access to the SD card: every large read or write of the helper goes through `open_card`.

One place for the card's data path gives one behaviour everywhere:
- on a card that is a regular file (the simulator's), runs of zero blocks become holes, so a
  mostly empty 16 GiB card costs almost no disk space;
- `flush()` pushes the written data to the card and drops it from the page cache, so a read-back
  that follows reads the card itself, not the memory copy of what was just written (a Pi has
  gigabytes of page cache: without this a "verify" proves nothing);
- writes are flushed every `FLUSH_BYTES`, so the bytes a progress line counts are on the card, and
  a final flush cannot hide minutes of silent write-back behind 100 %.

The simulator models its cards' speed by wrapping `open_card` (see `piseduce.sim.rpi.card`).
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path
from types import TracebackType

from piseduce.node.disk import DiskError, is_block_device, punch_hole

HOLE_BLOCK = 1 << 16
FLUSH_BYTES = 32 << 20
_ZERO = bytes(HOLE_BLOCK)
# The left operand of `==`: bytearray's comparison takes any buffer and memcmp()s it in place (a
# memoryview on the left compares element by element in Python's struct code: 30 times slower).
_ZERO_BLOCK = bytearray(HOLE_BLOCK)
BLKZEROOUT = 0x127F  # _IO(0x12, 127)


def zeroes_offloaded(device: Path) -> bool:
    """The block device zeroes ranges itself (write-zeroes), so BLKZEROOUT of a whole card is fast;
    SD cards through most MMC hosts cannot, and the kernel would write every zero instead."""
    try:
        st = os.stat(device)
        sysfs = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        if (sysfs / "partition").exists():
            sysfs = sysfs.parent
        return int((sysfs / "queue" / "write_zeroes_max_bytes").read_text()) > 0
    except (OSError, ValueError):
        return False


def is_zero(block: bytes | bytearray | memoryview) -> bool:
    """`block` (at most HOLE_BLOCK bytes) is all zeros: one memcmp, no copy for a whole block."""
    if len(block) == HOLE_BLOCK:
        return _ZERO_BLOCK == block  # noqa: SIM300 (the order is the point: see _ZERO_BLOCK)
    return bytes(block) == _ZERO[:len(block)]


class CardIO:
    """The card opened for reading (`write=False`) or reading and writing."""

    def __init__(self, device: Path, *, write: bool) -> None:
        self.device = Path(device)
        try:
            self.fd = os.open(self.device, os.O_RDWR if write else os.O_RDONLY)
        except OSError as exc:
            raise DiskError(f"cannot open {device}: {exc.strerror}") from exc
        self.sparse = not is_block_device(self.device)
        self.unflushed = 0

    # -- reads

    def pread(self, length: int, offset: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end of the card)."""
        parts: list[bytes] = []
        got = 0
        while got < length:
            data = os.pread(self.fd, length - got, offset + got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    # -- writes

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of `data` at `offset`; zero blocks become holes on a file card."""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            end = min(pos + HOLE_BLOCK, len(view))
            block = view[pos:end]
            if self.sparse and is_zero(block) and punch_hole(self.fd, offset + pos, end - pos):
                pos = end
                continue
            pos += os.pwrite(self.fd, block, offset + pos)
        self._wrote(len(view))

    def pwrite_nonzero(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Write `data` at `offset` on a card known to read as zeros there: its all-zero blocks
        are skipped (neither written nor counted as written). Returns the bytes skipped."""
        view = memoryview(data)
        skipped = pos = 0
        while pos < len(view):
            # Blocks aligned on the card, whatever the sizes the data arrives in.
            end = min(pos + HOLE_BLOCK - (offset + pos) % HOLE_BLOCK, len(view))
            if is_zero(view[pos:end]):
                skipped += end - pos
            else:
                self.pwrite(view[pos:end], offset + pos)
            pos = end
        return skipped

    def zero(self, offset: int, length: int) -> None:
        """Make `length` bytes at `offset` read as zeros."""
        if self.sparse and punch_hole(self.fd, offset, length):
            self._wrote(length)
            return
        chunk = bytes(min(length, 1 << 20))
        done = 0
        while done < length:
            n = min(len(chunk), length - done)
            self.pwrite(chunk[:n], offset + done)
            done += n

    def erase(self) -> bool:
        """Make the whole card read as zeros when the card can do it without writing every byte
        (a file card: one hole; a block device that offloads zeroing: BLKZEROOUT); False otherwise,
        and nothing changed."""
        size = os.lseek(self.fd, 0, os.SEEK_END)
        if self.sparse:
            return punch_hole(self.fd, 0, size)
        if not zeroes_offloaded(self.device):
            return False
        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", 0, size))
        except OSError:
            return False
        return True

    def _wrote(self, n: int) -> None:
        self.unflushed += n
        if self.unflushed >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Data on the card, and out of the page cache (the next read comes from the card)."""
        os.fsync(self.fd)
        self.unflushed = 0
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> CardIO:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_card(device: Path, *, write: bool = False) -> CardIO:
    """The helper's only way to the card's bulk data (the simulator replaces it to model speed)."""
    return CardIO(device, write=write)
