"""The webhook guard and the IPv6 forms that carry an IPv4 address (issue 17, fix17b #2): NAT64
(64:ff9b::/96, and the local-use 64:ff9b:1::/48), 6to4 (2002::/16), Teredo (2001::/32), IPv4-
compatible ::a.b.c.d, site-local fec0::/10 and unique-local fc00::/7 reach loopback or private
hosts: they are refused at save time (the Settings form) and at delivery (webhook.post, on the
resolved addresses), unless an administrator allowed the host; public IPv4 addresses carried by
NAT64 or 6to4 stay allowed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.webui_fixtures import add_user, webui_client, write_webui_config
from piseduce.webui.notify import webhook

pytestmark = pytest.mark.usefixtures("fast_argon2")

HIDDEN = [
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a00:1]:8080/x",  # NAT64 of 10.0.0.1
    "http://[64:ff9b:1::7f00:1]/",  # local-use NAT64 (RFC 8215)
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:c0a8:101::1]/",  # 6to4 of 192.168.1.1
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo (client 127.0.0.1)
    "http://[2001::1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[::a00:1]/",  # IPv4-compatible 10.0.0.1
    "http://[fec0::1]/",  # site-local
    "http://[fc00::1]/",  # unique-local
    "http://[fd12:3456::1]/",
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped 169.254.169.254
]
PUBLIC = ["http://[64:ff9b::808:808]/", "http://[2002:808:808::1]/", "http://[2001:4860:4860::8888]/"]


@pytest.mark.parametrize("url", HIDDEN)
async def test_an_ipv6_form_of_a_private_address_is_refused(url: str) -> None:
    problem = await webhook.check_target(url, [])
    assert "private or loopback" in problem, problem
    # At delivery, before anything is sent.
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(webhook.WebhookError, match="private or loopback"):
            await webhook.post(client, url, b"k", {"event": "x"}, event="x", delivery="d", allowed=[])


@pytest.mark.parametrize("url", PUBLIC)
async def test_a_public_address_carried_by_nat64_or_6to4_is_allowed(url: str) -> None:
    assert await webhook.check_target(url, []) == ""


async def test_the_administrator_may_allow_such_a_host_with_or_without_brackets() -> None:
    for entry in ("64:ff9b::7f00:1", "[64:ff9b::7f00:1]"):
        assert await webhook.check_target("http://[64:ff9b::7f00:1]/", [entry]) == ""
    assert "not among the hosts" in await webhook.check_target("http://[2002:7f00:1::]/", ["[64:ff9b::1]"])


def test_the_settings_form_refuses_them(tmp_path: Path) -> None:
    config = write_webui_config(tmp_path / "webui")
    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    page = "/settings?tab=notifications"
    with webui_client(config) as b:
        b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        for url in ("http://[64:ff9b::7f00:1]/hook", "http://[2002:7f00:1::]/hook"):
            r = b.post("/settings/notifications", {"webhook_url": url, "warn_minutes": "30"}, page=page)
            assert r.status_code == 400 and "private or loopback" in r.text, url
        assert 'value="http://[' not in b.get(page).text  # nothing was saved
