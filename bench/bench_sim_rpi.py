"""Simulated Raspberry Pi cluster at scale: 200 boards (real mode as root: 200 network namespaces).

Prints start-up time, resident memory, SNMP walk latency, and how long 40 boards take to power on,
boot the NFS system and answer an SSH command, against the ideal (boot delay / time scale).
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.rpi_fixtures import make_agent_key  # noqa: E402
from piseduce.sim.rpi import TEMPLATE, prepare_pimaster  # noqa: E402
from piseduce.sim.rpi.cluster import ClusterOptions, RpiCluster  # noqa: E402

BOARDS = 200
BOOTED = 40
TIME_SCALE = 40.0
BOOT_DELAY = 20.0


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def snmp_walk(sw: dict) -> int:
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        bulk_walk_cmd,
    )
    engine = SnmpEngine()
    n = 0
    try:
        target = await UdpTransportTarget.create((sw["ip"], sw["snmp_port"]), timeout=2, retries=1)
        async for err, status, _, binds in bulk_walk_cmd(
            engine, CommunityData(sw["community"], mpModel=1), target, ContextData(), 0, 50,
            ObjectType(ObjectIdentity(sw["poe_oid"])), lexicographicMode=False,
        ):
            assert not err and not status, (err, status)
            n += len(binds)
    finally:
        engine.close_dispatcher()
    return n


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-rpi-"))
    try:
        key = make_agent_key(tmp)
        prepare_pimaster(tmp / "tftp", tmp / "nfs", Path(f"{key}.pub").read_text())
        rss0 = rss_mb()
        t0 = time.perf_counter()
        opts = ClusterOptions(boards=BOARDS, state_dir=tmp / "state", tftp_root=tmp / "tftp",
                              nfs_root=tmp / "nfs", time_scale=TIME_SCALE, boot_delay=BOOT_DELAY)
        cluster = RpiCluster(opts)
        await cluster.start()
        start_s = time.perf_counter() - t0
        print(cluster.mode_line())
        print(f"start {BOARDS} boards (first run, key generation): {start_s:.2f} s")
        print(f"resident memory: {rss_mb():.0f} MB (+{rss_mb() - rss0:.0f} MB for the cluster)")
        try:
            sw = cluster.inventory()["switch"]
            t0 = time.perf_counter()
            rows = await snmp_walk(sw)
            print(f"SNMP bulk walk of {rows} PoE ports: {(time.perf_counter() - t0) * 1000:.0f} ms")
            for b in cluster.boards[:BOOTED]:
                shutil.copytree(tmp / "tftp" / TEMPLATE, tmp / "tftp" / b.identity.serial)
            t0 = time.perf_counter()
            for i in range(1, BOOTED + 1):
                cluster.set_port_enabled(i, True)

            async def login(b) -> None:  # type: ignore[no-untyped-def]
                while b.system != "nfs":
                    await asyncio.sleep(0.01)
                host, port = b.address
                async with asyncssh.connect(host, port, username="root", client_keys=[str(key)],
                                            known_hosts=None) as conn:
                    assert (await conn.run("hostname")).stdout == "nfspi\n"

            await asyncio.gather(*(login(b) for b in cluster.boards[:BOOTED]))
            took = time.perf_counter() - t0
            ideal = BOOT_DELAY / TIME_SCALE
            print(f"{BOOTED} boards powered, booted and logged into: {took:.2f} s "
                  f"(ideal {ideal:.2f} s, ratio {took / ideal:.1f}x)")
            print(f"resident memory of this process with {BOOTED} boards up: {rss_mb():.0f} MB")
        finally:
            t0 = time.perf_counter()
            await cluster.stop()
            print(f"stop: {(time.perf_counter() - t0) * 1000:.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
