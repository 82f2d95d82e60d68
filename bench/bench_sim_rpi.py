"""Simulated Raspberry Pi cluster at scale: 200 boards (real mode as root: 200 network namespaces).

Prints start-up time, resident memory, SNMP walk latency, and how long 40 boards take to power on,
boot the NFS system and answer an SSH command, against the ideal (boot delay / time scale).
Recorded for the closing table (bench/results.py): the 40 boards' boot at most 4x the ideal (two
shared CPUs run 40 SSH handshakes and boots), one SNMP walk of the 200 PoE ports within 1 s, the
start-up time and memory for information. Every wait is bounded (BOOT_TIMEOUT_S).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import emit  # noqa: E402

BOARDS = 200
BOOTED = 40
TIME_SCALE = 40.0
BOOT_DELAY = 20.0
BOOT_TARGET_X = 4.0
SNMP_TARGET_MS = 1000.0
BOOT_TIMEOUT_S = 300.0


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
        emit("sim rpi: start", f"{BOARDS} boards", start_s, "s", None)
        emit("sim rpi: memory of the cluster", f"{BOARDS} boards", rss_mb() - rss0, "MB", None)
        try:
            sw = cluster.inventory()["switch"]
            t0 = time.perf_counter()
            rows = await asyncio.wait_for(snmp_walk(sw), 60)
            walk_ms = (time.perf_counter() - t0) * 1000
            print(f"SNMP bulk walk of {rows} PoE ports: {walk_ms:.0f} ms")
            emit("sim rpi: SNMP bulk walk of the PoE ports", f"{rows} ports", walk_ms, "ms", SNMP_TARGET_MS)
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

            logins = asyncio.gather(*(login(b) for b in cluster.boards[:BOOTED]))
            await asyncio.wait_for(logins, BOOT_TIMEOUT_S)
            took = time.perf_counter() - t0
            ideal = BOOT_DELAY / TIME_SCALE
            print(f"{BOOTED} boards powered, booted and logged into: {took:.2f} s "
                  f"(ideal {ideal:.2f} s, ratio {took / ideal:.1f}x)")
            emit("sim rpi: power on, boot, SSH login / ideal", f"{BOOTED} boards", took / ideal, "x",
                 BOOT_TARGET_X)
            print(f"resident memory of this process with {BOOTED} boards up: {rss_mb():.0f} MB")
        finally:
            t0 = time.perf_counter()
            await cluster.stop()
            print(f"stop: {(time.perf_counter() - t0) * 1000:.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
