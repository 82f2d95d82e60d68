"""The pimaster's boot network configuration, written from the agent's config and its nodes: the
dnsmasq file (DHCP with one static lease per registered board, TFTP of `<tftp_root>/<serial>/`)
and the NFS export of the netboot root (`piseduce agent network-config`, `GET
/api/admin/network-config`).

Nothing a node row holds reaches the file unchecked: a MAC, an address or a name that is not of
its strict form (no comma, no newline, nothing dnsmasq would parse as another option) leaves the
node out, counted in a comment. Bad config values raise `NetworkConfigError`, one line naming the
key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from piseduce.agent.models import Node

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from piseduce.config import AgentConfig

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# A DNS label: what dnsmasq takes as a dhcp-host name.
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
# A path dnsmasq and /etc/exports read as one word: no comma, space, quote, '#' or control character.
_PATH = re.compile(r"/[A-Za-z0-9_./+@-]*")
# Read-only: users are root on their boards, on this very network; a writable export would let any
# of them change the system every board netboots (and so every deployment). no_root_squash stays:
# the netboot system's root must read its own 0600 files (host key, authorized_keys). The netboot
# system writes only to tmpfs (docs/raspberry-guide.md §3).
MIN_PREFIX, MAX_PREFIX = 16, 30  # a boards' network: 65,534 boards at most, 2 at least
EXPORT_OPTIONS = "ro,sync,no_subtree_check,no_root_squash"


class NetworkConfigError(ValueError):
    """A config value the network configuration cannot use; the message names the key."""


@dataclass(frozen=True)
class BoardNetwork:
    """What the files need of the config, checked."""

    agent: str
    interface: str
    network: IPv4Network
    server: IPv4Address
    dhcp_range: tuple[IPv4Address, IPv4Address] | None  # None: static leases only
    router: IPv4Address | None
    tftp_root: str
    nfs_root: str


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: IPv4Address
    name: str  # "" when the node's name is not a host name dnsmasq takes


@dataclass
class NetworkFiles:
    dnsmasq: str
    exports: str
    leases: list[Lease] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why each left-out node is out (safe text)


def _address(key: str, value: str) -> IPv4Address:
    try:
        return IPv4Address(value.strip())
    except ValueError:
        raise NetworkConfigError(f"key {key!r}: {value!r} is not an IPv4 address") from None


def _inside(key: str, addr: IPv4Address, net: IPv4Network) -> IPv4Address:
    if addr not in net or (net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address)):
        raise NetworkConfigError(f"key {key!r}: {addr} is not a host address of the board network {net}")
    return addr


def _path(key: str, value: Path) -> str:
    text = str(value)
    if not _PATH.fullmatch(text):
        raise NetworkConfigError(
            f"key {key!r}: {text!r} cannot be written in dnsmasq or /etc/exports: "
            f"use letters, digits and / _ . + @ - only"
        )
    return text


def _derived_address(ips: Iterable[str]) -> ipaddress.IPv4Interface:
    """Without `board_address`: the /24 holding every registered node, the pimaster at its .254."""
    nets = set()
    for ip in ips:
        try:
            nets.add(ipaddress.IPv4Network(f"{IPv4Address(ip)}/24", strict=False))
        except ValueError:
            continue
    if len(nets) != 1:
        why = "no node has an address yet" if not nets else f"the nodes are on {len(nets)} /24 networks"
        raise NetworkConfigError(
            f"key 'board_address': not set and {why}; set it to the pimaster's address on the "
            f"boards' network, like \"48.48.0.254/24\""
        )
    net = nets.pop()
    return ipaddress.IPv4Interface(f"{net.broadcast_address - 1}/24")


def board_network(cfg: AgentConfig, node_ips: Iterable[str] = ()) -> BoardNetwork:
    """The checked settings of `cfg` (`node_ips` give the default network when none is set)."""
    if cfg.board_address.strip():
        try:
            iface = ipaddress.IPv4Interface(cfg.board_address.strip())
        except ValueError:
            raise NetworkConfigError(
                f"key 'board_address': {cfg.board_address!r} is not an address with its prefix, "
                f"like \"48.48.0.254/24\""
            ) from None
    else:
        iface = _derived_address(node_ips)
    net = iface.network
    if net.prefixlen > MAX_PREFIX:
        raise NetworkConfigError(f"key 'board_address': the network {net} has no room for boards "
                                 f"(the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX})")
    if net.prefixlen < MIN_PREFIX:
        # The NFS export and the DHCP range cover this network: a /8 or /0 would export the
        # netboot root to far more than the boards' wire.
        raise NetworkConfigError(
            f"key 'board_address': the network {net} is wider than a boards' network; the prefix "
            f"must be /{MIN_PREFIX} to /{MAX_PREFIX} (e.g. {iface.ip}/24)")
    server = _inside("board_address", iface.ip, net)
    if not _IFNAME.fullmatch(cfg.board_interface):
        raise NetworkConfigError(
            f"key 'board_interface': {cfg.board_interface!r} is not a network interface name"
        )
    dhcp_range = None
    if cfg.dhcp_range.strip():
        start_text, sep, end_text = cfg.dhcp_range.partition("-")
        if not sep:
            raise NetworkConfigError(
                f"key 'dhcp_range': {cfg.dhcp_range!r} is not START-END, like \"48.48.0.100-48.48.0.199\""
            )
        start = _inside("dhcp_range", _address("dhcp_range", start_text), net)
        end = _inside("dhcp_range", _address("dhcp_range", end_text), net)
        if start > end:
            raise NetworkConfigError(f"key 'dhcp_range': it starts at {start}, after its end {end}")
        if start <= server <= end:
            raise NetworkConfigError(f"key 'dhcp_range': it holds the pimaster's own address {server}")
        dhcp_range = (start, end)
    router = None
    if cfg.dhcp_router.strip():
        router = _inside("dhcp_router", _address("dhcp_router", cfg.dhcp_router), net)
    return BoardNetwork(
        agent=cfg.agent_name if _HOSTNAME.fullmatch(cfg.agent_name) else "",
        interface=cfg.board_interface,
        network=net,
        server=server,
        dhcp_range=dhcp_range,
        router=router,
        tftp_root=_path("tftp_root", cfg.tftp_dir),
        nfs_root=_path("nfs_root", cfg.resolve(cfg.nfs_root)),
    )


def _lease(net: BoardNetwork, node: Node, seen_mac: set[str], seen_ip: set[IPv4Address]) -> Lease | str:
    """The node's lease, or why it has none (text that holds nothing of the row but a safe name)."""
    label = node.name if _HOSTNAME.fullmatch(node.name or "") else "a node whose name is not a host name"
    attrs = node.attrs if isinstance(node.attrs, dict) else {}
    mac = attrs.get("mac")
    if not mac:
        return f"{label}: no MAC registered"
    mac = mac.lower() if isinstance(mac, str) else mac  # rows from before the API normalised it
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        return f"{label}: its MAC is not of the form dc:a6:32:01:36:c2"
    try:
        ip = IPv4Address(node.ip or "")
    except ValueError:
        return f"{label}: its address is not an IPv4 address"
    if ip not in net.network or ip in (net.network.network_address, net.network.broadcast_address):
        return f"{label}: its address {ip} is not on the board network {net.network}"
    if ip == net.server:
        return f"{label}: its address {ip} is the pimaster's"
    if mac in seen_mac:
        return f"{label}: its MAC {mac} is another node's"
    if ip in seen_ip:
        return f"{label}: its address {ip} is another node's"
    seen_mac.add(mac)
    seen_ip.add(ip)
    return Lease(mac, ip, node.name if _HOSTNAME.fullmatch(node.name or "") else "")


