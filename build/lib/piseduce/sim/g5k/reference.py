"""Reference data of the emulated site, generated from real descriptions of Grid'5000's public
reference-repository (`data/`: one node and the cluster of grisou, gros, grvingt and graffiti,
and the Nancy site, as that repository has them; see data/README.md).

Node n of a cluster is its template node (`<cluster>-1`) renumbered: names, addresses (IPv4, IPv6,
KaVLAN), MACs, serials, disk IDs, switch and PDU ports shifted by n - 1, so that every node differs
as real ones do while keeping every field the real API serves. A cluster name without a template
gets gros's description under its own name; another site gets Nancy's under its own name.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
from functools import cache
from importlib import resources
from typing import Any

GIB = 1024**3
TEMPLATES = ("grisou", "gros", "grvingt", "graffiti")
FALLBACK = "gros"
TEMPLATE_SITE = "nancy"


@cache
def _data(name: str) -> Any:
    text = resources.files("piseduce.sim.g5k").joinpath("data", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def template_of(cluster: str) -> str:
    return cluster if cluster in TEMPLATES else FALLBACK


def _renamed(data: Any, old: str, new: str, site: str) -> Any:
    """The template with the cluster's and the site's names in place of its own."""
    text = json.dumps(data)
    if new != old:
        text = re.sub(rf"(?<![a-z]){old}(?=[-0-9\"])|(?<=\"s){old}(?=[0-9\"])", new, text)
    if site != TEMPLATE_SITE:
        text = text.replace(f".{TEMPLATE_SITE}.grid5000.fr", f".{site}.grid5000.fr")
    return json.loads(text)


def _shift_ip(text: str, by: int) -> str:
    try:
        return str(ipaddress.ip_address(text) + by)
    except ValueError:
        return text


def _shift_mac(mac: str, by: int) -> str:
    value = (int(mac.replace(":", ""), 16) + by * 0x100) % 2**48
    raw = f"{value:012x}"
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def _token(seed: str, length: int, alphabet: str = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


def _shift_port(text: str, by: int) -> str:
    m = re.search(r"(\d+)(\D*)$", text)
    if not m:
        return text
    return f"{text[: m.start(1)]}{int(m.group(1)) + by}{m.group(2)}"


def _renumber(node: dict[str, Any], cluster: str, index: int) -> None:
    by = index - 1
    node["uid"] = f"{cluster}-{index}"
    text = json.dumps(node)
    text = re.sub(rf"(?<![a-z0-9]){cluster}-1(?=[.\-\"])", f"{cluster}-{index}", text)
    node.clear()
    node.update(json.loads(text))
    if by == 0:
        return
    for adapter in node.get("network_adapters", []):
        for key in ("ip", "ip6"):
            if key in adapter:
                adapter[key] = _shift_ip(adapter[key], by)
        if "mac" in adapter:
            adapter["mac"] = _shift_mac(adapter["mac"], by)
        if "switch_port" in adapter:
            adapter["switch_port"] = _shift_port(adapter["switch_port"], by)
    for table in ("kavlan", "kavlan6"):
        for vlans in node.get(table, {}).values():
            for name, ip in vlans.items():
                vlans[name] = _shift_ip(ip, by)
    chassis = node.get("chassis", {})
    if "serial" in chassis:
        chassis["serial"] = _token(f"{cluster}-{index}-serial", len(chassis["serial"]))
    for disk in node.get("storage_devices", []):
        if "by_id" in disk:
            head, _, tail = disk["by_id"].rpartition("-")
            prefix = "0x" if tail.startswith("0x") else ""
            new = _token(f"{cluster}-{index}-{tail}", len(tail) - len(prefix), "0123456789abcdef")
            disk["by_id"] = f"{head}-{prefix}{new}"
    for outlet in node.get("pdu", []):
        if isinstance(outlet.get("port"), int):
            outlet["port"] += by


def node_reference(site: str, cluster: str, index: int) -> dict[str, Any]:
    """The reference description of `<cluster>-<index>` as the reference API serves it."""
    template = template_of(cluster)
    node: dict[str, Any] = _renamed(copy.deepcopy(_data(f"{template}-1")), template, cluster, site)
    _renumber(node, cluster, index)
    return node


def cluster_reference(site: str, cluster: str, count: int) -> dict[str, Any]:
    template = template_of(cluster)
    item: dict[str, Any] = _renamed(copy.deepcopy(_data(template)), template, cluster, site)
    item["uid"] = cluster
    item["nodes_count"] = count
    return item


def site_reference(site: str) -> dict[str, Any]:
    item: dict[str, Any] = copy.deepcopy(_data(TEMPLATE_SITE))
    if site != TEMPLATE_SITE:
        name = site.capitalize()
        item.update(uid=site, name=name, description=f"Grid5000 {name} site",
                    web=f"http://www.grid5000.fr/w/{name}:Home", location=f"{name}, France")
    return item


def fqdn(node: dict[str, Any]) -> str:
    """The node's name on the network: the address of its first mounted adapter."""
    for adapter in node["network_adapters"]:
        if adapter.get("mounted") and adapter.get("network_address"):
            return str(adapter["network_address"])
    return str(node["network_adapters"][0]["network_address"])


_ENVS: tuple[tuple[str, str, str, str], ...] = (
    # name, alias, description, os family
    ("debian11-min", "debian11-x64-min", "Debian 11 (bullseye) for x64 - min", "debian"),
    ("debian11-nfs", "debian11-x64-nfs", "Debian 11 (bullseye) for x64 - nfs", "debian"),
    ("debian12-min", "debian12-x64-min", "Debian 12 (bookworm) for x64 - min", "debian"),
    ("debian12-nfs", "debian12-x64-nfs", "Debian 12 (bookworm) for x64 - nfs", "debian"),
    ("debian12-big", "debian12-x64-big", "Debian 12 (bookworm) for x64 - big", "debian"),
    ("ubuntu2204-min", "ubuntu2204-x64-min", "Ubuntu 22.04 (jammy) for x64 - min", "ubuntu"),
    ("centos-stream9-min", "centos-stream9-x64-min", "CentOS Stream 9 for x64 - min", "redhat"),
    ("rocky9-min", "rocky9-x64-min", "Rocky Linux 9 for x64 - min", "redhat"),
)
ENV_VERSION = 2024061213


def environments(arch: str = "x86_64") -> list[dict[str, Any]]:
    out = []
    for name, alias, description, family in _ENVS:
        out.append(
            {
                "uid": f"{name}_{arch}_{ENV_VERSION}",
                "name": name,
                "alias": alias,
                "version": ENV_VERSION,
                "arch": arch,
                "description": description,
                "author": "support-staff@lists.grid5000.fr",
                "visibility": "public",
                "destructive": False,
                "os": "linux",
                "image": {
                    "file": f"server:///grid5000/images/{name}-{ENV_VERSION}.tar.zst",
                    "kind": "tar",
                    "compression": "zstd",
                },
                "postinstalls": [
                    {
                        "archive": "server:///grid5000/postinstalls/g5k-postinstall.tgz",
                        "compression": "gzip",
                        "script": f"g5k-postinstall --net {family}",
                    }
                ],
                "boot": {"kernel": "/vmlinuz", "initrd": "/initrd.img", "kernel_params": ""},
                "filesystem": "ext4",
                "partition_type": 131,
                "multipart": False,
                "user": "deploy",
            }
        )
    return out
