"""The simulated Raspberry Pi cluster: SNMP PoE switch, netboot, SSH systems, fault knobs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import asyncssh
import pytest
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    Integer,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
    set_cmd,
    walk_cmd,
)

from helpers.rpi_fixtures import (
    BOTH_MODES,
    connect,
    known_hosts_name,
    make_agent_key,
    mode_options,
    nfs_boot_folder,
    power,
    require_real_mode,
    running_cluster,
    served_host_key,
)
from helpers.waiting import wait_until
from piseduce.sim.images import build_environment
from piseduce.sim.rpi import drop_session
from piseduce.sim.rpi.cluster import ClusterOptions, RpiCluster
from piseduce.sim.rpi.drop_session import SFTP_SERVER, session_argv


def _target_args(sw: dict) -> tuple[str, int]:
    return sw["ip"], sw["snmp_port"]


async def _pysnmp_get(sw: dict, oids: list[str], community: str | None = None, timeout: float = 1.0):
    engine = SnmpEngine()
    try:
        target = await UdpTransportTarget.create(_target_args(sw), timeout=timeout, retries=0)
        return await get_cmd(engine, CommunityData(community or sw["community"], mpModel=1), target,
                             ContextData(), *[ObjectType(ObjectIdentity(o)) for o in oids])
    finally:
        engine.close_dispatcher()


async def _pysnmp_set(sw: dict, oid: str, value: int):
    engine = SnmpEngine()
    try:
        target = await UdpTransportTarget.create(_target_args(sw), timeout=1, retries=0)
        return await set_cmd(engine, CommunityData(sw["community"], mpModel=1), target, ContextData(),
                             ObjectType(ObjectIdentity(oid), Integer(value)))
    finally:
        engine.close_dispatcher()


async def _pysnmp_walk(sw: dict, oid: str) -> list[tuple[str, int]]:
    engine = SnmpEngine()
    rows = []
    try:
        target = await UdpTransportTarget.create(_target_args(sw), timeout=1, retries=1)
        async for err, status, _, var_binds in walk_cmd(
            engine, CommunityData(sw["community"], mpModel=1), target, ContextData(),
            ObjectType(ObjectIdentity(oid)), lexicographicMode=False,
        ):
            assert not err and not status
            rows += [(str(name), int(value)) for name, value in var_binds]
    finally:
        engine.close_dispatcher()
    return rows


async def test_snmp_with_pysnmp(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, boards=3) as (cluster, _key):
        sw = cluster.inventory()["switch"]
        assert sw["port_count"] == 4 and sw["master_port"] == 4
        poe = sw["poe_oid"]
        rows = await _pysnmp_walk(sw, poe)
        assert rows == [(f"{poe}.1", 2), (f"{poe}.2", 2), (f"{poe}.3", 2), (f"{poe}.4", 1)]

        err, status, _, _ = await _pysnmp_set(sw, f"{poe}.2", 1)
        assert not err and not status
        assert cluster.board("pi-2").powered and not cluster.board("pi-1").powered
        power_oid = sw["power_oid"]
        err, status, _, binds = await _pysnmp_get(sw, [f"{poe}.2", f"{power_oid}.2", f"{power_oid}.1"])
        assert not err and not status
        assert int(binds[0][1]) == 1
        assert int(binds[1][1]) > 2000  # a booting Pi 4 draws about 3.4 W
        assert int(binds[2][1]) == 0

        err, status, _, _ = await _pysnmp_set(sw, f"{poe}.2", 2)
        assert not status and not cluster.board("pi-2").powered

        # a port that does not exist cannot be written, and nothing changes
        err, status, index, _ = await _pysnmp_set(sw, f"{poe}.9", 1)
        assert status.prettyPrint() == "notWritable" and int(index) == 1
        err, status, _, _ = await _pysnmp_set(sw, f"{poe}.1", 7)
        assert status.prettyPrint() == "wrongValue"
        assert not any(b.powered for b in cluster.boards)

        # a wrong community gets no answer at all
        err, status, _, _ = await _pysnmp_get(sw, [f"{poe}.1"], community="public", timeout=0.3)
        assert err is not None and "timeout" in str(err).lower()


def _snmp(tool: str, sw: dict, *args: str, community: str | None = None,
          env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        # Two retries: one UDP answer lost or late on a loaded machine (CI saw it) is not a
        # fault of the switch; a wrong community still ends in "Timeout", 1.5 s later.
        [tool, "-v2c", "-c", community or sw["community"], "-On", "-t", "0.5", "-r", "2",
         f"{sw['ip']}:{sw['snmp_port']}", *args],
        capture_output=True, text=True, timeout=20, env=env,
    )


async def test_snmp_with_net_snmp_tools(tmp_path: Path) -> None:
    env = {**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path / "snmp"), "MIBS": ""}
    async with running_cluster(tmp_path, boards=2) as (cluster, _key):
        sw = cluster.inventory()["switch"]
        poe = sw["poe_oid"]
        out = await asyncio.to_thread(_snmp, "snmpset", sw, f"{poe}.1", "i", "1", env=env)
        assert out.returncode == 0, out.stderr
        assert cluster.board("pi-1").powered
        out = await asyncio.to_thread(_snmp, "snmpwalk", sw, poe, env=env)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines == [f".{poe}.1 = INTEGER: 1", f".{poe}.2 = INTEGER: 2", f".{poe}.3 = INTEGER: 1"]
        out = await asyncio.to_thread(_snmp, "snmpbulkwalk", sw, sw["power_oid"], env=env)
        assert out.returncode == 0 and out.stdout.count("Gauge32") == 3
        out = await asyncio.to_thread(_snmp, "snmpget", sw, f"{poe}.1", f"{poe}.2", env=env)
        assert out.stdout.split("\n")[:2] == [f".{poe}.1 = INTEGER: 1", f".{poe}.2 = INTEGER: 2"]
        out = await asyncio.to_thread(_snmp, "snmpset", sw, f"{poe}.1", "i", "2", env=env)
        assert out.returncode == 0 and not cluster.board("pi-1").powered
        out = await asyncio.to_thread(_snmp, "snmpset", sw, f"{poe}.5", "i", "1", env=env)
        assert out.returncode != 0 and "notWritable" in out.stderr
        out = await asyncio.to_thread(_snmp, "snmpget", sw, f"{poe}.1", community="nope", env=env)
        assert out.returncode != 0 and "Timeout" in out.stderr


@pytest.mark.parametrize(
    ("vendor", "reading"),
    [
        ("cisco", ".1.3.6.1.4.1.9.9.402.1.2.1.9.1.2 = Gauge32: "),
        ("linksys", ".1.3.6.1.4.1.3955.1000.201.108.1.1.5.1.50 = INTEGER: "),
        ("dlink", '.1.3.6.1.4.1.171.11.153.1000.22.1.1.9.1.2 = STRING: "'),
    ],
)
async def test_vendor_power_readings(tmp_path: Path, vendor: str, reading: str) -> None:
    """Each switch profile answers port 2's power where that vendor does (Linksys: 48 + port), and
    the agent's SNMP client reads the same watts from the inventory's OID and offset."""
    from piseduce.agent.drivers.raspberry.snmp import SnmpClient, SwitchInfo

    env = {**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path / "snmp"), "MIBS": ""}
    async with running_cluster(tmp_path, boards=2, switch_vendor=vendor) as (cluster, _key):
        sw = cluster.inventory()["switch"]
        info = SwitchInfo(**{k: sw[k] for k in SwitchInfo.__dataclass_fields__})
        client = SnmpClient(timeout=0.5, retries=2)
        try:
            await client.set_power(info, 2, True)
            board = cluster.board("pi-2")
            await wait_until(lambda: board.system != "booting")  # a steady draw from here on
            oid = f"{sw['power_oid']}.{sw['power_oid_offset'] + 2}"
            out = await asyncio.to_thread(_snmp, "snmpget", sw, oid, env=env)
            assert out.stdout.startswith(reading), out.stdout + out.stderr
            watts = await client.port_power(info, 2)
            # Each reading of the board has ±40 mW of noise, and D-Link's string has 0.1 W steps;
            # a unit mistake (mW read as W, or the reverse) would be off by a factor of 1,000.
            assert watts is not None and watts == pytest.approx(board.power_mw() / 1000, abs=0.15)
            assert watts > 0 and await client.port_power(info, 1) == 0
        finally:
            client.close()


@BOTH_MODES
async def test_nfs_boot_and_ssh_login(tmp_path: Path, mode: str) -> None:
    async with running_cluster(tmp_path, boards=2, **mode_options(mode)) as (cluster, key):
        inv = cluster.inventory()
        board = cluster.board("pi-1")
        nfs_boot_folder(cluster, "pi-1")
        await power(inv, 1, on=True)
        assert board.system == "booting"
        async with await connect(cluster, "pi-1", key) as conn:
            assert board.system == "nfs"
            assert (await conn.run("hostname", check=True)).stdout == "nfspi\n"
            assert (await conn.run("cat /etc/hostname", check=True)).stdout == "nfspi\n"
            temp = int(text(await conn.run("cat /sys/class/thermal/thermal_zone0/temp", check=True)))
            assert 20000 < temp < 90000
            cpu = text(await conn.run("cat /proc/cpuinfo", check=True))
            assert f"Serial\t\t: 10000000{board.identity.serial}" in cpu and "Revision" in cpu
            result = await conn.run("piseduce-node info")
            info = json.loads(text(result).splitlines()[-1])
            assert info["ok"] and info["serial"] == board.identity.serial
            assert info["model"] == board.identity.model and info["card_size"] == 16 * 1024**3
            assert (await conn.run("no-such-command")).exit_status == 127
            # an interactive session: a prompt, the same commands, `exit`
            session = await conn.create_process(term_type=None)
            session.stdin.write("whoami\nexit 3\n")
            done = await session.wait(timeout=10)
            if mode == "in-process":
                assert done.stdout == "root@nfspi:~# root\nroot@nfspi:~# " and done.exit_status == 3
            else:  # Debian's bash reading commands from a pipe: no terminal, so no prompt
                assert done.stdout == "root\n" and done.exit_status == 3
        # any other user, or a key that is not authorized, is refused
        with pytest.raises(asyncssh.PermissionDenied):
            await connect(cluster, "pi-1", key, username="pi")
        other = asyncssh.generate_private_key("ssh-ed25519")
        other.write_private_key(tmp_path / "other")
        with pytest.raises(asyncssh.PermissionDenied):
            await connect(cluster, "pi-1", tmp_path / "other")

        # the real OpenSSH client, checking the host key strictly
        known = tmp_path / "known_hosts"
        host, port = board.address
        known.write_text(f"{known_hosts_name(host, port)} {inv['boards'][0]['nfs_host_key']}\n")
        cmd = ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={known}",
               "-o", "StrictHostKeyChecking=yes",
               "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key), "-p", str(port),
               f"root@{host}", "hostname"]
        out = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "nfspi\n"
        # another key than the NFS system's: strict checking refuses it
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        known.write_text(f"{known_hosts_name(host, port)} {other}\n")
        out = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=30)
        assert out.returncode == 255 and "host key" in out.stderr.lower()


async def test_netboot_systems_are_each_boards_own(tmp_path: Path) -> None:
    """Two boards on the shared NFS root: what one writes there is its own (a per-boot overlay),
    never the other's nor the host's; the host folders it needs are read-only."""
    require_real_mode()
    async with running_cluster(tmp_path, boards=2) as (cluster, key):
        for name, port in (("pi-1", 1), ("pi-2", 2)):
            nfs_boot_folder(cluster, name)
            await power(cluster.inventory(), port, on=True)
        async with await connect(cluster, "pi-1", key) as one, await connect(cluster, "pi-2", key) as two:
            out = await one.run("echo mine > /etc/marker && cat /etc/marker; touch /usr/x || echo ro;"
                                f" touch {Path(__file__).resolve()}.x || echo ro", check=True)
            assert text(out).splitlines() == ["mine", "ro", "ro"], out.stderr
            assert (await two.run("test -e /etc/marker")).exit_status == 1
            assert not (cluster.opts.nfs_root / "etc" / "marker").exists()
            assert not Path(f"{Path(__file__).resolve()}.x").exists()
            # each board its own card, as /dev/mmcblk0
            await one.run("printf board-one | dd of=/dev/mmcblk0 bs=512 seek=8 conv=notrunc status=none",
                          check=True)
        for name, expected in (("pi-1", b"board-one"), ("pi-2", bytes(9))):
            with open(cluster.board(name).card_path, "rb") as card:
                assert card.read(8192)[4096:4105] == expected, name
        # reboot: the overlay of the previous boot is gone
        pi1 = cluster.board("pi-1")
        boots = pi1.boots
        async with await connect(cluster, "pi-1", key) as one:
            await one.run("reboot")
        await wait_until(lambda: pi1.boots == boots + 1 and pi1.system == "nfs", 10)
        async with await connect(cluster, "pi-1", key) as one:
            assert (await one.run("test -e /etc/marker")).exit_status == 1
        # poweroff: the board stays without a system until its power is cycled
        pi2 = cluster.board("pi-2")
        async with await connect(cluster, "pi-2", key) as two:
            assert (await two.run("poweroff")).exit_status == 0
        await wait_until(lambda: pi2.system == "none", 10)
        assert pi2.powered and pi2.last_boot_error == "halted"
        await power(cluster.inventory(), 2, on=False)
        await power(cluster.inventory(), 2, on=True)
        async with await connect(cluster, "pi-2", key) as two:
            assert (await two.run("hostname")).stdout == "nfspi\n"


async def test_a_hostile_card_cannot_write_on_the_host(tmp_path: Path) -> None:
    """A card whose /etc/ssh is a symlink to a host folder: the board's first boot installs its host
    key inside the board, where the link points nowhere, never in the host's folder."""
    require_real_mode()
    from piseduce.node.disk import read_table
    from piseduce.node.fs import Ext4
    from piseduce.sim.images import FLAVORS

    bait = tmp_path / "host-folder"
    bait.mkdir()
    env = build_environment(tmp_path / "envs", "ubuntu", compress=None)
    image = tmp_path / "envs" / env["image"]
    table = read_table(image)
    assert table is not None
    Ext4(image, table.get(2).offset)._debugfs(
        ["rm /etc/ssh/sshd_config", "rmdir /etc/ssh/sshd_config.d", "rmdir /etc/ssh",
         f"symlink /etc/ssh {bait}"], write=True)
    async with running_cluster(tmp_path, boards=1) as (cluster, key):
        board = cluster.board("pi-1")
        with open(image, "rb") as src, open(board.card_path, "r+b") as card:
            shutil.copyfileobj(src, card)
        folder = cluster.opts.tftp_root / board.identity.serial
        folder.mkdir()
        (folder / "cmdline.txt").write_text(FLAVORS["ubuntu"]["cmdline"])
        await power(cluster.inventory(), 1, on=True)
        await wait_until(lambda: board.system in ("deployed", "none"), 15)
        assert list(bait.iterdir()) == []
        assert board.system == "none" and "Kernel panic" in board.last_boot_error, board.last_boot_error


