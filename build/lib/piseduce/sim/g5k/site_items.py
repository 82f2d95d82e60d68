"""The other reference collections of a site that python-grid5000 exposes (servers, PDUs, network
equipments, KaVLAN VLANs, reference versions), derived from the site's nodes and its description
the way the reference-repository relates them: a node's adapters name the switch and port it is
cabled to, its `pdu` entries the outlets that feed it, the site's `kavlans` its VLANs."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

# The site's servers (services of its infrastructure), with the offset of their address in the
# site's default network.
SERVERS = (("dns", 1, "dns"), ("kadeploy", 2, "kadeploy"), ("kavlan", 3, "kavlan"),
           ("api-proxy", 4, "api"), ("ldap", 5, "ldap"))
ROUTER = "gw"


def _default_net(site: dict[str, Any]) -> ipaddress.IPv4Network:
    text = site.get("kavlans", {}).get("default", {}).get("network", "172.16.64.0/20")
    return ipaddress.IPv4Network(text)


def servers(site: dict[str, Any]) -> list[dict[str, Any]]:
    net = _default_net(site)
    uid = str(site["uid"])
    out = [{
        "uid": f"f{uid}", "type": "server", "alias": ["frontend"],
        "network_adapters": {"default": {"ip": site.get("frontend_ip", str(net[101])),
                                         "network_address": f"f{uid}.{uid}.grid5000.fr"}},
    }]
    for name, offset, kind in SERVERS:
        out.append({
            "uid": name, "type": "server", "kind": kind,
            "network_adapters": {"default": {"ip": str(net[-2 - offset * 16]),
                                             "network_address": f"{name}.{uid}.grid5000.fr"}},
        })
    return out


def pdus(nodes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    by_pdu: dict[str, dict[str, str]] = {}
    for node in nodes:
        for outlet in node.get("pdu", []):
            by_pdu.setdefault(str(outlet["uid"]), {})[str(outlet.get("port"))] = str(node["uid"])
    return [
        {"uid": uid, "type": "pdu", "vendor": "APC", "model": "AP8653", "ports": ports,
         "ip": _ip_of(uid, "172.17.79.0/24")}
        for uid, ports in sorted(by_pdu.items())
    ]


def network_equipments(site: str, nodes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    ports: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        for adapter in node.get("network_adapters", []):
            switch = adapter.get("switch")
            if switch:
                ports.setdefault(str(switch), []).append({
                    "uid": node["uid"], "kind": "node", "port": adapter.get("device"),
                    "snmp_name": adapter.get("switch_port"), "switchport_mode": "access",
                })
    out = []
    for uid, cabled in sorted(ports.items()):
        router = uid == ROUTER
        uplink = [] if router else [{"uid": ROUTER, "kind": "router", "switchport_mode": "trunk"}]
        out.append({
            "uid": uid, "type": "network_equipment", "kind": "router" if router else "switch",
            "site": site, "ip": _ip_of(uid, "172.17.79.0/24"),
            "linecards": [{"kind": "node", "rate": 10_000_000_000, "ports": uplink + cabled}],
        })
    return out


def vlans(site: dict[str, Any]) -> list[dict[str, Any]]:
    """KaVLAN: 1-3 local (not routed), 4-9 routed on the site, 10+ global (one per site)."""
    out = []
    for key, net in site.get("kavlans", {}).items():
        if not key.isdigit():
            continue
        number = int(key)
        kind = "kavlan-local" if number <= 3 else "kavlan" if number <= 9 else "kavlan-global"
        out.append({"uid": key, "type": kind, "name": f"kavlan-{key}", "site": site["uid"], **net})
    return sorted(out, key=lambda v: int(v["uid"]))


def versions(site: str) -> list[dict[str, Any]]:
    """The reference-repository commits the description is at (one: the emulator's own)."""
    uid = hashlib.sha1(f"piseduce-{site}".encode()).hexdigest()  # noqa: S324 (a name, not a secret)
    return [{"uid": uid, "type": "version", "author": "PiSeduce emulator",
             "message": f"Reference of {site} generated from the reference-repository's descriptions",
             "date": "Mon, 01 Jan 2024 00:00:00 GMT"}]


def _ip_of(name: str, network: str) -> str:
    net = ipaddress.IPv4Network(network)
    return str(net[1 + int(hashlib.sha1(name.encode()).hexdigest(), 16) % (net.num_addresses - 2)])  # noqa: S324
