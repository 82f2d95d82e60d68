"""Unit and integration tests of the raspberry driver's parts: keys and form validation, TFTP
boot folders, SNMP through the simulated switch, pinned SSH host keys, the admin routes."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import tarfile
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from helpers.agent_helpers import ADMIN
from helpers.raspberry_helpers import USER, Ctx, add_environment, agent_config, sessions_for, user_key
from helpers.rpi_fixtures import running_cluster
from helpers.switch_fixtures import Ports
from piseduce.agent.drivers.base import InvalidParams, NodeView, ReservationView, StepError
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry import tftp
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.snmp import MasterPortRefused, SnmpClient, SnmpError, SwitchInfo
from piseduce.agent.drivers.raspberry.steps import ensure_nfs_key, image_path

# ---------------------------------------------------------------- keys, passwords, form


def test_agent_key_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "agent"
    key = sshc.load_or_create_agent_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "agent.pub").read_text().startswith("ssh-ed25519 ")
    again = sshc.load_or_create_agent_key(path)
    assert sshc.public_key_line(again) == sshc.public_key_line(key)


def test_public_key_parsing(tmp_path: Path) -> None:
    _, ed = user_key(tmp_path, "ed")
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048).export_public_key().decode().strip()
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_public_key().decode().strip()
    for line in (ed, rsa, ecdsa):
        sshc.parse_public_key(line)
    for bad in (
        "",
        "ssh-ed25519",
        "ssh-ed25519 AAAAnotbase64!!",
        f'command="rm -rf /" {ed}',
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        ed.replace("ssh-ed25519", "ssh-rsa"),
    ):
        with pytest.raises(ValueError):
            sshc.parse_public_key(bad)
    assert sshc.same_key(ed, ed.rsplit(" ", 1)[0] + " other-comment")
    assert not sshc.same_key(ed, rsa)


def _reservation(node: str = "pi-1") -> ReservationView:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return ReservationView(
        id=1,
        node=NodeView(name=node),
        owner="alice@example.org",
        bin="",
        start=now,
        end=now,
        status="configuring",
    )


async def test_deploy_form_and_validation(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    sessions = sessions_for(config)
    add_environment(
        sessions,
        {
            "name": "raspios",
            "image": "r.img.gz",
            "size": 1,
            "sector_start": 8192,
            "ssh_user": "pi",
            "checksum": "0" * 64,
        },
    )
    driver = RaspberryDriver(config, sessions)
    form = {f.name: f for f in await driver.deploy_form(_reservation(), None)}
    assert form["environment"].choices == ["raspios"]
    assert form["part_size"].choices == ["whole", "2gb", "5gb", "10gb"]
    assert form["os_password"].kind == "password" and form["ssh_keys"].kind == "ssh_keys"

    _, ed = user_key(tmp_path)
    params = await driver.validate_deploy(
        _reservation(), {"environment": "raspios", "ssh_keys": [ed + "\n\n"]}, None
    )
    assert params["part_size"] == "whole" and params["ssh_keys"] == [ed]
    # A generated password: long and random.
    assert len(params["os_password"]) >= 16
    other = await driver.validate_deploy(_reservation(), {"environment": "raspios"}, None)
    assert other["os_password"] != params["os_password"]

    bad: list[tuple[dict[str, Any], str]] = [
        ({"environment": "nope"}, "environment"),
        ({}, "environment"),
        ({"environment": "raspios", "part_size": "3gb"}, "part_size"),
        ({"environment": "raspios", "os_password": "short"}, "os_password"),
        ({"environment": "raspios", "os_password": "line\nbreak-password"}, "os_password"),
        ({"environment": "raspios", "ssh_keys": ["not a key"]}, "ssh_keys"),
        ({"environment": "raspios", "ssh_keys": [f"no-pty {ed}"]}, "ssh_keys"),
    ]
    for given, field in bad:
        with pytest.raises(InvalidParams) as err:
            await driver.validate_deploy(_reservation(), given, None)
        assert err.value.field == field
    await driver.close()


def test_processes_are_declared_with_scaled_timeouts(tmp_path: Path) -> None:
    config = agent_config(tmp_path, timeout_scale=0.5)
    driver = RaspberryDriver(config, sessions_for(config))
    procs = driver.processes()
    assert set(procs) == {"deploy", "redeploy", "destroy", "reboot", "bootfiles", "register_env"}
    deploy = [s.name for s in procs["deploy"].steps]
    assert deploy == [
        "boot_nfs",
        "power_cycle",
        "wait_nfs",
        "write_image",
        "verify",
        "partition",
        "configure",
        "boot_deployed",
        "reboot",
        "wait_deployed",
        "check_login",
    ]
    wait = procs["deploy"].steps[2]
    assert wait.reboot_after == 75 and wait.fail_after == 150 and wait.done is not None
    assert [s.name for s in procs["destroy"].steps] == [
        "boot_nfs",
        "power_cycle",
        "wait_nfs",
        "wipe",
        "remove_boot",
        "power_off",
    ]
    assert "not wiped" in procs["destroy"].steps[2].title
    assert procs["destroy"].done_status == "ended"


def test_image_path_stays_inside_env_path(tmp_path: Path) -> None:
    (tmp_path / "envs").mkdir()
    (tmp_path / "secret").write_text("x")
    assert image_path(tmp_path / "envs", "a/b.img") == (tmp_path / "envs" / "a" / "b.img").resolve()
    for bad in ("../secret", "/etc/passwd", "", ".", "a/../../secret"):
        with pytest.raises(ValueError):
            image_path(tmp_path / "envs", bad)
    (tmp_path / "envs" / "link.img").symlink_to(tmp_path / "secret")
    with pytest.raises(ValueError):
        image_path(tmp_path / "envs", "link.img")


def test_nfs_root_gets_the_agent_key_once(tmp_path: Path) -> None:
    (tmp_path / "nfs" / "root").mkdir(parents=True)
    _, pub = user_key(tmp_path)
    assert ensure_nfs_key(tmp_path / "nfs", pub)
    assert not ensure_nfs_key(tmp_path / "nfs", pub)
    auth = tmp_path / "nfs" / "root" / ".ssh" / "authorized_keys"
    assert auth.read_text().count("ssh-ed25519") == 1
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert not ensure_nfs_key(tmp_path / "absent", pub)


# ---------------------------------------------------------------- TFTP boot folders


def _template(root: Path) -> None:
    t = root / tftp.TEMPLATE
    t.mkdir(parents=True)
    (t / "cmdline.txt").write_text("console=tty1 root=/dev/nfs nfsroot=10.0.0.1:/nfs/raspi rw ip=dhcp\n")
    (t / "start4.elf").write_bytes(b"\x7fELF")


def _tar(entries: list[tuple[str, bytes | None, str]]) -> bytes:
    """(name, data, kind) with kind file | dir | symlink (data = target) | hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = (data or b"").decode()
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def test_boot_folder_lifecycle(tmp_path: Path) -> None:
    _template(tmp_path)
    tftp.set_nfs_boot(tmp_path, "a1b2c3d4")
    assert tftp.is_nfs_boot(tmp_path, "a1b2c3d4")
    folder = tmp_path / "a1b2c3d4"
    assert not folder.is_symlink() and (folder / "start4.elf").read_bytes() == b"\x7fELF"

    archive = tmp_path / "boot.tar"
    archive.write_bytes(
        _tar(
            [
                ("./", None, "dir"),
                ("./cmdline.txt", b"root=PARTUUID=abcd-02 rootwait\n", "file"),
                ("./overlays/", None, "dir"),
                ("./overlays/x.dtbo", b"dtbo", "file"),
            ]
        )
    )
    assert tftp.install_boot_archive(tmp_path, "a1b2c3d4", archive) == 2
    assert not tftp.is_nfs_boot(tmp_path, "a1b2c3d4")
    assert (folder / "overlays" / "x.dtbo").read_bytes() == b"dtbo"
    assert not (folder / "start4.elf").exists()
    # No staging folders are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1b2c3d4", "boot.tar", tftp.TEMPLATE]

    tftp.remove_boot(tmp_path, "a1b2c3d4")
    assert not folder.exists()
    tftp.remove_boot(tmp_path, "a1b2c3d4")  # idempotent