async def test_empty_folder_does_not_boot(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, boards=1) as (cluster, key):
        board = cluster.board("pi-1")
        (cluster.opts.tftp_root / board.identity.serial).mkdir()
        await power(cluster.inventory(), 1, on=True)
        await wait_until(lambda: board.system == "none", 5)
        assert board.powered and "cmdline.txt" in board.last_boot_error
        with pytest.raises(OSError):
            await asyncssh.connect(*board.address, username="root", client_keys=[str(key)],
                                   known_hosts=None, connect_timeout=2)


@BOTH_MODES
async def test_power_off_kills_ssh(tmp_path: Path, mode: str) -> None:
    async with running_cluster(tmp_path, boards=2, **mode_options(mode)) as (cluster, key):
        inv = cluster.inventory()
        nfs_boot_folder(cluster, "pi-2")
        await power(inv, 2, on=True)
        conn = await connect(cluster, "pi-2", key)
        proc = await conn.create_process("cat")  # an interactive-ish session left open
        await power(inv, 2, on=False)
        await asyncio.wait_for(conn.wait_closed(), 5)
        proc.close()
        board = cluster.board("pi-2")
        assert board.system == "off" and board.power_mw() == 0
        with pytest.raises(OSError):
            await asyncssh.connect(*board.address, username="root", client_keys=[str(key)],
                                   known_hosts=None, connect_timeout=2)
        # powered again, it boots again on the same port
        await power(inv, 2, on=True)
        async with await connect(cluster, "pi-2", key) as conn2:
            assert (await conn2.run("hostname")).stdout == "nfspi\n"


