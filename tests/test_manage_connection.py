"""What Manage shows of a deployed node's connection: the known_hosts line as OpenSSH reads it, and
whether a password is set (never the password in the connection line)."""

from __future__ import annotations

from typing import Any

import pytest

from piseduce.protocol import ReservationOut
from piseduce.webui.agents import AgentRef
from piseduce.webui.routes.manage import Item

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbL0tq5Hh0JjG1c9eYyO3m5Cw0bq8f4yDqV9ZkNqLk1"


def item(connection: Any) -> Item:
    agent = AgentRef(1, "rpi", "127.0.0.1", 8000, "http://127.0.0.1:8000", "t" * 12, "raspberry", "",
                     "up", "", False)
    r = ReservationOut.model_validate({
        "id": 3, "node": "pi-1", "owner": "alice@example.org", "bin": "", "status": "deployed",
        "start": "2026-01-01T10:00:00Z", "end": "2026-01-01T12:00:00Z", "connection": connection})
    return Item(agent, r)


@pytest.mark.parametrize(("host", "port", "name"), [
    ("10.200.154.10", 22, "10.200.154.10"),
    ("127.0.0.1", 2201, "[127.0.0.1]:2201"),
    ("pi.example.org", None, "pi.example.org"),
])
def test_known_hosts_line_names_the_host_as_openssh_does(host: str, port: int | None, name: str) -> None:
    conn = {"host": host, "port": port, "host_key": f"{KEY} root@pi-1", "password_set": True,
            "host_key_fingerprint": "SHA256:abc"}
    it = item(conn)
    assert it.known_hosts == f"{name} {KEY}"  # the key's comment is not part of the line
    assert it.connection["host_key_fingerprint"] == "SHA256:abc"
    assert it.connection["password"] == "set" and "host_key" not in it.connection


@pytest.mark.parametrize(
    "conn",
    [{}, {"host": "h"}, {"host_key": KEY}, {"host": 3, "host_key": KEY}, {"host": "h", "host_key": " "}],
)
def test_no_known_hosts_line_without_a_host_and_a_key(conn: Any) -> None:
    assert item(conn).known_hosts == ""


def gateway_item(gateway: Any, status: str = "deployed") -> Item:
    from piseduce.protocol import AgentInfo

    info = AgentInfo.model_validate({"name": "rpi", "node_type": "raspberry", "site": "", "version": "1",
                                     "features": [], "gateway": gateway})
    base = item({"host": "10.0.0.13", "port": 22, "user": "pi", "host_key": KEY})
    agent = AgentRef(**{**base.agent.__dict__, "info": info})
    return Item(agent, base.r.model_copy(update={"status": status}))


def test_manage_shows_the_way_in_through_the_agents_gateway() -> None:
    it = gateway_item({"host": "gw.lab.example", "port": 2222, "user": "jump", "host_key": KEY})
    assert it.jump is not None
    assert it.jump.command == "ssh -J jump@gw.lab.example:2222 pi@10.0.0.13"
    assert "Host pi-1\n  HostName 10.0.0.13\n" in it.jump.ssh_config
    assert it.jump.known_hosts == f"[gw.lab.example]:2222 {KEY}\n10.0.0.13 {KEY}\n"


def test_no_gateway_no_way_in_shown() -> None:
    assert gateway_item(None).jump is None
    gw = {"host": "gw.lab.example", "port": 2222, "user": "jump", "host_key": KEY}
    assert gateway_item(gw, status="deploying").jump is None  # not up yet


def test_a_hostile_gateway_is_left_out_and_the_agent_kept() -> None:
    from piseduce.protocol import AgentInfo

    for gw in ({"host": "gw\n  ProxyCommand id", "port": 2222, "user": "jump", "host_key": KEY},
               {"host": "-oProxyCommand=id", "port": 2222, "user": "jump", "host_key": KEY},
               {"host": "gw", "port": 2222, "user": "jump", "host_key": KEY + "\nx"},
               {"host": "gw", "port": 0, "user": "jump", "host_key": KEY}):
        info = AgentInfo.model_validate({"name": "a", "node_type": "raspberry", "site": "", "version": "1",
                                         "gateway": gw})
        assert info.gateway is None and info.name == "a"