@pytest.mark.parametrize(
    "entries, reason",
    [
        ([("/etc/cron.d/evil", b"x", "file"), ("cmdline.txt", b"root=/dev/mmcblk0p2", "file")], "absolute"),
        ([("../../evil", b"x", "file"), ("cmdline.txt", b"root=/dev/mmcblk0p2", "file")], "leaving"),
        ([("cmdline.txt", b"root=/dev/mmcblk0p2", "file"), ("link", b"/etc/shadow", "symlink")], "link"),
        ([("cmdline.txt", b"root=/dev/mmcblk0p2", "file"), ("hard", b"cmdline.txt", "hardlink")], "link"),
        ([("cmdline.txt", b"root=/dev/nfs nfsroot=10.0.0.1:/nfs/raspi", "file")], "NFS root"),
        ([("config.txt", b"x", "file")], "cmdline.txt"),
    ],
)
def test_hostile_boot_archives_change_nothing(tmp_path: Path, entries: list[Any], reason: str) -> None:
    _template(tmp_path)
    tftp.set_nfs_boot(tmp_path, "a1b2c3d4")
    archive = tmp_path / "boot.tar"
    archive.write_bytes(_tar(entries))
    with pytest.raises(tftp.BootFilesError, match=reason):
        tftp.install_boot_archive(tmp_path, "a1b2c3d4", archive)
    assert tftp.is_nfs_boot(tmp_path, "a1b2c3d4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1b2c3d4", "boot.tar", tftp.TEMPLATE]
    assert not (tmp_path.parent / "evil").exists()


