"""The demo's raspberry agent describes the simulated board network it is on (board_interface,
board_address from the simulator's inventory): the Boot network file it generates matches it."""

from __future__ import annotations

from pathlib import Path

from piseduce.agent.drivers.raspberry.netconfig import board_network
from piseduce.config import load_agent_config
from piseduce.demo.configure import agent_config, board_network_keys

REAL = {"mode": "real", "network": "10.77.3.0/24", "uplink": {"host_if": "psim1a2b3c", "ip": "10.77.3.1"}}


def test_the_agent_config_names_the_simulators_uplink(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_bytes(b"k" * 32)
    path = agent_config(tmp_path, "rpi-lab", "raspberry", 18091, "t" * 32, **board_network_keys(REAL))
    net = board_network(load_agent_config(path, check_files=False))
    assert (net.interface, str(net.server), str(net.network)) == ("psim1a2b3c", "10.77.3.1", "10.77.3.0/24")


def test_without_a_board_network_the_defaults_stay() -> None:
    # Not root: the boards are SSH servers on loopback, there is no uplink to describe.
    assert board_network_keys({"mode": "loopback", "network": None, "uplink": None}) == {}
    assert board_network_keys({}) == {}