async def test_fail_next_boots_and_reboot(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, boards=1) as (cluster, key):
        inv = cluster.inventory()
        board = cluster.board("pi-1")
        nfs_boot_folder(cluster, "pi-1")
        board.fail_next_boots = 1
        await power(inv, 1, on=True)
        await wait_until(lambda: board.system == "none", 5)
        assert board.fail_next_boots == 0
        await power(inv, 1, on=False)
        await power(inv, 1, on=True)
        async with await connect(cluster, "pi-1", key) as conn:
            assert board.system == "nfs" and board.boots == 2
            await conn.run("reboot")
        await wait_until(lambda: board.boots == 3 and board.system == "nfs", 5)
        board.never_boot = True
        await power(inv, 1, on=False)
        await power(inv, 1, on=True)
        await wait_until(lambda: board.system == "none", 5)


DROPPED = (asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.ChannelOpenError, BrokenPipeError,
           ConnectionError)


async def _cut_before_it_reports(conn: asyncssh.SSHClientConnection, command: str) -> tuple[float, str]:
    """Runs a command the drop knob dooms: the connection must end before any exit status comes
    back. Returns how long the command ran and what it printed until then."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    process = await conn.create_process(command)
    try:
        result = await process.wait(timeout=60)
    except DROPPED:
        return loop.time() - started, ""
    assert result.exit_status is None and result.exit_signal is None, (command, result.exit_status)
    return loop.time() - started, str(result.stdout)


@BOTH_MODES
async def test_ssh_drop_and_snmp_loss_knobs(tmp_path: Path, mode: str) -> None:
    """At ssh_drop_rate 1.0 logging in works, and every command is cut before it can report, a
    short one as a long one (cut in the drop window, not when it ends); at snmp_loss 1.0 the
    switch never answers."""
    async with running_cluster(tmp_path, boards=1, ssh_drop_rate=1.0, snmp_loss=1.0,
                               **mode_options(mode)) as (cluster, key):
        sw = cluster.inventory()["switch"]
        err, _, _, _ = await _pysnmp_get(sw, [f"{sw['poe_oid']}.1"], timeout=0.3)
        assert err is not None
        cluster.switch.options.loss = 0.0
        nfs_boot_folder(cluster, "pi-1")
        await power(cluster.inventory(), 1, on=True)
        commands = ["hostname", "true", "piseduce-node info"]
        if mode == "real":  # (the in-process boards have no sleep)
            commands += ["sleep 30; echo finished"]
        for command in commands * 2:
            async with await connect(cluster, "pi-1", key) as conn:  # the login itself is never cut
                took, printed = await _cut_before_it_reports(conn, command)
            assert "finished" not in printed
            # the drop window is 0.3 s: a bound that a loaded machine cannot reach, far below 30 s
            assert took < 10, (command, took)


def test_the_drop_knobs_session_wrapper_runs_what_sshd_would(tmp_path: Path) -> None:
    """A session the knob spares runs what sshd runs (session.c: `sh -c COMMAND`, or `-sh` for a
    login shell); a doomed one is cut in the drop window; off a board it touches nothing but its
    own session's processes."""
    command = {"SSH_ORIGINAL_COMMAND": "ls -l"}
    assert session_argv(command, "/bin/bash") == ["/bin/bash", "bash", "-c", "ls -l"] and not command
    assert session_argv({}, "/bin/bash") == ["/bin/bash", "-bash"]
    assert session_argv({"SSH_ORIGINAL_COMMAND": "internal-sftp"}, "/bin/sh")[-1] == SFTP_SERVER
    env = {"PATH": os.environ["PATH"], "SHELL": "/bin/sh",
           "SSH_ORIGINAL_COMMAND": 'echo "[$SSH_ORIGINAL_COMMAND]" "$0"; exit 3'}
    argv = [sys.executable, "-I", drop_session.__file__]
    spared = subprocess.run([*argv, "--rate", "0"], env=env, capture_output=True, text=True, timeout=30,
                            start_new_session=True)
    assert (spared.returncode, spared.stdout) == (3, "[] sh\n"), spared.stderr
    env["SSH_ORIGINAL_COMMAND"] = "sleep 30; echo finished"
    started = time.monotonic()
    doomed = subprocess.run([*argv, "--rate", "1", "--seed", "7"], env=env, capture_output=True, text=True,
                            timeout=30, start_new_session=True)
    assert time.monotonic() - started < 10 and doomed.returncode < 0 and "finished" not in doomed.stdout


