"""The SD card as a block device or a plain file: size, MBR partition table."""

from __future__ import annotations

import ctypes
import functools
import os
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
ENTRY_OFFSET = 446
ENTRY_SIZE = 16
DISK_ID_OFFSET = 440


class DiskError(Exception):
    """A readable reason why the card cannot be handled."""


@dataclass(frozen=True)
class Partition:
    number: int  # 1..4
    type_id: int
    start: int  # sectors
    sectors: int
    bootable: bool = False

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def end(self) -> int:
        """First sector after the partition."""
        return self.start + self.sectors


@dataclass(frozen=True)
class PartitionTable:
    disk_id: int
    partitions: list[Partition]

    def get(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        raise DiskError(f"the card has no partition {number}")

    @property
    def partuuid_prefix(self) -> str:
        return f"{self.disk_id:08x}"


def device_size(device: Path) -> int:
    """Size in bytes of a block device or a regular file."""
    try:
        fd = os.open(device, os.O_RDONLY)
    except OSError as exc:
        raise DiskError(f"cannot open {device}: {exc.strerror}") from exc
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def is_block_device(device: Path) -> bool:
    try:
        return stat.S_ISBLK(device.stat().st_mode)
    except OSError:
        return False


def read_table(device: Path) -> PartitionTable | None:
    """The MBR's primary partitions, or None when the card has no partition table."""
    try:
        with open(device, "rb") as f:
            mbr = f.read(SECTOR)
    except OSError as exc:
        raise DiskError(f"cannot read {device}: {exc.strerror}") from exc
    if len(mbr) < SECTOR or mbr[510:512] != MBR_SIGNATURE:
        return None
    (disk_id,) = struct.unpack_from("<I", mbr, DISK_ID_OFFSET)
    parts = []
    for i in range(4):
        entry = mbr[ENTRY_OFFSET + i * ENTRY_SIZE : ENTRY_OFFSET + (i + 1) * ENTRY_SIZE]
        status, type_id = entry[0], entry[4]
        start, sectors = struct.unpack_from("<II", entry, 8)
        if type_id and sectors:
            parts.append(Partition(i + 1, type_id, start, sectors, status == 0x80))
    return PartitionTable(disk_id, parts)


def _chs(lba: int) -> bytes:
    """CHS address for an LBA, saturated as modern tools do (255 heads, 63 sectors)."""
    cyl, rem = divmod(lba, 255 * 63)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sect = divmod(rem, 63)
    sect += 1
    return bytes([head, ((cyl >> 2) & 0xC0) | sect, cyl & 0xFF])


def set_partition_sectors(device: Path, number: int, sectors: int) -> Partition:
    """Rewrite the size of one MBR entry in place (the start does not move)."""
    table = read_table(device)
    if table is None:
        raise DiskError("the card has no partition table")
    part = table.get(number)
    entry_at = ENTRY_OFFSET + (number - 1) * ENTRY_SIZE
    with open(device, "r+b") as f:
        f.seek(entry_at)
        entry = bytearray(f.read(ENTRY_SIZE))
        entry[5:8] = _chs(part.start + sectors - 1)
        struct.pack_into("<I", entry, 12, sectors)
        f.seek(entry_at)
        f.write(bytes(entry))
        f.flush()
        os.fsync(f.fileno())
    reread_partitions(device)
    return Partition(number, part.type_id, part.start, sectors, part.bootable)


def reread_partitions(device: Path) -> None:
    """Ask the kernel to reload the table of a real card (a file needs nothing)."""
    if is_block_device(device):
        subprocess.run(["blockdev", "--rereadpt", str(device)], check=False, capture_output=True)


@functools.cache
def _fallocate() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return fn


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a region of a regular file (reads back as zeros); False when unsupported."""
    fallocate = _fallocate()
    if fallocate is None or length <= 0:
        return False
    # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    return bool(fallocate(fd, 0x03, offset, length) == 0)
