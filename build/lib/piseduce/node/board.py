"""What the board says about itself: /proc/cpuinfo and the thermal zone.

On a real Pi the default paths are read; the simulator points PISEDUCE_NODE_CPUINFO and
PISEDUCE_NODE_THERMAL at files it writes, so the helper runs the same code in both places.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from pathlib import Path

from piseduce.node.disk import DiskError

CPUINFO_ENV = "PISEDUCE_NODE_CPUINFO"
THERMAL_ENV = "PISEDUCE_NODE_THERMAL"
DEFAULT_CPUINFO = "/proc/cpuinfo"
DEFAULT_THERMAL = "/sys/class/thermal/thermal_zone0/temp"

# new-style revision codes: bits 4-11 = board type, bits 20-22 = memory size
_TYPES = {0x04: "RPI2B", 0x08: "RPI3B", 0x0D: "RPI3B+", 0x0E: "RPI3A+", 0x11: "RPI4B", 0x13: "RPI400",
          0x17: "RPI5"}
_MEMORY_GB = {2: "1G", 3: "2G", 4: "4G", 5: "8G", 6: "16G"}


def model_from_revision(revision: str) -> str:
    try:
        code = int(revision, 16)
    except ValueError:
        return "unknown"
    if not code & (1 << 23):
        return "unknown"
    board = _TYPES.get((code >> 4) & 0xFF)
    if board is None:
        return "unknown"
    if board in ("RPI4B", "RPI5"):
        return board + _MEMORY_GB.get((code >> 20) & 0x7, "")
    return board


def memory_gb_from_revision(revision: str) -> float | None:
    """The board's memory in GiB from a new-style revision code (bits 20-22), None if unknown."""
    try:
        code = int(revision, 16)
    except ValueError:
        return None
    if not code & (1 << 23):
        return None
    return float(2 ** ((code >> 20) & 0x7) / 4)  # 0 = 256 MiB, 1 = 512 MiB, ... 5 = 8 GiB


def read_cpuinfo() -> dict[str, str]:
    path = Path(os.environ.get(CPUINFO_ENV, DEFAULT_CPUINFO))
    try:
        text = path.read_text()
    except OSError as exc:
        raise DiskError(f"cannot read {path}: {exc.strerror}") from exc
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def board_info() -> dict[str, str]:
    cpu = read_cpuinfo()
    revision = cpu.get("Revision", "")
    serial = cpu.get("Serial", "")
    return {
        "model": model_from_revision(revision),
        "model_name": cpu.get("Model", ""),
        # the firmware names the TFTP folder after the serial's last 8 hex digits
        "serial": serial[-8:].lower() if serial else "",
        "revision": revision,
    }


SIOCGIFHWADDR = 0x8927


def _hardware_address(name: str) -> str:
    """The interface's MAC by ioctl: right in any network namespace, where /sys may show the host's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        raw = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", name.encode()[:15]))
    return ":".join(f"{b:02x}" for b in raw[18:24])


def ethernet_mac() -> str:
    """The MAC of the board's wired interface (the first one that is not loopback), "" if none:
    what the boot network's DHCP server knows the board by."""
    for _, name in sorted(socket.if_nameindex()):
        if name == "lo":
            continue
        try:
            mac = _hardware_address(name)
        except OSError:
            continue
        if mac != "00:00:00:00:00:00":
            return mac
    return ""


def temperature_celsius() -> float:
    path = Path(os.environ.get(THERMAL_ENV, DEFAULT_THERMAL))
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError) as exc:
        raise DiskError(f"cannot read the temperature from {path}") from exc
