"""Reusable helpers to run the simulated Raspberry Pi cluster in tests.

    from rpi_fixtures import running_cluster, power, nfs_boot_folder

    async with running_cluster(tmp_path, boards=2, time_scale=20) as (cluster, agent_key_path):
        inv = cluster.inventory()
        nfs_boot_folder(cluster, "pi-1")          # like the driver's "boot folder -> NFS template" step
        await power(inv, 1, on=True)              # SNMP SET with pysnmp
        conn = await connect(cluster, "pi-1", agent_key_path)   # waits for the boot, asyncssh
        ...

The agent keypair is an ed25519 key written to `<tmp>/agent_key` (+ `.pub`); it is authorized in the
NFS root by `prepare_pimaster`. With time_scale=20 and boot_delay=6 (the default here) a boot
takes 0.3 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh

from piseduce.sim.rpi import TEMPLATE, prepare_pimaster
from piseduce.sim.rpi.cluster import ClusterOptions, RpiCluster


def make_agent_key(directory: Path) -> Path:
    """An ed25519 keypair: returns the private key path (the public key is `<path>.pub`)."""
    path = directory / "agent_key"
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="piseduce-agent")
        key.write_private_key(path)
        key.write_public_key(str(path) + ".pub")
        path.chmod(0o600)
    return path


@contextlib.asynccontextmanager
async def running_cluster(
    tmp_path: Path,
    boards: int = 2,
    time_scale: float = 20.0,
    boot_delay: float = 6.0,
    **options: Any,
) -> AsyncIterator[tuple[RpiCluster, Path]]:
    """Starts a cluster under tmp_path/"rpi"; yields (cluster, agent private key path)."""
    base = tmp_path / "rpi"
    base.mkdir(parents=True, exist_ok=True)
    key_path = make_agent_key(base)
    tftp_root, nfs_root = base / "tftpboot", base / "nfs"
    prepare_pimaster(tftp_root, nfs_root, Path(str(key_path) + ".pub").read_text())
    opts = ClusterOptions(
        boards=boards, state_dir=base / "state", tftp_root=tftp_root, nfs_root=nfs_root,
        time_scale=time_scale, boot_delay=boot_delay, **options,
    )
    cluster = RpiCluster(opts)
    await cluster.start()
    try:
        yield cluster, key_path
    finally:
        await cluster.stop()


def nfs_boot_folder(cluster: RpiCluster, name: str) -> Path:
    """Copies the NFS-boot template into the board's TFTP folder (the driver's boot_conf step)."""
    board = cluster.board(name)
    folder = cluster.opts.tftp_root / board.identity.serial
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(cluster.opts.tftp_root / TEMPLATE, folder)
    return folder


async def power(inventory: dict[str, Any], port: int, *, on: bool, community: str | None = None) -> None:
    """SNMP v2c SET of pethPsePortAdminEnable with pysnmp (raises on any SNMP error)."""
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        Integer,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        set_cmd,
    )

    sw = inventory["switch"]
    engine = SnmpEngine()
    try:
        target = await UdpTransportTarget.create((sw["ip"], sw["snmp_port"]), timeout=1, retries=2)
        err, status, index, _ = await set_cmd(
            engine, CommunityData(community or sw["community"], mpModel=1), target, ContextData(),
            ObjectType(ObjectIdentity(f"{sw['poe_oid']}.{sw['oid_offset'] + port}"), Integer(1 if on else 2)),
        )
    finally:
        engine.close_dispatcher()
    if err or status:
        raise RuntimeError(f"SNMP SET failed: {err or status.prettyPrint()} at {index}")


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(interval)


async def connect(
    cluster: RpiCluster, name: str, key_path: Path, *, username: str = "root", timeout: float = 10.0,
    nfs: bool = True,
) -> asyncssh.SSHClientConnection:
    """Waits for the board's SSH and logs in with the key, checking the expected host key."""
    board = cluster.board(name)
    await wait_for(lambda: board.system in ("nfs", "deployed", "none"), timeout)
    info = board.describe()
    host_key = asyncssh.import_public_key(info["nfs_host_key"] if nfs else info["host_key"])
    line = host_key.export_public_key().decode().strip()
    known = asyncssh.import_known_hosts(f"[127.0.0.1]:{board.ssh_port} {line}\n")
    return await asyncssh.connect(
        "127.0.0.1", board.ssh_port, username=username, client_keys=[str(key_path)], known_hosts=known,
        connect_timeout=timeout,
    )
