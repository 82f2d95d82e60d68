"""Signed webhooks: a JSON body POSTed to the user's URL with
`X-PiSeduce-Signature: sha256=<hex HMAC-SHA256 of the body with the user's key>`.

A user's URL is a request the web UI makes from inside the operator's network, so it must not
become a way to reach what only the web UI can (SSRF): only http(s); when the administrator
listed allowed hosts, only those (a `*.example.org` entry allows its subdomains); and every
address the name resolves to must be public — loopback, private, link-local... are refused unless
the host is named in the allow-list; so are the IPv6 forms that carry such an IPv4 address (NAT64,
6to4, IPv4-mapped) or lead to a local network (Teredo, IPv4-compatible, site- and unique-local).
The check runs when the URL is saved and again at each delivery, on the addresses the name
resolves to then. Redirects are not followed (one could point inside).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

SIGNATURE_HEADER = "X-PiSeduce-Signature"
MAX_URL = 2048


class WebhookError(Exception):
    """Not delivered; the text says why."""


def body_of(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    # An IPv6 address may be listed as in a URL, in brackets; urlsplit's hostname has none.
    for entry in (a.lower().strip().rstrip(".").removeprefix("[").removesuffix("]") for a in allowed):
        if not entry:
            continue
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry:
            return True
    return False


def check_url(url: str, allowed: Sequence[str]) -> str:
    """'' when the URL may be used (before resolving it), else what is wrong, in words."""
    if len(url) > MAX_URL:
        return f"the URL is longer than {MAX_URL} characters"
    # urlsplit drops tabs and line breaks silently: the URL would be checked without them but
    # saved (and shown, and sent) with them.
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "the URL must not hold whitespace or control characters (encode a space as %20)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the URL must start with https:// (or http://) and name a host"
    if parts.username or parts.password:
        return "the URL must not hold a user name or password (the signature authenticates the web UI)"
    if allowed and not host_allowed(parts.hostname, allowed):
        return f"{parts.hostname} is not among the hosts the administrator allows for webhooks"
    return ""


# IPv6 ranges whose addresses carry an IPv4 address a gateway or the host's own stack goes to:
# judged by that address (64:ff9b::7f00:1 is 127.0.0.1 behind a NAT64; 2002:7f00:1:: is 6to4's
# 127.0.0.1). The IPv4-mapped ::ffff:0:0/96 is Python's `ipv4_mapped`, 6to4 its `sixtofour`.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
# Refused whatever they carry (and whatever the running Python's `is_global` table says, which
# differs between versions): the local-use NAT64 prefix (RFC 8215; its IPv4 sits at a place
# each network chooses), Teredo (RFC 4380; a tunnel to an obfuscated IPv4 client), the
# deprecated IPv4-compatible ::a.b.c.d (RFC 4291), site-local (RFC 3879) and unique-local
# (RFC 4193) addresses.
_NEVER = tuple(
    ipaddress.IPv6Network(n) for n in ("64:ff9b:1::/48", "2001::/32", "::/96", "fec0::/10", "fc00::/7")
)


def _public(addr: str) -> bool:
    """Whether a webhook may go to `addr` without the administrator naming its host: a global
    unicast address, also once the IPv4 address an IPv6 form carries is taken out of it."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NEVER):
            return False
        carried = ip.ipv4_mapped or ip.sixtofour
        if ip in _NAT64:
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None:
            return _public(str(carried))
    return ip.is_global and not ip.is_multicast


async def check_target(url: str, allowed: Sequence[str]) -> str:
    """check_url, then the addresses the host resolves to ('' when fine)."""
    problem = check_url(url, allowed)
    if problem:
        return problem
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"{host} does not resolve"
    addrs = {str(info[4][0]) for info in infos}
    if not addrs:
        return f"{host} does not resolve"
    if host_allowed(host, allowed):
        return ""  # named by the administrator: a private address is what they allowed
    private = sorted(a for a in addrs if not _public(a))
    if private:
        return (
            f"{host} resolves to a private or loopback address ({private[0]}); an administrator "
            "must add it to the webhooks' allowed hosts"
        )
    return ""


async def post(
    client: httpx.AsyncClient,
    url: str,
    secret: bytes,
    payload: Mapping[str, Any],
    *,
    event: str,
    delivery: str,
    allowed: Sequence[str],
) -> None:
    problem = await check_target(url, allowed)
    if problem:
        raise WebhookError(problem)
    body = body_of(payload)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(secret, body),
        "X-PiSeduce-Event": event,
        "X-PiSeduce-Delivery": delivery,
        "User-Agent": "PiSeduce-webhooks",
    }
    try:
        reply = await client.post(url, content=body, headers=headers, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise WebhookError(f"cannot reach {urlsplit(url).hostname}: {type(exc).__name__}") from None
    if not 200 <= reply.status_code < 300:
        raise WebhookError(f"the receiver answered HTTP {reply.status_code}")
