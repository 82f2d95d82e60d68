"""Signed webhooks: a JSON body POSTed to the user's URL with
`X-PiSeduce-Signature: sha256=<hex HMAC-SHA256 of the body with the user's key>`.

A user's URL is a request the web UI makes from inside the operator's network, so it must not
become a way to reach what only the web UI can (SSRF): only http(s); when the administrator
listed allowed hosts, only those (a `*.example.org` entry allows its subdomains); and every
address the name resolves to must be public — loopback, private, link-local... are refused unless
the host is named in the allow-list. Redirects are not followed (one could point inside).
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
    for entry in (a.lower().strip().rstrip(".") for a in allowed):
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


def _public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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