def test_bad_serials_and_missing_template(tmp_path: Path) -> None:
    for bad in ("", "../x", "a/b", tftp.TEMPLATE, "ab"):
        with pytest.raises(tftp.BootFilesError):
            tftp.boot_dir(tmp_path, bad)
    with pytest.raises(tftp.BootFilesError, match="template"):
        tftp.set_nfs_boot(tmp_path, "a1b2c3d4")


# ---------------------------------------------------------------- SNMP


async def test_snmp_power_on_off_status(switch: tuple[Ports, SwitchInfo]) -> None:
    ports, sw = switch
    client = SnmpClient(timeout=0.3, retries=2)
    try:
        await client.set_power(sw, 2, True)
        assert ports.on[2] and await client.port_status(sw, 2) == "on"
        assert await client.port_power(sw, 2) == pytest.approx(3.4)
        await client.set_power(sw, 3, True)
        await client.set_power(sw, 2, False)
        assert await client.ports_status(sw) == {1: "off", 2: "off", 3: "on", 4: "off", 5: "off"}
        ports.on[5] = True
        with pytest.raises(MasterPortRefused):
            await client.set_power(sw, 5, False)
        assert ports.on[5]
        with pytest.raises(SnmpError, match="ports 1..5"):
            await client.set_power(sw, 6, True)
        wrong = SwitchInfo(
            name="sw1", ip="127.0.0.1", snmp_port=sw.snmp_port, community="guess", port_count=5
        )
        with pytest.raises(SnmpError, match="sw1"):
            await client.port_status(wrong, 1)
    finally:
        client.close()


async def test_snmp_drives_the_simulated_cluster(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, boards=3, time_scale=100, boot_delay=20) as (cluster, _):
        inv = cluster.inventory()["switch"]
        sw = SwitchInfo(**{k: inv[k] for k in SwitchInfo.__dataclass_fields__})
        client = SnmpClient(timeout=0.5, retries=2)
        try:
            assert sw.master_port == 4
            status = await client.ports_status(sw)
            assert [status[p] for p in (1, 2, 3)] == ["off", "off", "off"]
            await client.set_power(sw, 2, True)
            assert cluster.board("pi-2").powered and not cluster.board("pi-1").powered
            assert await client.port_status(sw, 2) == "on"
            watts = await client.port_power(sw, 2)
            assert watts is not None and watts > 0
            await client.set_power(sw, 2, False)
            assert not cluster.board("pi-2").powered and await client.port_status(sw, 2) == "off"
            with pytest.raises(MasterPortRefused):
                await client.set_power(sw, sw.master_port, False)
            assert (await client.ports_status(sw))[sw.master_port] == "on"
        finally:
            client.close()


