"""What a board's netboot system says of itself is input from the board (whose user was root on
it a moment ago): every refusal of it is a port's clear reason, never "timeout" or "unexpected
error" (issue 16 testers). Through the agent's own registration code, on its database."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.raspberry_helpers import agent_config, sessions_for
from piseduce.agent.app import create_app
from piseduce.agent.drivers.raspberry.admin_detect import register
from piseduce.agent.drivers.raspberry.detect import DetectError, Found, PortDetection
from piseduce.agent.drivers.raspberry.netconfig import board_network
from piseduce.agent.models import Node, Switch
from piseduce.db import write_session

GOOD = {"ip": "48.48.0.10", "ssh_port": 22, "serial": "1a2b3c4d", "model": "RPI4B",
        "mac": "dc:a6:32:00:00:01", "card_size": 1 << 30, "host_key": "ssh-ed25519 AAAA"}


@pytest.mark.parametrize(("change", "words"), [
    ({"serial": "../../etc"}, "serial"),
    ({"serial": "x" * 200}, "serial"),
    ({"mac": "not-a-mac"}, "mac"),
    ({"mac": "dc:a6:32:00:00:01\ndhcp-option=3"}, "mac"),
    ({"model": "M" * 500}, "model"),
    ({"ip": "48.48.0.7"}, "address 48.48.0.7 is hand's already"),
])
def test_a_refused_board_description_is_the_ports_reason(
    tmp_path: Path, change: dict[str, object], words: str
) -> None:
    config = agent_config(tmp_path, board_address="48.48.0.254/24")
    with write_session(sessions_for(config)) as s:
        s.add(Switch(name="sw1", ip="127.0.0.1", port_count=8))
        s.add(Node(name="hand", ip="48.48.0.7", attrs={}, properties={}))
    state = create_app(config).state.agent
    net = board_network(config, ["48.48.0.7"])
    p = PortDetection(1, "pi-1")
    with pytest.raises(DetectError) as err:
        register(state, "sw1", net, p, Found(**{**GOOD, **change}))  # type: ignore[arg-type]
    reason = str(err.value)
    assert words in reason, reason
    assert "timeout" not in reason and "unexpected" not in reason and "\n" not in reason, reason