def render(net: BoardNetwork, nodes: Iterable[Node]) -> NetworkFiles:
    """Both files' text, the same for the same config and nodes (nodes in name order)."""
    leases: list[Lease] = []
    skipped: list[str] = []
    seen_mac: set[str] = set()
    seen_ip: set[IPv4Address] = set()
    for node in sorted(nodes, key=lambda n: str(n.name)):
        got = _lease(net, node, seen_mac, seen_ip)
        if isinstance(got, Lease):
            leases.append(got)
        else:
            skipped.append(got)
    mask = net.network.netmask
    who = f" of agent {net.agent}" if net.agent else ""
    lines = [
        f"# dnsmasq configuration of the boards' network{who}, written by `piseduce agent network-config`.",
        "# Run it again after nodes change rather than editing this file.",
        f"interface={net.interface}",
        f"listen-address={net.server}",
        "bind-interfaces",
        "no-hosts",
        "log-dhcp",
    ]
    if net.dhcp_range is None:
        lines.append(f"dhcp-range={net.network.network_address},static,{mask}")
    else:
        lines.append(f"dhcp-range={net.dhcp_range[0]},{net.dhcp_range[1]},{mask},12h")
    if net.router is not None:
        lines.append(f"dhcp-option=option:router,{net.router}")
    lines += [
        "dhcp-option=23,64",
        # Pi 4 firmware (TFTP_PREFIX=0) asks for <serial>/start4.elf itself: the per-serial
        # folders the agent manages need no tftp-unique-root.
        "enable-tftp",
        f"tftp-root={net.tftp_root}",
        "tftp-no-blocksize",
        "dhcp-boot=/bootcode.bin",
        'pxe-service=0,"Raspberry Pi Boot"',
    ]
    for lease in leases:
        lines.append(f"dhcp-host={lease.mac},{lease.ip}" + (f",{lease.name}" if lease.name else ""))
    if skipped:
        lines.append(f"# {len(skipped)} node(s) without a lease:")
        lines += [f"#   {why}" for why in skipped]
    exports = f"{net.nfs_root} {net.network}({EXPORT_OPTIONS})"
    lines += [
        "",
        "# NFS export of the netboot root (/etc/exports on the pimaster, then `exportfs -ra`):",
        f"# {exports}",
    ]
    return NetworkFiles("\n".join(lines) + "\n", exports + "\n", leases, skipped)


def nodes(session: Session) -> list[Node]:
    return list(session.scalars(select(Node).where(Node.present.is_(True)).order_by(Node.name)))


def network_files(cfg: AgentConfig, session: Session) -> NetworkFiles:
    rows = nodes(session)
    return render(board_network(cfg, (str(n.ip) for n in rows)), rows)