# ---------------------------------------------------------------- pinned SSH host keys


class _Server(asyncssh.SSHServer):
    def __init__(self, allowed: str) -> None:
        self.allowed = allowed

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == "root" and sshc.same_key(sshc.public_key_line(key), self.allowed)


async def _serve(agent_pub: str, hostname: str) -> tuple[asyncssh.SSHAcceptor, asyncssh.SSHKey]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")

    async def handle(proc: asyncssh.SSHServerProcess[str]) -> None:
        proc.stdout.write(hostname + "\n" if proc.command == "hostname" else "")
        proc.exit(0 if proc.command == "hostname" else 127)

    acceptor = await asyncssh.create_server(
        lambda: _Server(agent_pub), "127.0.0.1", 0, server_host_keys=[host_key], process_factory=handle
    )
    return acceptor, host_key


async def test_netboot_host_key_is_pinned_on_first_use_then_enforced(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    driver = RaspberryDriver(config, sessions_for(config))
    wait = driver.processes()["deploy"].steps[2]
    assert wait.done is not None
    server, host_key = await _serve(driver.ops.agent_pubkey, "nfspi")
    port = server.sockets[0].getsockname()[1]
    node = NodeView(
        name="pi-1",
        ip="127.0.0.1",
        attrs={"switch": "sw1", "port": 1, "serial": "a1b2c3d4", "ssh_port": port},
    )
    try:
        ctx = Ctx(config, node)
        assert await wait.done(ctx)
        pinned = ctx.saved["nfs_host_key"]
        assert sshc.same_key(pinned, host_key.export_public_key().decode())
        assert any("first use" in m and level == "warning" for level, m in ctx.events)
        # Pinned now: the same key passes without a new event.
        ctx2 = Ctx(config, NodeView(name="pi-1", ip="127.0.0.1", attrs=dict(node.attrs)))
        assert await wait.done(ctx2) and not ctx2.saved

        # Another machine answering with another key: refused with a clear message.
        server.close()
        impostor, _ = await _serve(driver.ops.agent_pubkey, "nfspi")
        node.attrs["ssh_port"] = impostor.sockets[0].getsockname()[1]
        with pytest.raises(StepError, match="host key .* changed"):
            await wait.done(Ctx(config, NodeView(name="pi-1", ip="127.0.0.1", attrs=dict(node.attrs))))
        impostor.close()
        # Nobody listening: simply not up yet.
        assert not await wait.done(Ctx(config, NodeView(name="pi-1", ip="127.0.0.1", attrs=dict(node.attrs))))
    finally:
        server.close()
        await driver.close()


async def test_first_use_does_not_pin_a_system_that_is_not_the_netboot_one(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    driver = RaspberryDriver(config, sessions_for(config))
    wait = driver.processes()["deploy"].steps[2]
    assert wait.done is not None
    server, _ = await _serve(driver.ops.agent_pubkey, "pi-1")  # the old deployed system, still up
    node = NodeView(
        name="pi-1",
        ip="127.0.0.1",
        attrs={
            "switch": "sw1",
            "port": 1,
            "serial": "a1b2c3d4",
            "ssh_port": server.sockets[0].getsockname()[1],
        },
    )
    try:
        ctx = Ctx(config, node)
        assert not await wait.done(ctx)
        assert ctx.saved == {}
    finally:
        server.close()
        await driver.close()


# ---------------------------------------------------------------- admin routes


async def test_admin_switches_and_ports(api: tuple[httpx.AsyncClient, Ports, SwitchInfo, Path]) -> None:
    client, ports, sw, _ = api
    body = {
        "name": "sw1",
        "ip": "127.0.0.1",
        "snmp_port": sw.snmp_port,
        "community": "s3cret",
        "port_count": 5,
        "master_port": 5,
        "power_oid": "1.3.6.1.4.1.9.9.402.1.2.1.9.1",
    }
    assert (await client.post("/api/admin/switches", json=body, headers=USER)).status_code == 403
    r = await client.post("/api/admin/switches", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert "community" not in r.json() and r.json()["community_set"] is True
    assert (await client.post("/api/admin/switches", json=body, headers=ADMIN)).status_code == 409
    for bad in ({"ip": "10.0.0.1; reboot"}, {"poe_oid": "1.3.x"}, {"master_port": 9}, {"name": "../sw"}):
        r = await client.post("/api/admin/switches", json={**body, "name": "sw2", **bad}, headers=ADMIN)
        assert r.status_code == 422, (bad, r.text)
    assert [s["name"] for s in (await client.get("/api/admin/switches", headers=ADMIN)).json()] == ["sw1"]

    r = await client.post("/api/admin/switches/sw1/ports/2/on", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "on" and ports.on[2]
    ports.on[5] = True
    r = await client.post("/api/admin/switches/sw1/ports/5/off", headers=ADMIN)
    assert r.status_code == 409 and "master" in r.json()["detail"] and ports.on[5]
    assert (await client.post("/api/admin/switches/sw1/ports/7/on", headers=ADMIN)).status_code == 422
    assert (await client.post("/api/admin/switches/nope/ports/1/on", headers=ADMIN)).status_code == 404

    listing = (await client.get("/api/admin/switches/sw1/ports", headers=ADMIN)).json()
    assert [(p["port"], p["status"], p["master"]) for p in listing] == [
        (1, "off", False),
        (2, "on", False),
        (3, "off", False),
        (4, "off", False),
        (5, "on", True),
    ]
    assert listing[1]["power_w"] == pytest.approx(3.4)

    r = await client.put(
        "/api/admin/switches/sw1", json={**body, "port_count": 6, "master_port": 6}, headers=ADMIN
    )
    assert r.status_code == 200 and r.json()["port_count"] == 6
    # An update without the community keeps the stored one (the switch still answers) ...
    edit = {k: v for k, v in body.items() if k != "community"}
    r = await client.put("/api/admin/switches/sw1", json={**edit, "power_oid_offset": 0}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["port_count"] == 5 and r.json()["community_set"]
    assert (await client.get("/api/admin/switches/sw1/ports", headers=ADMIN)).status_code == 200
    # ... and one with a community replaces it (this one is wrong: the switch stops answering).
    r = await client.put("/api/admin/switches/sw1", json={**edit, "community": "guess"}, headers=ADMIN)
    assert r.status_code == 200
    assert (await client.get("/api/admin/switches/sw1/ports", headers=ADMIN)).status_code == 502
    # A change that would leave a node outside the ports, or on the uplink, is refused.
    node = {"name": "pi-3", "ip": "10.0.0.3", "switch": "sw1", "port": 3, "model": "RPI4B",
            "serial": "ab12cd34"}
    assert (await client.post("/api/admin/nodes", json=node, headers=ADMIN)).status_code == 201
    for bad in ({"port_count": 2, "master_port": 0}, {"master_port": 3}):
        r = await client.put("/api/admin/switches/sw1", json={**edit, **bad}, headers=ADMIN)
        assert r.status_code == 409 and "pi-3 (port 3)" in r.json()["detail"], r.text
    assert (await client.get("/api/admin/switches/sw1", headers=ADMIN)).json()["port_count"] == 5
    r = await client.put("/api/admin/switches/sw1", json={**edit, "name": "sw9"}, headers=ADMIN)
    assert r.status_code == 422 and "no renaming" in r.json()["detail"]
    r = await client.put("/api/admin/switches/sw9", json={**edit, "name": "sw9"}, headers=ADMIN)
    assert r.status_code == 404 and r.json()["detail"] == "switch sw9 not found"
    assert (await client.delete("/api/admin/nodes/pi-3", headers=ADMIN)).status_code == 200
    assert (await client.delete("/api/admin/switches/sw1", headers=ADMIN)).status_code == 200
    assert (await client.get("/api/admin/switches/sw1", headers=ADMIN)).status_code == 404


async def test_admin_switch_that_does_not_answer(
    api: tuple[httpx.AsyncClient, Ports, SwitchInfo, Path],
) -> None:
    client, _, sw, _ = api
    body = {
        "name": "mute",
        "ip": "127.0.0.1",
        "snmp_port": sw.snmp_port,
        "community": "wrong",
        "port_count": 5,
    }
    assert (await client.post("/api/admin/switches", json=body, headers=ADMIN)).status_code == 201
    r = await client.get("/api/admin/switches/mute/ports", headers=ADMIN)
    assert r.status_code == 502 and "mute" in r.json()["detail"]


async def test_admin_environments(
    api: tuple[httpx.AsyncClient, Ports, SwitchInfo, Path], tmp_path: Path
) -> None:
    import hashlib

    client, _, _, env_dir = api
    (env_dir / "tiny.img.gz").write_bytes(b"image bytes")
    (tmp_path / "outside.img").write_bytes(b"x")
    body = {"name": "tiny", "image": "tiny.img.gz", "size": 1024, "sector_start": 8192, "ssh_user": "pi"}
    r = await client.post("/api/admin/environments", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["checksum"] == hashlib.sha256(b"image bytes").hexdigest()
    assert (await client.post("/api/admin/environments", json=body, headers=ADMIN)).status_code == 409
    for bad in (
        {"image": "../outside.img"},
        {"image": str(tmp_path / "outside.img")},
        {"image": "missing.img"},
        {"ssh_user": "root;id"},
        {"checksum": "abc"},
    ):
        r = await client.post("/api/admin/environments", json={**body, "name": "t2", **bad}, headers=ADMIN)
        assert r.status_code == 422, (bad, r.text)
    r = await client.put("/api/admin/environments/tiny", json={**body, "state": "disabled"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "disabled"
    r = await client.put("/api/admin/environments/tiny", json={**body, "name": "renamed"}, headers=ADMIN)
    assert r.status_code == 422 and "no renaming" in r.json()["detail"]
    r = await client.put("/api/admin/environments/ghost", json={**body, "name": "ghost"}, headers=ADMIN)
    assert r.status_code == 404 and r.json()["detail"] == "environment ghost not found"

    (env_dir / "other.img.xz").write_bytes(b"other")
    (env_dir / "other.img.xz.json").write_text(
        json.dumps(
            {
                "name": "other",
                "image": "other.img.xz",
                "size": 2048,
                "sector_start": 532480,
                "ssh_user": "ubuntu",
            }
        )
    )
    (env_dir / "broken.json").write_text(json.dumps({"name": "broken", "image": "../outside.img"}))
    r = await client.post("/api/admin/environments/scan", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ["other"] and "broken.json" in r.json()["skipped"]
    names = [e["name"] for e in (await client.get("/api/admin/environments", headers=ADMIN)).json()]
    assert names == ["other", "tiny"]
    assert (await client.delete("/api/admin/environments/tiny", headers=ADMIN)).status_code == 200
    assert (env_dir / "tiny.img.gz").exists()


async def test_ssh_runs_argument_lists_quoted(tmp_path: Path) -> None:
    """What reaches the server is one shell-quoted string per argument list."""
    seen: list[str] = []
    key = asyncssh.generate_private_key("ssh-ed25519")
    host_key = asyncssh.generate_private_key("ssh-ed25519")

    async def handle(proc: asyncssh.SSHServerProcess[str]) -> None:
        seen.append(proc.command or "")
        data = await proc.stdin.read()
        proc.stdout.write(
            '{"progress": 50, "message": "half"}\n' + json.dumps({"ok": True, "got": len(data)}) + "\n"
        )
        proc.exit(0)

    acceptor = await asyncssh.create_server(
        lambda: _Server(sshc.public_key_line(key)),
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        process_factory=handle,
    )
    port = acceptor.sockets[0].getsockname()[1]
    try:
        conn, offered = await sshc.connect(
            sshc.Target("127.0.0.1", port, "root", key, pinned=host_key.export_public_key().decode())
        )
        async with conn:
            res = await sshc.run_helper(
                conn, ["piseduce-node", "configure", "x; reboot", "$(id)"], stdin='{"password": "p4ss word"}'
            )
        assert res == {"ok": True, "got": 25}
        assert seen == ["piseduce-node configure 'x; reboot' '$(id)'"]
        assert "p4ss" not in seen[0]
    finally:
        acceptor.close()
    await asyncio.sleep(0)
