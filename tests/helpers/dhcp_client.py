"""A small DHCP client (RFC 2131) for tests: DISCOVER, OFFER, REQUEST, ACK over a raw UDP
broadcast on one interface (SO_BINDTODEVICE), with the hardware address given.

Run as `python dhcp_client.py IFACE MAC [TIMEOUT]` (inside the client's network namespace); prints
one JSON line: the offered and acknowledged addresses and the server's identifier. The DISCOVER is
sent again every 2 s, as a real client does, until the deadline: the server may still be starting.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6


def packet(xid: int, mac: bytes, kind: int, extra: bytes = b"") -> bytes:
    # op, htype, hlen, hops, xid, secs, flags (broadcast: we have no address yet), ciaddr..giaddr
    zero = b"\0" * 4
    head = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0x8000, zero, zero, zero, zero)
    chaddr = mac + b"\0" * 10
    options = MAGIC + bytes([53, 1, kind]) + extra + b"\xff"
    return head + chaddr + b"\0" * 192 + options


def parse(data: bytes) -> tuple[int, str, dict[int, bytes]]:
    """(xid, yiaddr, options) of a server's answer."""
    xid = struct.unpack("!I", data[4:8])[0]
    yiaddr = socket.inet_ntoa(data[16:20])
    opts: dict[int, bytes] = {}
    i = 240
    if data[236:240] != MAGIC:
        return xid, yiaddr, opts
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        length = data[i + 1]
        opts[code] = data[i + 2:i + 2 + length]
        i += 2 + length
    return xid, yiaddr, opts


def exchange(iface: str, mac_text: str, timeout: float) -> dict[str, str]:
    mac = bytes.fromhex(mac_text.replace(":", ""))
    xid = int.from_bytes(os.urandom(4), "big")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind(("", 68))
    deadline = time.monotonic() + timeout

    def answer(kind: int, extra: bytes, wanted: tuple[int, ...]) -> tuple[str, dict[int, bytes]]:
        while time.monotonic() < deadline:
            s.sendto(packet(xid, mac, kind, extra), ("255.255.255.255", 67))
            s.settimeout(2.0)
            try:
                while True:
                    data = s.recv(4096)
                    got_xid, yiaddr, opts = parse(data)
                    if got_xid == xid and opts.get(53, b"\0")[0] in wanted:
                        return yiaddr, opts
            except TimeoutError:
                continue
        raise TimeoutError(f"no DHCP answer to message type {kind} within {timeout} s")

    offered, opts = answer(DISCOVER, b"", (OFFER,))
    server = opts.get(54, b"\0\0\0\0")
    request = bytes([50, 4]) + socket.inet_aton(offered) + bytes([54, 4]) + server
    acked, ack = answer(REQUEST, request, (ACK, NAK))
    return {
        "offered": offered,
        "acked": acked if ack[53][0] == ACK else "",
        "server": socket.inet_ntoa(server),
    }


if __name__ == "__main__":
    print(json.dumps(exchange(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 60)))
