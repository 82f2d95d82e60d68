"""One switch, one record: a PoE switch is its SNMP address (host and UDP port), whatever name a
record gives it. A second record of the same address would carry its own `master_port`, and the
uplink guard of the first (snmp.py) would not hold through it: powering "port 9 of sw1b" is
powering port 9 of sw1. So the admin routes refuse a second record of an address, on add and on
update, naming the record that has it.

An address is compared as the SNMP client reaches it: IP literals in canonical form, host names
in lower case without a trailing dot, and host names also by the addresses they resolve to (within
RESOLVE_SECONDS; a name that does not resolve is compared as a name).

Databases written by older versions may already hold duplicates. The agent starts anyway and
says which records share an address (`warn_duplicates`): refusing to start would take every
board of the site offline over one stale record, while the power routes already refuse the master
port of any record sharing the address (`uplinks_sharing`), so the duplicate cannot cut the uplink
while an administrator removes it.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import socket
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent.models import Switch

log = logging.getLogger(__name__)

RESOLVE_SECONDS = 2.0
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="switch-dns")


def host_key(host: str) -> str:
    """The host as one spelling: canonical IP, or lower-case name without the root dot."""
    text = host.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.rstrip(".").lower()


def _addresses(host: str) -> set[str]:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    out: set[str] = set()
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        mapped = getattr(addr, "ipv4_mapped", None)
        out.add(str(mapped or addr))
    return out


def reach(host: str) -> set[str]:
    """What `host` stands for: its key, and for a name the addresses it resolves to now."""
    key = host_key(host)
    try:
        ipaddress.ip_address(key)
        return {key}
    except ValueError:
        pass
    try:
        return {key} | _resolver.submit(_addresses, key).result(timeout=RESOLVE_SECONDS)
    except (OSError, UnicodeError, ValueError, concurrent.futures.TimeoutError):
        return {key}


def _others(s: Session, snmp_port: int, except_name: str | None) -> list[Switch]:
    rows = s.scalars(select(Switch).where(Switch.snmp_port == snmp_port).order_by(Switch.name))
    return [r for r in rows if r.name != except_name]


def same_address(
    sessions: sessionmaker[Session], ip: str, snmp_port: int, except_name: str | None
) -> str | None:
    """The name of another record of the switch at ip:snmp_port, host names resolved (blocking:
    call it from a worker thread, outside any write transaction)."""
    with sessions() as s:
        others = [(r.name, r.ip) for r in _others(s, snmp_port, except_name)]
    if not others:
        return None
    wanted = reach(ip)
    for name, other_ip in others:
        if wanted & reach(other_ip):
            return name
    return None


def same_key(s: Session, ip: str, snmp_port: int, except_name: str | None) -> str | None:
    """The same check by spelling only, inside the saving transaction (no DNS there), so that two
    records of one literal address cannot be saved at once."""
    key = host_key(ip)
    return next((r.name for r in _others(s, snmp_port, except_name) if host_key(r.ip) == key), None)


def refusal(existing: str, ip: str, snmp_port: int) -> str:
    return (f"switch {existing} is already the switch at {ip}, SNMP port {snmp_port}: one switch is one "
            f"record (a second one would bypass its master-port guard); edit {existing} instead")


def uplinks_sharing(s: Session, row: Switch) -> dict[int, str]:
    """Master ports of the other records of `row`'s address ({port: record}): left by an older
    version, they are still the same switch's uplinks."""
    key = host_key(row.ip)
    return {r.master_port: r.name for r in _others(s, row.snmp_port, row.name)
            if r.master_port and host_key(r.ip) == key}


def duplicates(rows: Iterable[Switch]) -> list[list[str]]:
    groups: dict[tuple[str, int], list[str]] = {}
    for r in rows:
        groups.setdefault((host_key(r.ip), r.snmp_port), []).append(r.name)
    return [sorted(names) for names in groups.values() if len(names) > 1]


def warn_duplicates(sessions: sessionmaker[Session]) -> list[list[str]]:
    """At start: records sharing an address, said in the log (see the module's docstring)."""
    with sessions() as s:
        found = duplicates(s.scalars(select(Switch)))
    for names in found:
        log.warning("switch records %s are one switch (same address and SNMP port): keep one and move its "
                    "nodes to it; meanwhile every master port among them is refused", ", ".join(names))
    return found
