"""Reusable helpers to run the simulated Raspberry Pi cluster in tests.

    from helpers.rpi_fixtures import running_cluster, power, nfs_boot_folder

    async with running_cluster(tmp_path, boards=2, time_scale=20) as (cluster, agent_key_path):
        inv = cluster.inventory()
        nfs_boot_folder(cluster, "pi-1")          # like the driver's "boot folder -> NFS template" step
        await power(inv, 1, on=True)              # SNMP SET with pysnmp
        conn = await connect(cluster, "pi-1", agent_key_path)   # waits for the boot, asyncssh
        ...

The agent keypair is an ed25519 key written to `<tmp>/agent_key` (+ `.pub`); it is authorized in the
NFS root by `prepare_pimaster`. With time_scale=20 and boot_delay=6 (the default here) a boot
takes 0.3 s, plus a few tenths of a second for a real-mode board to mount its root and start sshd.
The cluster runs real boards where it can (root), else in-process ones: `board.address` is where
a board's SSH answers either way; `require_real_mode()` skips a test that needs real boards.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from helpers.waiting import wait_until
from piseduce.sim.rpi import TEMPLATE, prepare_pimaster
from piseduce.sim.rpi.cluster import ClusterOptions, RpiCluster
from piseduce.sim.rpi.mode import real_mode_problem

# Tests that run against both kinds of boards: the real ones, and the in-process fallback.
BOTH_MODES = pytest.mark.parametrize("mode", ["real", "in-process"])


def require_real_mode() -> None:
    """Skips the test, with the reason, where the real mode cannot run (not root...)."""
    problem = real_mode_problem()
    if problem:
        pytest.skip(f"needs the real mode of sim rpi: {problem}")


def mode_options(mode: str) -> dict[str, Any]:
    """ClusterOptions for a BOTH_MODES test (the real mode skipped where impossible)."""
    if mode == "real":
        require_real_mode()
    return {"mode": mode}


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


POWER_TIMEOUT_S = 30.0


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
        # pysnmp gives up after 3 tries of 1 s; the bound is for a reply future that never resolves
        async with asyncio.timeout(POWER_TIMEOUT_S):
            target = await UdpTransportTarget.create((sw["ip"], sw["snmp_port"]), timeout=1, retries=2)
            oid = ObjectIdentity(f"{sw['poe_oid']}.{sw['oid_offset'] + port}")
            err, status, index, _ = await set_cmd(
                engine, CommunityData(community or sw["community"], mpModel=1), target, ContextData(),
                ObjectType(oid, Integer(1 if on else 2)),
            )
    except TimeoutError:
        raise TimeoutError(f"SNMP SET of port {port}: no outcome within {POWER_TIMEOUT_S:g} s") from None
    finally:
        engine.close_dispatcher()
    if err or status:
        raise RuntimeError(f"SNMP SET failed: {err or status.prettyPrint()} at {index}")


async def connect(
    cluster: RpiCluster, name: str, key_path: Path, *, username: str = "root", timeout: float = 10.0,
    nfs: bool = True,
) -> asyncssh.SSHClientConnection:
    """Waits for the board's SSH and logs in with the key, checking the expected host key."""
    board = cluster.board(name)
    await wait_until(lambda: board.system in ("nfs", "deployed", "none"), timeout)
    if nfs:
        line = board.describe()["nfs_host_key"]
    else:  # the deployed system's key is its card's, made at its first boot
        line = await served_host_key(*board.address)
    host_key = asyncssh.import_public_key(line)
    line = host_key.export_public_key().decode().strip()
    host, port = board.address
    known = asyncssh.import_known_hosts(f"{known_hosts_name(host, port)} {line}\n")
    return await asyncssh.connect(
        host, port, username=username, client_keys=[str(key_path)], known_hosts=known,
        connect_timeout=timeout,
    )


async def served_host_key(host: str, port: int) -> str:
    """The host key a board's SSH server offers now (`type base64`): a deployed system's is made at
    its first boot, on its card (its mounted card: reading the card file would miss what the
    kernel has not written back)."""
    key = await asyncssh.get_server_host_key(host, port)
    assert key is not None, f"{host}:{port} offered no host key"
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: `host` on port 22, `[host]:port` elsewhere."""
    return host if port == 22 else f"[{host}]:{port}"
