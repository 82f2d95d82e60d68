"""`piseduce agent network-config` as an operator runs it, the file checked by the real dnsmasq;
hostile node rows and bad config values; the admin route the web UI shows."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import ADMIN, piseduce_cmd, subprocess_env
from helpers.raspberry_helpers import USER, agent_config, sessions_for
from helpers.switch_fixtures import Ports, api, switch  # noqa: F401
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.agent.models import Node
from piseduce.db import write_session

DNSMASQ = shutil.which("dnsmasq") or next(
    (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if Path(p).is_file()), None
)
needs_dnsmasq = pytest.mark.skipif(
    DNSMASQ is None, reason="dnsmasq is not installed (./run setup installs it)"
)

# Every line the generator may write: an option of this list, a comment or an empty line.
OPTIONS = {"interface", "listen-address", "bind-interfaces", "no-hosts", "log-dhcp", "dhcp-range",
           "dhcp-option", "enable-tftp", "tftp-root", "tftp-no-blocksize", "dhcp-boot", "pxe-service",
           "dhcp-host"}

BOARDS = [("pi-2", "48.48.0.2", "dc:a6:32:00:00:02"), ("pi-1", "48.48.0.1", "dc:a6:32:00:00:01"),
          ("pi-3", "48.48.0.3", "")]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        piseduce_cmd(*args), capture_output=True, text=True, env=subprocess_env(), timeout=120
    )


def add_nodes(config: Any, rows: list[tuple[str, str, Any]]) -> None:
    with write_session(sessions_for(config)) as s:
        for i, (name, ip, mac) in enumerate(rows):
            attrs = {"switch": "sw1", "port": i + 1, "serial": f"{i + 1:08x}"}
            if mac:
                attrs["mac"] = mac
            s.add(Node(name=name, ip=ip, properties={"model": "RPI4B"}, attrs=attrs))


def option_names(text: str) -> list[str]:
    return [line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]


def dnsmasq_test(path: Path) -> subprocess.CompletedProcess[str]:
    assert DNSMASQ is not None
    return subprocess.run(
        [DNSMASQ, "--test", f"--conf-file={path}"], capture_output=True, text=True, timeout=60
    )


@needs_dnsmasq
def test_the_file_lists_every_board_and_dnsmasq_accepts_it(tmp_path: Path) -> None:
    config = agent_config(tmp_path, board_address="48.48.0.254/24", name="rpi-lab")
    add_nodes(config, BOARDS)
    out, exports = tmp_path / "dnsmasq.conf", tmp_path / "exports"
    p = run("agent", "network-config", str(config.path), "--output", str(out),
            "--exports", str(exports))
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    hosts = [line for line in text.splitlines() if line.startswith("dhcp-host=")]
    assert hosts == ["dhcp-host=dc:a6:32:00:00:01,48.48.0.1,pi-1",
                     "dhcp-host=dc:a6:32:00:00:02,48.48.0.2,pi-2"]
    assert "pi-3: no MAC registered" in text and "pi-3: no MAC registered" in p.stderr
    assert "interface=eth0" in text.splitlines()
    assert "listen-address=48.48.0.254" in text.splitlines()
    assert "dhcp-range=48.48.0.0,static,255.255.255.0" in text.splitlines()
    assert f"tftp-root={config.tftp_dir}" in text.splitlines()
    assert 'pxe-service=0,"Raspberry Pi Boot"' in text.splitlines()
    # read-only: users are root on their boards, on this network (issue 16 testers); no_root_squash
    # stays, or the netboot system's root could not read its own 0600 host key and authorized_keys
    export = f"{config.resolve('nfs')} 48.48.0.0/24(ro,sync,no_subtree_check,no_root_squash)\n"
    assert exports.read_text() == export
    assert f"# {export}" in text
    checked = dnsmasq_test(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The same rows, the same bytes (stdout this time).
    again = run("agent", "network-config", str(config.path))
    assert again.returncode == 0 and again.stdout == text


@needs_dnsmasq
def test_range_and_router_and_the_default_network(tmp_path: Path) -> None:
    config = agent_config(tmp_path, dhcp_range="48.48.0.100-48.48.0.199", dhcp_router="48.48.0.254",
                          board_interface="enp1s0")
    add_nodes(config, BOARDS[:2])
    out = tmp_path / "dnsmasq.conf"
    p = run("agent", "network-config", str(config.path), "--output", str(out))
    assert p.returncode == 0, p.stderr
    lines = out.read_text().splitlines()
    # No board_address: the /24 of the nodes, the pimaster at its .254.
    assert "listen-address=48.48.0.254" in lines
    assert "dhcp-range=48.48.0.100,48.48.0.199,255.255.255.0,12h" in lines
    assert "dhcp-option=option:router,48.48.0.254" in lines
    assert "interface=enp1s0" in lines
    checked = dnsmasq_test(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr


HOSTILE = [
    ("pi-1", "48.48.0.1", "dc:a6:32:00:00:01"),
    ("evil\ndhcp-option=3,6.6.6.6", "48.48.0.5", "dc:a6:32:00:00:05"),
    ("a,b", "48.48.0.6", "dc:a6:32:00:00:06"),
    ("pi-7", "48.48.0.7", "dc:a6:32:00:00:07\nenable-ra"),
    ("pi-8", "48.48.0.8", "dc:a6:32:00:00:08,set:evil"),
    ("pi-9", "48.48.0.9\ndhcp-option=6,6.6.6.6", "dc:a6:32:00:00:09"),
    ("pi-10", "10.9.9.9", "dc:a6:32:00:00:0a"),
    ("pi-11", "48.48.0.1", "dc:a6:32:00:00:0b"),  # pi-1's address
    ("pi-12", "48.48.0.12", ["dc:a6:32:00:00:0c"]),
    ("pi-13", "48.48.0.13", "DC:A6:32:00:00:0D"),  # written by an older version: kept, in lower case
]


@needs_dnsmasq
def test_hostile_node_rows_inject_nothing(tmp_path: Path) -> None:
    config = agent_config(tmp_path, board_address="48.48.0.254/24")
    add_nodes(config, HOSTILE)
    out = tmp_path / "dnsmasq.conf"
    p = run("agent", "network-config", str(config.path), "--output", str(out))
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert set(option_names(text)) <= OPTIONS
    assert "6.6.6.6" not in text and "enable-ra" not in text and "set:" not in text and "evil" not in text
    hosts = [line for line in text.splitlines() if line.startswith("dhcp-host=")]
    # A name dnsmasq would refuse as a host name keeps its lease, without the name.
    assert hosts == ["dhcp-host=dc:a6:32:00:00:06,48.48.0.6", "dhcp-host=dc:a6:32:00:00:05,48.48.0.5",
                     "dhcp-host=dc:a6:32:00:00:01,48.48.0.1,pi-1",
                     "dhcp-host=dc:a6:32:00:00:0d,48.48.0.13,pi-13"]
    assert len(re.findall(r"^#   ", text, re.M)) == 6  # pi-7 to pi-12, each named with its reason
    checked = dnsmasq_test(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"board_address": "48.48.0.0/33"}, "board_address"),
        ({"board_address": "48.48.0.254"}, "board_address"),  # /32: no room for boards
        ({"board_address": "48.48.0.254/31"}, "board_address"),
        # wider than /16: the netboot root exported to the world (issue 16 testers)
        ({"board_address": "48.48.0.254/0"}, "board_address"),
        ({"board_address": "48.48.0.254/8"}, "board_address"),
        ({"board_address": "48.48.0.254/15"}, "board_address"),
        ({"board_address": "not-an-address"}, "board_address"),
        ({"board_address": "48.48.0.254/24", "dhcp_range": "48.48.0.100"}, "dhcp_range"),
        ({"board_address": "48.48.0.254/24", "dhcp_range": "48.48.0.200-48.48.0.100"}, "dhcp_range"),
        ({"board_address": "48.48.0.254/24", "dhcp_range": "48.48.0.100-48.48.1.10"}, "dhcp_range"),
        ({"board_address": "48.48.0.254/24", "dhcp_range": "48.48.0.200-48.48.0.254"}, "dhcp_range"),
        ({"board_address": "48.48.0.254/24", "dhcp_router": "10.0.0.1"}, "dhcp_router"),
        ({"board_address": "48.48.0.254/24", "board_interface": "eth0\nport=53"}, "board_interface"),
        ({"board_address": "48.48.0.254/24", "tftp_root": "/srv/tftp,eth1"}, "tftp_root"),
        ({"board_address": "48.48.0.254/24", "nfs_root": "/srv/nfs raspi"}, "nfs_root"),
        ({"board_address": ""}, "board_address"),  # and no node has an address to derive it from
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(
    tmp_path: Path, settings: dict[str, str], key: str
) -> None:
    config = agent_config(tmp_path, **settings)
    if settings.get("board_address") != "":
        add_nodes(config, BOARDS[:1])
    out, exports = tmp_path / "dnsmasq.conf", tmp_path / "exports"
    exports.write_text("kept\n")
    p = run("agent", "network-config", str(config.path), "--output", str(out),
            "--exports", str(exports))
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"key {key!r}" in lines[0], p.stderr
    assert not out.exists() and exports.read_text() == "kept\n"
    assert p.stdout == ""


def test_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    config = agent_config(tmp_path, board_address="48.48.0.254/24")
    out = tmp_path / "no" / "dnsmasq.conf"
    p = run("agent", "network-config", str(config.path), "--output", str(out))
    assert p.returncode == 2
    assert [line for line in p.stderr.splitlines() if line.strip()] == [
        f"error: --output {out}: cannot write it: the folder {out.parent} does not exist"
    ]


async def test_admin_route_shows_what_the_nodes_registered(
    api: tuple[httpx.AsyncClient, Ports, SwitchInfo, Path],  # noqa: F811
) -> None:
    client, _, sw, env_dir = api
    tftp = env_dir.parent / "tftpboot"
    body = {"name": "sw1", "ip": "127.0.0.1", "snmp_port": sw.snmp_port, "community": "s3cret",
            "port_count": 5, "master_port": 5}
    assert (await client.post("/api/admin/switches", json=body, headers=ADMIN)).status_code == 201
    r = await client.get("/api/admin/network-config", headers=ADMIN)
    assert r.status_code == 409 and "board_address" in r.json()["detail"]  # no node: no network yet
    node = {"name": "pi-1", "ip": "48.48.0.1", "switch": "sw1", "port": 1, "model": "RPI4B",
            "serial": "9ffefdef", "mac": "DC-A6-32-01-36-C2"}
    assert (await client.post("/api/admin/nodes", json=node, headers=ADMIN)).status_code == 201
    r = await client.get("/api/admin/network-config", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert "dhcp-host=dc:a6:32:01:36:c2,48.48.0.1,pi-1" in r.json()["dnsmasq"].splitlines()
    assert r.json()["exports"].startswith(f"{tftp.parent / 'nfs'} 48.48.0.0/24(")
    r = await client.patch("/api/admin/nodes/pi-1", json={"mac": "dc:a6:32:01:36:c3"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = await client.get("/api/admin/network-config", headers=ADMIN)
    assert "dhcp-host=dc:a6:32:01:36:c3,48.48.0.1,pi-1" in r.json()["dnsmasq"].splitlines()
    assert (await client.get("/api/admin/network-config", headers=USER)).status_code == 403


CLIENT = Path(__file__).parent / "helpers" / "dhcp_client.py"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _namespaces_usable() -> str:
    """Why a namespace pair cannot be made here ('' when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    probe = f"pisnc-probe-{os.getpid()}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return ""


@needs_dnsmasq
@pytest.mark.slow
def test_a_board_gets_its_static_lease_from_dnsmasq(tmp_path: Path) -> None:
    why = _namespaces_usable()
    if why:
        pytest.skip(why)
    assert DNSMASQ is not None
    tag = f"{os.getpid() % 100000}"
    server_ns, client_ns = f"pisnc-s{tag}", f"pisnc-c{tag}"
    server_if, client_if = f"ncs{tag}", f"ncc{tag}"
    config = agent_config(tmp_path, board_address="10.77.0.254/24", board_interface=server_if)
    add_nodes(config, [("pi-1", "10.77.0.11", "dc:a6:32:00:00:11"),
                       ("pi-2", "10.77.0.12", "dc:a6:32:00:00:12")])
    conf = tmp_path / "dnsmasq.conf"
    p = run("agent", "network-config", str(config.path), "--output", str(conf))
    assert p.returncode == 0, p.stderr
    dnsmasq: subprocess.Popen[str] | None = None
    try:
        for ns in (server_ns, client_ns):
            assert _ip("netns", "add", ns).returncode == 0
        steps = [
            ("link", "add", server_if, "netns", server_ns, "type", "veth", "peer", "name", client_if,
             "netns", client_ns),
            ("-n", server_ns, "addr", "add", "10.77.0.254/24", "dev", server_if),
            ("-n", server_ns, "link", "set", server_if, "up"),
            ("-n", server_ns, "link", "set", "lo", "up"),
            ("-n", client_ns, "link", "set", client_if, "up"),
            ("-n", client_ns, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        log = (tmp_path / "dnsmasq.log").open("w")
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", server_ns, DNSMASQ, "--no-daemon", f"--conf-file={conf}", "--port=0",
             f"--dhcp-leasefile={tmp_path / 'leases'}", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
             "--user=root", "--log-facility=-"],
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        client = subprocess.run(
            ["ip", "netns", "exec", client_ns, sys.executable, str(CLIENT), client_if,
             "dc:a6:32:00:00:12", "60"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr + (tmp_path / "dnsmasq.log").read_text()
        got = json.loads(client.stdout)
        assert got == {"offered": "10.77.0.12", "acked": "10.77.0.12", "server": "10.77.0.254"}
        assert "dc:a6:32:00:00:12" in (tmp_path / "leases").read_text()
        # A board nobody registered gets nothing (static leases only): no answer at all.
        stranger = subprocess.run(
            ["ip", "netns", "exec", client_ns, sys.executable, str(CLIENT), client_if,
             "dc:a6:32:00:00:99", "5"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert stranger.returncode != 0 and "no DHCP answer" in stranger.stderr
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            try:
                dnsmasq.wait(timeout=15)
            except subprocess.TimeoutExpired:
                dnsmasq.kill()
                dnsmasq.wait()
        for ns in (server_ns, client_ns):
            _ip("netns", "del", ns)  # takes its end of the veth pair with it
