"""Reading the card back as a gzip stream: the image of a deployed system (environment factory).

The stream covers the card from sector 0 to the end of its last partition. A card is mostly
empty space: every all-zero megabyte is sent as one precomputed gzip member (about 1 kB) instead
of going through deflate, which would cost seconds per gigabyte. Concatenated gzip members are one
valid gzip stream (RFC 1952 §2.2; gzip(1), Python's gzip and `write-image` all read them).
Memory stays at a few megabytes whatever the card size.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from piseduce.node.disk import SECTOR, DiskError, device_size, read_table

CHUNK = 1 << 20
_ZERO = bytes(CHUNK)
_ZERO_MEMBER = gzip.compress(_ZERO, compresslevel=9, mtime=0)

Progress = Callable[[int, str], None]


class _Counter:
    """The output stream, counting what was written (the agent checks it received as much)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.count = 0

    def write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.count += len(data)


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


def read_image(device: Path, out: BinaryIO, *, progress: Progress, level: int = 6) -> dict[str, object]:
    """Writes the gzip-compressed card (sector 0 to the end of the last partition) to `out`."""
    if not 1 <= level <= 9:
        raise DiskError("the compression level is between 1 and 9")
    table = read_table(device)
    if table is None or not table.partitions:
        raise DiskError("the card has no partition table: nothing to read")
    root = table.get(2)
    end = max(p.end for p in table.partitions) * SECTOR
    card = device_size(device)
    if end > card:
        raise DiskError(f"the partition table ends at byte {end}, past the end of the card ({card})")
    sink = _Counter(out)
    sha = hashlib.sha256()
    member: zlib._Compress | None = None  # the open gzip member of non-zero data
    done, last_pct = 0, -1
    with open(device, "rb") as f:
        while done < end:
            want = min(CHUNK, end - done)
            data = _read_exactly(f, want)  # type: ignore[arg-type]
            if len(data) < want:
                raise DiskError(f"the card could not be read past byte {done + len(data)}")
            sha.update(data)
            if want == CHUNK and data == _ZERO:
                if member is not None:
                    sink.write(member.flush())
                    member = None
                sink.write(_ZERO_MEMBER)
            else:
                if member is None:
                    member = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS | 16)
                sink.write(member.compress(data))
            done += want
            pct = done * 100 // end
            if pct >= last_pct + 2:
                last_pct = pct
                progress(pct, f"{done} of {end} bytes read")
    if member is not None:
        sink.write(member.flush())
    out.flush()
    return {
        "size": end,
        "sha256": sha.hexdigest(),
        "sector_start": root.start,
        "compressed": sink.count,
        "format": "gz",
    }
