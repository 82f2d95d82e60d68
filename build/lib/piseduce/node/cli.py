"""`piseduce-node`: the helper the agent runs on a board booted on the NFS system.

Output is JSON lines on stdout: progress lines `{"progress": N, "message": ...}`, then one result
line `{"ok": true, ...}`; on error the last line is `{"ok": false, "error": ...}` with exit status 1.
`export-boot` writes a tar archive on stdout instead and reports errors on stderr; `read-image`
writes the gzip-compressed card on stdout and its progress and result lines on stderr.

Environment: PISEDUCE_NODE_DEVICE (the card, default /dev/mmcblk0), PISEDUCE_NODE_CPUINFO and
PISEDUCE_NODE_THERMAL (defaults /proc/cpuinfo and /sys/class/thermal/thermal_zone0/temp).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from piseduce.node import cardio, disk
from piseduce.node.board import board_info, ethernet_mac, memory_gb_from_revision, temperature_celsius
from piseduce.node.chain import chain_write
from piseduce.node.disk import DiskError
from piseduce.node.fs import Ext4, Fat
from piseduce.node.image import FORMATS, verify_card, write_image
from piseduce.node.meter import Meter
from piseduce.node.readimage import read_image
from piseduce.node.system import Settings, configure

DEVICE_ENV = "PISEDUCE_NODE_DEVICE"
DEFAULT_DEVICE = "/dev/mmcblk0"
GIB = 1024**3
PART_SIZES = {"2gb": 2 * GIB, "5gb": 5 * GIB, "10gb": 10 * GIB}
WIPE_LENGTH = 1 << 20
WIPE_STEP = 16 << 20


def emit(obj: dict[str, Any], stream: Any = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(obj) + "\n")
    out.flush()


def progress(pct: int, message: str) -> None:
    emit({"progress": pct, "message": message})


def meter(stream: Any = None) -> Meter:
    """Progress lines (bytes done of a total) on stdout, or on `stream` (stderr when stdout carries data)."""
    return Meter(lambda line: emit(line, stream))


def _partitions(device: Path) -> disk.PartitionTable:
    table = disk.read_table(device)
    if table is None:
        raise DiskError("the card has no partition table (write an image first)")
    return table


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = dict(board_info())
    info["mac"] = ethernet_mac()
    memory = memory_gb_from_revision(info.get("revision", ""))
    if memory is not None:  # the Reserve filters' memory_gb, as registered nodes have it
        info["memory_gb"] = int(memory) if memory.is_integer() else memory
    info["card_size"] = disk.device_size(args.device)
    table = disk.read_table(args.device)
    info["partitions"] = (
        [{"number": p.number, "type": f"{p.type_id:02x}", "start": p.start, "size": p.size}
         for p in table.partitions] if table else []
    )
    return info


def cmd_write_image(args: argparse.Namespace) -> dict[str, Any]:
    if len(args.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in args.sha256):
        raise DiskError("--sha256 must be 64 hexadecimal digits")
    return write_image(
        sys.stdin.buffer,
        args.device,
        expected_sha256=args.sha256,
        fmt=args.format,
        size_hint=args.size,
        image_size=args.image_size,
        device_size=disk.device_size(args.device),
        meter=meter(),
        verify=args.verify,
        sparse=args.sparse,
    )


def cmd_chain_write(args: argparse.Namespace) -> dict[str, Any]:
    return chain_write(sys.stdin.buffer, args.device, device_size=disk.device_size(args.device), emit=emit)


def cmd_verify(args: argparse.Namespace) -> dict[str, Any]:
    if len(args.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in args.sha256):
        raise DiskError("--sha256 must be 64 hexadecimal digits")
    return verify_card(args.device, args.size, args.sha256, meter=meter())


def cmd_partition(args: argparse.Namespace) -> dict[str, Any]:
    table = _partitions(args.device)
    root = table.get(2)
    card_sectors = disk.device_size(args.device) // disk.SECTOR
    # a partition must not overlap a later one (a third partition, if any, bounds the growth)
    limit = min([p.start for p in table.partitions if p.start > root.start] + [card_sectors])
    if args.size == "whole":
        sectors = limit - root.start
    else:
        sectors = PART_SIZES[args.size] // disk.SECTOR
        if root.start + sectors > limit:
            raise DiskError(f"the card is too small for a {args.size} root partition")
    fs = Ext4(args.device, root.offset)
    fs.check()
    progress(10, "checking the filesystem")
    current = fs.block_count() * fs.block_size()
    if sectors * disk.SECTOR < current:
        # shrink the filesystem before the partition so no data ends up outside it
        progress(30, "shrinking the filesystem")
        size = fs.resize(sectors * disk.SECTOR)
        disk.set_partition_sectors(args.device, 2, sectors)
    else:
        disk.set_partition_sectors(args.device, 2, sectors)
        progress(30, "growing the filesystem")
        size = fs.resize(sectors * disk.SECTOR)
    progress(100, "resized")
    return {"root_size": size, "partition_size": sectors * disk.SECTOR}


def cmd_configure(args: argparse.Namespace) -> dict[str, Any]:
    try:
        raw = json.loads(sys.stdin.buffer.read(1 << 20) or b"null")
    except json.JSONDecodeError as exc:
        raise DiskError(f"configure expects JSON on stdin: {exc.msg}") from exc
    settings = Settings.parse(raw)
    table = _partitions(args.device)
    root = Ext4(args.device, table.get(2).offset)
    root.check()
    return configure(root, Fat(args.device, table.get(1).offset), settings)


def cmd_export_boot(args: argparse.Namespace) -> dict[str, Any]:
    table = _partitions(args.device)
    boot = Fat(args.device, table.get(1).offset)
    with tempfile.TemporaryDirectory(prefix="piseduce-boot-") as tmp:
        boot.export(Path(tmp))
        with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(Path(tmp).rglob("*")):
                tar.add(path, arcname=str(path.relative_to(tmp)), recursive=False)
    sys.stdout.buffer.flush()
    return {}


def cmd_read_image(args: argparse.Namespace) -> dict[str, Any]:
    # stdout carries the image: progress goes to stderr
    return read_image(args.device, sys.stdout.buffer, meter=meter(sys.stderr), level=args.level)


def cmd_wipe(args: argparse.Namespace) -> dict[str, Any]:
    size = disk.device_size(args.device)
    table = disk.read_table(args.device)
    regions = [(0, min(WIPE_LENGTH, size))]
    if table:
        regions += [(p.offset, min(WIPE_LENGTH, size - p.offset))
                    for p in table.partitions if p.offset < size]
    if args.full:
        regions = [(0, size)]
    total = sum(length for _, length in regions)
    progress_of = meter()
    progress_of.start("wipe", total)
    done = 0
    with cardio.open_card(args.device, write=True) as card:
        # A card that zeroes itself cheaply is zeroed whole: the next deployment may then skip
        # the image's zero blocks (chain-write's sparse mode).
        zeroed = card.erase()
        if zeroed:
            regions = []
            done = total
            progress_of.advance(done)
        for offset, length in regions:
            # in steps, so that a full wipe reports its progress as it goes
            for at in range(offset, offset + length, WIPE_STEP):
                n = min(WIPE_STEP, offset + length - at)
                card.zero(at, n)
                done += n
                progress_of.advance(done)
        card.flush()
    progress_of.finish()
    disk.reread_partitions(args.device)
    return {"zeroed": size if zeroed else total, "card_zeroed": zeroed or args.full}


def cmd_temperature(args: argparse.Namespace) -> dict[str, Any]:
    return {"celsius": temperature_celsius()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="piseduce-node", description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=Path, default=Path(os.environ.get(DEVICE_ENV, DEFAULT_DEVICE)),
                        help=f"the SD card (default ${DEVICE_ENV} or {DEFAULT_DEVICE})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="model, serial, MAC and card size").set_defaults(func=cmd_info)
    p = sub.add_parser("write-image", help="write the image read on stdin, then verify it")
    p.add_argument("--sha256", required=True, help="sha256 of the bytes sent on stdin")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--size", type=int, default=None, help="bytes sent on stdin, for progress")
    p.add_argument("--image-size", type=int, default=None,
                   help="bytes of the decompressed image, for progress (when known)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not read the card back (the agent runs `verify` as a step of its own)")
    p.add_argument("--sparse", action="store_true",
                   help="the card reads as zeros (wiped whole): skip the image's all-zero blocks")
    p.set_defaults(func=cmd_write_image)
    p = sub.add_parser("chain-write", help="write a raw image pulled from another board or the agent, and "
                       "serve it to the next boards (instructions and token as JSON lines on stdin)")
    p.set_defaults(func=cmd_chain_write)
    p = sub.add_parser("verify", help="read the card back and compare its sha256")
    p.add_argument("--size", type=int, required=True, help="bytes to read from the start of the card")
    p.add_argument("--sha256", required=True, help="sha256 of those bytes (write-image's image_sha256)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("partition", help="resize the root partition and its filesystem")
    p.add_argument("--size", choices=["whole", *PART_SIZES], required=True)
    p.set_defaults(func=cmd_partition)
    sub.add_parser("configure", help="hostname, SSH keys, password (JSON on stdin)").set_defaults(
        func=cmd_configure)
    sub.add_parser("export-boot", help="tar archive of the boot partition on stdout").set_defaults(
        func=cmd_export_boot)
    p = sub.add_parser("read-image", help="the card up to its last partition, gzip-compressed, on stdout")
    p.add_argument("--compress", choices=["gz"], default="gz")
    p.add_argument("--level", type=int, choices=range(1, 10), default=6, metavar="1-9",
                   help="gzip compression level")
    p.set_defaults(func=cmd_read_image)
    p = sub.add_parser("wipe", help="erase the partition table and filesystem headers")
    p.add_argument("--full", action="store_true", help="zero the whole card")
    p.set_defaults(func=cmd_wipe)
    sub.add_parser("temperature", help="SoC temperature").set_defaults(func=cmd_temperature)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], dict[str, Any]] = args.func
    binary_out = args.command in ("export-boot", "read-image")
    try:
        result = func(args)
    except (DiskError, OSError) as exc:
        reason = str(exc) if isinstance(exc, DiskError) else f"{exc.strerror or exc}"
        emit({"ok": False, "error": reason}, sys.stderr if binary_out else None)
        return 1
    except KeyboardInterrupt:
        emit({"ok": False, "error": "interrupted"}, sys.stderr if binary_out else None)
        return 130
    if not binary_out:
        emit({"ok": True, **result})
    elif args.command == "read-image":
        emit({"ok": True, **result}, sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