async def test_identity_and_host_keys_persist(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, boards=2) as (cluster, _):
        first = cluster.inventory()["boards"]
    async with running_cluster(tmp_path, boards=3) as (cluster, _):
        again = cluster.inventory()["boards"]
    for a, b in zip(first, again[:2], strict=True):
        # (a deployed system's host key is its card's: test_host_keys_redeploy.py)
        assert (a["serial"], a["mac"], a["nfs_host_key"]) == (b["serial"], b["mac"], b["nfs_host_key"])
        assert "host_key" not in b
    assert len({b["serial"] for b in again}) == 3


async def test_two_hundred_boards(tmp_path: Path) -> None:
    opts = ClusterOptions(boards=200, state_dir=tmp_path / "s", tftp_root=tmp_path / "t",
                          nfs_root=tmp_path / "n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with RpiCluster(opts) as cluster:
        assert loop.time() - started < 20
        sw = cluster.inventory()["switch"]
        rows = await _pysnmp_walk(sw, sw["poe_oid"])
        assert len(rows) == 201
        assert len({(b["ip"], b["ssh_port"]) for b in cluster.inventory()["boards"]}) == 200


def text(result: asyncssh.SSHCompletedProcess) -> str:
    assert isinstance(result.stdout, str)
    return result.stdout


def raw(result: asyncssh.SSHCompletedProcess) -> bytes:
    assert isinstance(result.stdout, bytes)
    return result.stdout


def _helper(lines: str) -> dict:
    return json.loads(lines.strip().splitlines()[-1])


@BOTH_MODES
async def test_deploy_path_boots_the_written_system(tmp_path: Path, mode: str) -> None:
    env = build_environment(tmp_path / "envs", "raspios", compress="zst")
    image = (tmp_path / "envs" / env["image"]).read_bytes()
    async with running_cluster(tmp_path, boards=1, **mode_options(mode)) as (cluster, key):
        inv = cluster.inventory()
        board = cluster.board("pi-1")
        folder = nfs_boot_folder(cluster, "pi-1")
        await power(inv, 1, on=True)
        user_key = asyncssh.generate_private_key("ssh-ed25519")
        agent_pub = Path(str(key) + ".pub").read_text().strip()
        async with await connect(cluster, "pi-1", key) as conn:
            sha = hashlib.sha256(image).hexdigest()
            r = await conn.run(f"piseduce-node write-image --sha256 {sha} --size {len(image)}", input=image,
                               encoding=None)
            assert r.exit_status == 0, r.stdout
            assert _helper(raw(r).decode())["verified"] is True
            r = await conn.run("piseduce-node partition --size 2gb")
            assert _helper(text(r))["root_size"] == 2 * 1024**3
            settings = {"hostname": "pi-1", "user": "pi", "password": "s3cret-pw",
                        "ssh_keys": [agent_pub, user_key.export_public_key().decode().strip()]}
            r = await conn.run("piseduce-node configure", input=json.dumps(settings))
            assert _helper(text(r))["ok"] is True, r.stdout
            r = await conn.run("piseduce-node export-boot", encoding=None)
            assert r.exit_status == 0
            shutil.rmtree(folder)
            folder.mkdir()
            with tarfile.open(fileobj=io.BytesIO(raw(r))) as tar:
                tar.extractall(folder, filter="data")
            await conn.run("reboot")
        assert "root=PARTUUID=" in (folder / "cmdline.txt").read_text()
        await wait_until(lambda: board.system == "deployed", 10)
        async with await connect(cluster, "pi-1", key, nfs=False) as conn:
            assert (await conn.run("hostname")).stdout == "pi-1\n"
            assert (await conn.run("whoami")).stdout == "root\n"
            assert (await conn.run("piseduce-node info")).exit_status == 127
        host_key = asyncssh.import_public_key(await served_host_key(*board.address))
        line = host_key.export_public_key().decode().strip()
        host, port = board.address
        known = asyncssh.import_known_hosts(f"{known_hosts_name(host, port)} {line}\n")
        async with asyncssh.connect(host, port, username="pi", password="s3cret-pw",
                                    client_keys=None, known_hosts=known) as conn:
            assert (await conn.run("whoami")).stdout == "pi\n"
        async with asyncssh.connect(host, port, username="pi", client_keys=[user_key],
                                    known_hosts=known) as conn:
            assert text(await conn.run("id")).startswith("uid=1000(pi)")
        for user, password in (("pi", "wrong"), ("root", "s3cret-pw")):
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect(host, port, username=user, password=password,
                                       client_keys=None, known_hosts=known)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_cli_runs_until_signal(tmp_path: Path, sig: signal.Signals) -> None:
    key_path = make_agent_key(tmp_path)
    inventory_file = tmp_path / "inventory.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piseduce.cli", "sim", "rpi", "--boards", "2",
        "--state-dir", str(tmp_path / "s"),
        "--tftp-root", str(tmp_path / "tftp"), "--nfs-root", str(tmp_path / "nfs"), "--time-scale", "40",
        "--community", "c0mm", "--inventory-file", str(inventory_file), "--agent-pubkey", f"{key_path}.pub",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until(inventory_file.exists, 30, 0.05)
        inv = json.loads(inventory_file.read_text())
        assert inv["switch"]["community"] == "c0mm" and len(inv["boards"]) == 2
        board = inv["boards"][1]
        shutil.copytree(tmp_path / "tftp" / "rpiboot_uboot", tmp_path / "tftp" / board["serial"])
        await power(inv, 2, on=True)
        host_key = asyncssh.import_public_key(board["nfs_host_key"]).export_public_key().decode().strip()
        name = known_hosts_name(board["ip"], board["ssh_port"])
        known = asyncssh.import_known_hosts(f"{name} {host_key}\n")
        for _ in range(100):
            try:
                conn = await asyncssh.connect(board["ip"], board["ssh_port"], username="root",
                                              client_keys=[str(key_path)], known_hosts=known)
                break
            except OSError:
                await asyncio.sleep(0.05)
        async with conn:
            assert text(await conn.run("hostname")) == "nfspi\n"
            proc.send_signal(sig)
            await asyncio.wait_for(conn.wait_closed(), 10)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_power_and_temperature_follow_activity(tmp_path: Path) -> None:
    # time_scale 1000: the 120 s thermal time constant is 0.12 s of real time
    async with running_cluster(tmp_path, boards=1, time_scale=1000, boot_delay=20) as (cluster, key):
        board = cluster.board("pi-1")
        off_temp = board.temperature_mc()
        nfs_boot_folder(cluster, "pi-1")
        await power(cluster.inventory(), 1, on=True)
        await wait_until(lambda: board.system == "nfs", 5)
        await asyncio.sleep(0.6)
        idle_mw, idle_temp = board.power_mw(), board.temperature_mc()
        assert 2500 < idle_mw < 3000 and 40000 < idle_temp < 52000 and idle_temp > off_temp
        busy = object()
        board.helper_started(busy)  # type: ignore[arg-type]
        await asyncio.sleep(0.6)
        busy_mw, busy_temp = board.power_mw(), board.temperature_mc()
        board.helper_finished(busy)  # type: ignore[arg-type]
        assert busy_mw > idle_mw + 2000 and busy_temp > idle_temp + 10000
        sw = cluster.inventory()["switch"]
        _, _, _, binds = await _pysnmp_get(sw, [f"{sw['power_oid']}.1"])
        assert 2500 < int(binds[0][1]) < 3000
        await power(cluster.inventory(), 1, on=False)
        await asyncio.sleep(0.6)
        assert board.power_mw() == 0 and board.temperature_mc() < 32000
