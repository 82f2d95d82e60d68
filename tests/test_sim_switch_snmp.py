"""The simulated PoE switch against net-snmp's own commands: SNMP v1, v2c and v3 (authPriv with
SHA and AES), the system group, IF-MIB's ifTable/ifXTable with ifOperStatus following the port's
power and cable, and the columns of pethPsePortTable a real PoE switch answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from helpers.rpi_fixtures import running_cluster
from helpers.waiting import wait_until

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "snmpget"], capture_output=True).returncode != 0,
    reason="net-snmp's commands (Debian package snmp) are not installed",
)

POE = "1.3.6.1.2.1.105.1.1.1"  # pethPsePortEntry
IF = "1.3.6.1.2.1.2.2.1"  # ifEntry
IFX = "1.3.6.1.2.1.31.1.1.1"  # ifXEntry


def _env(tmp_path: Path) -> dict[str, str]:
    # MIBS="" keeps answers numeric whatever MIB files the machine has; the persistent dir keeps
    # net-snmp's v3 engine-time cache out of the user's home.
    return {**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path / "snmp"), "MIBS": ""}


def _auth(sw: dict, version: str, **over: str) -> list[str]:
    if version in ("1", "2c"):
        return [f"-v{version}", "-c", over.get("community", sw["community"])]
    return ["-v3", "-l", over.get("level", "authPriv"), "-u", over.get("user", sw["v3_user"]),
            "-a", "SHA", "-A", over.get("auth", sw["v3_auth_key"]),
            "-x", "AES", "-X", over.get("priv", sw["v3_priv_key"])]


async def net_snmp(tool: str, sw: dict, version: str, *args: str, env: dict[str, str],
                   **over: str) -> subprocess.CompletedProcess[str]:
    argv = [tool, *_auth(sw, version, **over), "-On", "-t", "1", "-r", "1",
            f"{sw['ip']}:{sw['snmp_port']}", *args]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30, env=env)


def values(out: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.strip().splitlines():
        oid, _, value = line.partition(" = ")
        rows[oid.lstrip(".")] = value
    return rows


@pytest.mark.parametrize("version", ["1", "2c", "3"])
async def test_power_a_port_with_each_snmp_version(tmp_path: Path, version: str) -> None:
    """snmpset/snmpget/snmpwalk in v1, v2c and v3 authPriv drive the same PoE port."""
    env = _env(tmp_path)
    async with running_cluster(tmp_path, boards=2) as (cluster, _key):
        sw = cluster.inventory()["switch"]
        out = await net_snmp("snmpset", sw, version, f"{POE}.3.1.1", "i", "1", env=env)
        assert out.returncode == 0, out.stderr
        assert cluster.board("pi-1").powered and not cluster.board("pi-2").powered
        walk = values(await net_snmp("snmpwalk", sw, version, f"{POE}.3", env=env))
        assert walk == {f"{POE}.3.1.1": "INTEGER: 1", f"{POE}.3.1.2": "INTEGER: 2",
                        f"{POE}.3.1.3": "INTEGER: 1"}
        got = values(await net_snmp("snmpget", sw, version, "1.3.6.1.2.1.1.5.0", f"{POE}.6.1.2", env=env))
        assert got == {"1.3.6.1.2.1.1.5.0": 'STRING: "sw1"', f"{POE}.6.1.2": "INTEGER: 1"}
        # a read-only object is refused in each version's own terms, and nothing changes
        out = await net_snmp("snmpset", sw, version, f"{POE}.6.1.2", "i", "3", env=env)
        assert out.returncode != 0
        assert ("noSuchName" if version == "1" else "notWritable") in out.stderr, out.stderr
        out = await net_snmp("snmpset", sw, version, f"{POE}.3.1.1", "i", "7", env=env)
        assert out.returncode != 0
        assert ("badValue" if version == "1" else "wrongValue") in out.stderr, out.stderr
        assert cluster.board("pi-1").powered


async def test_wrong_credentials_get_no_answer_or_a_usm_report(tmp_path: Path) -> None:
    env = _env(tmp_path)
    async with running_cluster(tmp_path, boards=1) as (cluster, _key):
        sw = cluster.inventory()["switch"]
        for version in ("1", "2c"):
            out = await net_snmp("snmpget", sw, version, f"{POE}.3.1.1", env=env, community="public")
            assert out.returncode != 0 and "Timeout" in out.stderr
        out = await net_snmp("snmpget", sw, "3", f"{POE}.3.1.1", env=env, auth="not-the-key-at-all")
        assert out.returncode != 0 and "Authentication failure" in out.stderr, out.stderr
        out = await net_snmp("snmpget", sw, "3", f"{POE}.3.1.1", env=env, user="mallory")
        assert out.returncode != 0 and "Unknown user name" in out.stderr, out.stderr
        out = await net_snmp("snmpset", sw, "3", f"{POE}.3.1.1", "i", "1", env=env, priv="wrong-privacy-key")
        assert out.returncode != 0 and not cluster.board("pi-1").powered
        # a user without privacy is not the switch's authPriv user either
        out = await net_snmp("snmpget", sw, "3", f"{POE}.3.1.1", env=env, level="noAuthNoPriv")
        assert out.returncode != 0


async def test_system_group_and_writable_scalars(tmp_path: Path) -> None:
    env = _env(tmp_path)
    async with running_cluster(tmp_path, boards=1, switch_vendor="linksys") as (cluster, _key):
        sw = cluster.inventory()["switch"]
        system = values(await net_snmp("snmpwalk", sw, "3", "1.3.6.1.2.1.1", env=env))
        assert list(system) == [f"1.3.6.1.2.1.1.{i}.0" for i in range(1, 8)]
        assert "LGS308P" in system["1.3.6.1.2.1.1.1.0"]
        assert system["1.3.6.1.2.1.1.2.0"] == "OID: .1.3.6.1.4.1.3955.1000.201.108"
        assert system["1.3.6.1.2.1.1.3.0"].startswith("Timeticks: (")
        assert system["1.3.6.1.2.1.1.4.0"].startswith("STRING: ")
        assert system["1.3.6.1.2.1.1.7.0"] == "INTEGER: 2"
        out = await net_snmp("snmpset", sw, "2c", "1.3.6.1.2.1.1.6.0", "s", "Room 101, rack B",
                             "1.3.6.1.2.1.1.4.0", "s", "noc@example.org", env=env)
        assert out.returncode == 0, out.stderr
        got = values(await net_snmp("snmpget", sw, "1", "1.3.6.1.2.1.1.6.0", "1.3.6.1.2.1.1.4.0", env=env))
        assert got == {"1.3.6.1.2.1.1.6.0": 'STRING: "Room 101, rack B"',
                       "1.3.6.1.2.1.1.4.0": 'STRING: "noc@example.org"'}
        # a SET with one bad binding changes none of them (SET is atomic)
        out = await net_snmp("snmpset", sw, "2c", "1.3.6.1.2.1.1.6.0", "s", "elsewhere",
                             f"{POE}.3.1.1", "i", "9", env=env)
        assert out.returncode != 0 and "wrongValue" in out.stderr
        got = values(await net_snmp("snmpget", sw, "2c", "1.3.6.1.2.1.1.6.0", env=env))
        assert got["1.3.6.1.2.1.1.6.0"] == 'STRING: "Room 101, rack B"'


async def test_if_mib_follows_power_and_cable(tmp_path: Path) -> None:
    env = _env(tmp_path)
    async with running_cluster(tmp_path, boards=2) as (cluster, _key):
        sw = cluster.inventory()["switch"]
        assert values(await net_snmp("snmpget", sw, "2c", "1.3.6.1.2.1.2.1.0", env=env)) == {
            "1.3.6.1.2.1.2.1.0": "INTEGER: 3"}
        table = values(await net_snmp("snmpbulkwalk", sw, "3", IF, env=env))
        columns = {oid.rsplit(".", 2)[-2] for oid in table}
        assert {"1", "2", "3", "5", "6", "7", "8", "9", "10", "16"} <= columns
        assert table[f"{IF}.2.1"] == 'STRING: "GigabitEthernet1/0/1"' and table[f"{IF}.3.1"] == "INTEGER: 6"
        # boards off: their ports are down; the uplink (port 3) is up
        assert [table[f"{IF}.8.{p}"] for p in (1, 2, 3)] == ["INTEGER: 2", "INTEGER: 2", "INTEGER: 1"]
        await net_snmp("snmpset", sw, "2c", f"{POE}.3.1.2", "i", "1", env=env)
        oper = values(await net_snmp("snmpget", sw, "2c", f"{IF}.8.2", f"{IF}.9.2", f"{IFX}.15.2", env=env))
        assert oper[f"{IF}.8.2"] == "INTEGER: 1" and oper[f"{IFX}.15.2"] == "Gauge32: 1000"
        assert oper[f"{IF}.9.2"] != "Timeticks: (0) 0:00:00.00"  # ifLastChange moved
        await wait_until(lambda: cluster.board("pi-2").system != "booting")
        before = values(await net_snmp("snmpget", sw, "2c", f"{IFX}.6.2", env=env))[f"{IFX}.6.2"]
        await asyncio.sleep(0.3)
        after = values(await net_snmp("snmpget", sw, "2c", f"{IFX}.6.2", env=env))[f"{IFX}.6.2"]
        assert before.startswith("Counter64: ") and int(after.split()[-1]) > int(before.split()[-1])
        # a pulled cable takes the link down (and the board with it)
        cluster.set_cable(2, plugged=False)
        oper = values(await net_snmp("snmpget", sw, "2c", f"{IF}.8.2", env=env))
        assert oper[f"{IF}.8.2"] == "INTEGER: 2" and not cluster.board("pi-2").powered
        # ifXTable: names, HC counters in v2c/v3, never a Counter64 for a v1 manager
        xv2 = values(await net_snmp("snmpwalk", sw, "2c", IFX, env=env))
        assert xv2[f"{IFX}.1.1"] == 'STRING: "Gi1/0/1"'
        assert any(v.startswith("Counter64") for v in xv2.values())
        xv1 = values(await net_snmp("snmpwalk", sw, "1", IFX, env=env))
        assert xv1 and not any(v.startswith("Counter64") for v in xv1.values())
        assert f"{IFX}.1.1" in xv1 and f"{IFX}.6.1" not in xv1
        await net_snmp("snmpset", sw, "2c", f"{IFX}.18.1", "s", "pi-1 (rack B)", env=env)
        assert values(await net_snmp("snmpget", sw, "3", f"{IFX}.18.1", env=env))[f"{IFX}.18.1"] == \
            'STRING: "pi-1 (rack B)"'


async def test_pse_port_table_columns(tmp_path: Path) -> None:
    env = _env(tmp_path)
    async with running_cluster(tmp_path, boards=2) as (cluster, _key):
        sw = cluster.inventory()["switch"]
        await net_snmp("snmpset", sw, "2c", f"{POE}.3.1.1", "i", "1", env=env)
        table = values(await net_snmp("snmpbulkwalk", sw, "2c", POE, env=env))
        assert {oid.split(".")[-3] for oid in table} == {str(c) for c in range(3, 15)}
        assert len(table) == 12 * 3
        # port 1 delivers power to a class-4 PoE+ HAT; port 2 is disabled
        assert table[f"{POE}.6.1.1"] == "INTEGER: 3" and table[f"{POE}.10.1.1"] == "INTEGER: 5"
        assert table[f"{POE}.6.1.2"] == "INTEGER: 1" and table[f"{POE}.7.1.2"] == "INTEGER: 3"
        assert table[f"{POE}.8.1.1"] == "Counter32: 0"
        out = await net_snmp("snmpset", sw, "3", f"{POE}.7.1.1", "i", "1", f"{POE}.9.1.1", "s", "pi", env=env)
        assert out.returncode == 0, out.stderr
        got = values(await net_snmp("snmpget", sw, "1", f"{POE}.7.1.1", f"{POE}.9.1.1", env=env))
        assert got == {f"{POE}.7.1.1": "INTEGER: 1", f"{POE}.9.1.1": 'STRING: "pi"'}
        out = await net_snmp("snmpset", sw, "2c", f"{POE}.7.1.1", "i", "4", env=env)
        assert out.returncode != 0 and "wrongValue" in out.stderr
        # enabled but with the cable out: searching, and the port counts the device's absence
        cluster.set_cable(1, plugged=False)
        await net_snmp("snmpset", sw, "2c", f"{POE}.3.1.1", "i", "1", env=env)
        got = values(await net_snmp("snmpget", sw, "2c", f"{POE}.6.1.1", env=env))
        main = values(await net_snmp("snmpwalk", sw, "2c", "1.3.6.1.2.1.105.1.3.1.1", env=env))
        assert main["1.3.6.1.2.1.105.1.3.1.1.2.1"] == "Gauge32: 370"
        assert main["1.3.6.1.2.1.105.1.3.1.1.3.1"] == "INTEGER: 1"
