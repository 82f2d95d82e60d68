"""Who is asking: the client's address as the login limiter counts it.

Behind a reverse proxy every request comes from the proxy's address, so the limiter would count
every user as one. `X-Forwarded-For` says who the proxy served, but anyone can send that header:
it is believed only when `proxy_headers` is on *and* the request comes from one of
`trusted_proxies`, and then it is read from the right (the address the last trusted proxy saw),
skipping the proxies listed, so a client cannot put a made-up address at its left end.

IPv6 clients are counted by their /64: one host usually owns a whole /64, and could otherwise
take a fresh address for every try.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.requests import HTTPConnection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> list[Network]:
    """The `trusted_proxies` entries (addresses or CIDR networks); ValueError names a bad one."""
    out: list[Network] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (such as 10.0.0.0/8)") from None
    return out


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ClientAddress:
    def __init__(self, proxy_headers: bool, trusted: Iterable[str]) -> None:
        self.proxy_headers = proxy_headers
        self.trusted = parse_networks(trusted)

    def _trusted(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return addr is not None and any(addr in net for net in self.trusted)

    def of(self, conn: HTTPConnection) -> str:
        """The client's address (an IPv6 client's /64), or "unknown"."""
        return _bucket(self._peer(conn))

    def address(self, conn: HTTPConnection) -> str:
        """The client's whole address (the audit trail's "from where"), or "unknown"."""
        peer = self._peer(conn)
        return "unknown" if peer is None else str(peer)

    def _peer(self, conn: HTTPConnection) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        peer = _address(conn.client.host) if conn.client else None
        if self.proxy_headers and self._trusted(peer):
            hops = [h for v in conn.headers.getlist("x-forwarded-for") for h in v.split(",")]
            for hop in reversed(hops):
                addr = _address(hop)
                if addr is None:
                    break  # garbage: stop believing the header here, count the last trusted hop
                peer = addr
                if not self._trusted(addr):
                    break
        return peer


def _bucket(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str:
    if addr is None:
        return "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)
