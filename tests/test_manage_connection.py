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
