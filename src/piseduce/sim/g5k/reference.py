"""Reference data of the emulated site: cluster hardware and the Kadeploy environments, shaped like
grid5000/reference-repository and the environments API (protocols.md §A.3, §A.10)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

GIB = 1024**3


@dataclass(frozen=True)
class ClusterSpec:
    model: str
    manufacturer: str
    chassis: str
    cpu: str
    procs: int
    cores: int  # per node
    threads: int  # per node
    ram_gib: int
    arch: str = "x86_64"
    queues: tuple[str, ...] = ("admin", "default")


# A few real Nancy clusters; an unknown name gets the generic spec.
CLUSTERS: dict[str, ClusterSpec] = {
    "grisou": ClusterSpec(
        "Dell PowerEdge R630", "Dell Inc.", "PowerEdge R630", "Intel Xeon E5-2630 v3", 2, 16, 32, 128
    ),
    "gros": ClusterSpec(
        "Dell PowerEdge R640", "Dell Inc.", "PowerEdge R640", "Intel Xeon Gold 5220", 1, 18, 36, 96
    ),
    "grvingt": ClusterSpec(
        "Dell PowerEdge C6420", "Dell Inc.", "PowerEdge C6420", "Intel Xeon Gold 6130", 2, 32, 64, 192
    ),
    "graffiti": ClusterSpec(
        "Dell PowerEdge T640",
        "Dell Inc.",
        "PowerEdge T640",
        "Intel Xeon Silver 4110",
        2,
        16,
        32,
        128,
        queues=("admin", "production"),
    ),
}
GENERIC = ClusterSpec("Generic x86 server", "Generic", "Generic 1U", "Intel Xeon", 2, 16, 32, 64)


def cluster_spec(name: str) -> ClusterSpec:
    return CLUSTERS.get(name, GENERIC)


def node_reference(site: str, cluster: str, index: int, spec: ClusterSpec) -> dict[str, Any]:
    uid = f"{cluster}-{index}"
    fqdn = f"{uid}.{site}.grid5000.fr"
    mac = f"24:6e:96:{zlib.crc32(cluster.encode()) & 0xFF:02x}:{index // 256:02x}:{index % 256:02x}"
    return {
        "uid": uid,
        "type": "node",
        "cluster": cluster,
        "architecture": {
            "nb_cores": spec.cores,
            "nb_procs": spec.procs,
            "nb_threads": spec.threads,
            "platform_type": spec.arch,
        },
        "chassis": {"manufacturer": spec.manufacturer, "name": spec.chassis, "serial": f"SN{index:05d}"},
        "main_memory": {"ram_size": spec.ram_gib * GIB},
        "processor": {"model": spec.cpu, "vendor": spec.cpu.split()[0]},
        "network_adapters": [
            {
                "device": "eth0",
                "interface": "Ethernet",
                "mounted": True,
                "network_address": fqdn,
                "rate": 10_000_000_000,
                "mac": mac,
            }
        ],
        "supported_job_types": {
            "besteffort": True,
            "deploy": True,
            "max_walltime": 0,
            "queues": list(spec.queues),
            "virtual": "ivt",
        },
    }


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
