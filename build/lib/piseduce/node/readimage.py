"""Reading the card back as a gzip stream: the image of a deployed system (environment factory).

The stream covers the card from sector 0 to the end of its last partition. A card is mostly
empty space: every all-zero megabyte is sent as one precomputed gzip member (about 1 kB) instead
of going through deflate, which would cost seconds per gigabyte. Concatenated gzip members are one
valid gzip stream (RFC 1952 §2.2; gzip(1), Python's gzip and `write-image` all read them).
Memory stays at a few megabytes whatever the card size.

The board's SSH host private keys are left out (their blocks are read as zeros): the image is
deployed on other boards, which must not be able to pass for this one. The card is not changed.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import BinaryIO

from piseduce.node import cardio
from piseduce.node.disk import SECTOR, DiskError, Partition, device_size, read_table
from piseduce.node.fs import Ext4
from piseduce.node.meter import Meter
from piseduce.node.system import host_key_paths

CHUNK = 1 << 20
_ZERO = bytes(CHUNK)
_ZERO_MEMBER = gzip.compress(_ZERO, compresslevel=9, mtime=0)


class _Counter:
    """The output stream, counting what was written (the agent checks it received as much)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.count = 0

    def write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.count += len(data)


def host_key_ranges(device: Path, root: Partition) -> tuple[list[tuple[int, int]], int]:
    """Byte ranges of the card holding the root filesystem's SSH host private keys, and how many keys."""
    fs = Ext4(device, root.offset)
    try:
        fs.check()
    except DiskError:
        return [], 0  # not ext4: nothing this helper knows how to leave out
    paths = host_key_paths(fs, private_only=True)
    if not paths:
        return [], 0
    block = fs.block_size()
    ranges = []
    for path in paths:
        blocks = fs.data_blocks(path)
        if not blocks and fs.read_files([path])[path]:
            raise DiskError(f"{path} has its data inside its inode (ext4 inline_data): the image "
                            "would carry this board's host key; save it from a card without inline_data")
        ranges += [(root.offset + b * block, block) for b in blocks]
    return ranges, len(paths)


def _blank(data: bytes, offset: int, ranges: list[tuple[int, int]]) -> bytes:
    """`data` (read at `offset`) with the bytes inside `ranges` zeroed."""
    hits = [(s, n) for s, n in ranges if s < offset + len(data) and s + n > offset]
    if not hits:
        return data
    buf = bytearray(data)
    for start, length in hits:
        lo, hi = max(start, offset) - offset, min(start + length, offset + len(data)) - offset
        buf[lo:hi] = bytes(hi - lo)
    return bytes(buf)


def read_image(device: Path, out: BinaryIO, *, meter: Meter, level: int = 6) -> dict[str, object]:
    """Writes the gzip-compressed card (sector 0 to the end of the last partition) to `out`."""
    if not 1 <= level <= 9:
        raise DiskError("the compression level is between 1 and 9")
    table = read_table(device)
    if table is None or not table.partitions:
        raise DiskError("the card has no partition table: nothing to read")
    root = table.get(2)
    end = max(p.end for p in table.partitions) * SECTOR
    card_size = device_size(device)
    if end > card_size:
        raise DiskError(f"the partition table ends at byte {end}, past the end of the card ({card_size})")
    blanks, keys_left_out = host_key_ranges(device, root)
    sink = _Counter(out)
    sha = hashlib.sha256()
    member: zlib._Compress | None = None  # the open gzip member of non-zero data
    done = 0
    meter.start("read", end)
    with cardio.open_card(device) as card:
        card.flush()  # read the card, not what the page cache remembers of it
        while done < end:
            want = min(CHUNK, end - done)
            data = card.pread(want, done)
            if len(data) < want:
                raise DiskError(f"the card could not be read past byte {done + len(data)}")
            data = _blank(data, done, blanks)
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
            meter.advance(done)
    if member is not None:
        sink.write(member.flush())
    out.flush()
    meter.finish()
    return {
        "size": end,
        "sha256": sha.hexdigest(),
        "sector_start": root.start,
        "compressed": sink.count,
        "format": "gz",
        "host_keys_left_out": keys_left_out,
    }
