"""The text Manage, the user API and pisctl print for the way in through the gateway: what it
says for a board, and that nothing an agent sends can add a line to a user's ssh config."""

from __future__ import annotations

import pytest

from piseduce import sshjump

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk4ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn"
GW = sshjump.Gateway("gw.lab.example", 2222, "jump", KEY)


def test_a_board_on_port_22() -> None:
    j = sshjump.jump(GW, sshjump.Board("pi-3", "10.0.0.13", 22, "pi", KEY + " root@pi-3"))
    assert j is not None
    assert j.command == "ssh -J jump@gw.lab.example:2222 pi@10.0.0.13"
    assert j.known_hosts == f"[gw.lab.example]:2222 {KEY}\n10.0.0.13 {KEY}\n"
    board = "Host pi-3\n  HostName 10.0.0.13\n  Port 22\n  User pi\n  ProxyJump piseduce-gw-gw.lab.example\n"
    assert board in j.ssh_config
    assert j.ssh_config.count("StrictHostKeyChecking yes") == 2
    assert j.ssh_config.count("UserKnownHostsFile ~/.ssh/piseduce_known_hosts") == 2


def test_a_gateway_on_port_22_and_a_board_elsewhere() -> None:
    gw = sshjump.Gateway("gw", 22, "jump", KEY)
    j = sshjump.jump(gw, sshjump.Board("pi-1", "127.0.0.1", 2201, "pi", ""))
    assert j is not None
    assert j.command == "ssh -J jump@gw -p 2201 pi@127.0.0.1"
    assert j.known_hosts == f"gw {KEY}\n"  # no board key pinned: none invented


@pytest.mark.parametrize(
    "board",
    [
        sshjump.Board("pi-1\n  ProxyCommand id", "10.0.0.1", 22, "pi", KEY),
        sshjump.Board("pi-1", "10.0.0.1 -oProxyCommand=id", 22, "pi", KEY),
        sshjump.Board("pi-1", "-oProxyCommand=id", 22, "pi", KEY),
        sshjump.Board("pi-1", "10.0.0.1", 22, "pi\nHost *", KEY),
        sshjump.Board("pi-1", "10.0.0.1", 22, "pi", KEY + "\n10.0.0.9 " + KEY),
        sshjump.Board("pi-1", "10.0.0.1", 0, "pi", KEY),
    ],
)
def test_hostile_connection_info_gives_no_block(board: sshjump.Board) -> None:
    assert sshjump.jump(GW, board) is None


def test_a_malformed_gateway_key_gives_no_block() -> None:
    gw = sshjump.Gateway("gw", 2222, "jump", "not a key")
    assert sshjump.jump(gw, sshjump.Board("pi-1", "10.0.0.1", 22, "pi", KEY)) is None
