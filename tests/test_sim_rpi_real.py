"""A deployed simulated board is a Linux host: what a researcher does in their first ten minutes,
with the real OpenSSH clients, from the agent host (real mode only: namespaces need root).

One site for the module: the raspberry agent deploys the Raspberry Pi OS-like image on pi-1 with
the user's key and a password; every test then logs in like the user would, with the host key
the reservation pinned, and strict checking.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pexpect
import pytest
import pytest_asyncio

from helpers.openssh_helpers import Login, askpass, run
from helpers.raspberry_helpers import USER, user_key
from helpers.rpi_fixtures import power, require_real_mode
from helpers.rpi_site import PASSWORD, Site, deploy, make_site, reserve, wait_for
from piseduce.sim.images import build_environment

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@dataclass
class Deployed:
    site: Site
    reservation: dict[str, Any]
    login: Login
    tmp: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployed]:
    require_real_mode()
    tmp = tmp_path_factory.mktemp("real")
    images = tmp / "images"
    env = build_environment(images, "raspios", size_mb=56, compress="gz")
    async with make_site(tmp, (images, env)) as site:
        assert site.cluster.mode == "real"
        (rid,) = await reserve(site, ["pi-1"])
        await deploy(site, rid)
        res = await wait_for(site, rid, ("deployed", "failed"))
        assert res["status"] == "deployed", (res["error"], res["events"][-6:])
        yield Deployed(site, res, Login.of(tmp, res["connection"], site.key), tmp)


async def ok(argv: list[str], **kw: Any) -> str:
    done = await run(argv, **kw)
    assert done.returncode == 0, (argv[0], done.returncode, done.stderr)
    return done.stdout


async def test_login_with_the_key_and_the_pinned_host_key(deployed: Deployed) -> None:
    login = deployed.login
    board = deployed.site.board("pi-1")
    assert (login.host, login.port) == (board["ip"], 22) and login.host != "127.0.0.1"
    assert await ok(login.ssh("hostname")) == "pi-1\n"  # the node's name, from its card
    assert await ok(login.ssh("cat /etc/hostname; whoami; id -u")) == "pi-1\npi\n1000\n"
    # a wrong pinned key: strict checking refuses before anything is sent
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    login.known_hosts.with_name("wrong").write_text(f"{login.host} {other}\n")
    wrong = Login(login.host, login.port, login.user, login.key, login.known_hosts.with_name("wrong"))
    done = await run(wrong.ssh("true"))
    assert done.returncode == 255 and "host key" in done.stderr.lower()


async def test_pipes_variables_and_the_root_filesystem(deployed: Deployed) -> None:
    out = await ok(deployed.login.ssh("uname -a | head -1; echo $HOME; ls /"))
    first, home, *listing = out.splitlines()
    assert first.startswith("Linux pi-1 ") and first.endswith("GNU/Linux"), first
    assert home == "/home/pi"
    assert {"bin", "boot", "etc", "home", "usr", "tmp", "var", "proc", "dev"} <= set(listing), listing
    # cd, mkdir, redirections, arithmetic, a loop, $(...), a pipe: a real shell
    script = ("cd /tmp && mkdir -p d && cd d && for i in 1 2 3; do echo $((i*i)) > f$i; done;"
              " echo $(cat f1 f2 f3) $(ls | wc -l) $(pwd)")
    assert await ok(deployed.login.ssh(script)) == "1 4 9 3 /tmp/d\n"


async def test_python3_runs_on_the_board(deployed: Deployed) -> None:
    code = "import socket, sys; print(socket.gethostname(), sys.version_info[0], sum(range(10)))"
    out = await ok(deployed.login.ssh(f"python3 -c '{code}'"))
    assert out == "pi-1 3 45\n"


async def test_password_login(deployed: Deployed) -> None:
    login = deployed.login
    argv = ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={login.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1",
            "-p", str(login.port), login.target, "whoami"]
    assert await ok(argv, env=askpass(deployed.tmp, PASSWORD)) == "pi\n"
    done = await run(argv, env=askpass(deployed.tmp, "not the password"))
    assert done.returncode == 255 and "permission denied" in done.stderr.lower()
    # root logs in with a key only (PermitRootLogin prohibit-password), even with the password
    as_root = [*argv[:-2], f"root@{login.host}", "whoami"]
    done = await run(as_root, env=askpass(deployed.tmp, PASSWORD))
    assert done.returncode == 255


async def test_the_deploy_forms_words_on_the_password_are_what_ssh_finds(deployed: Deployed) -> None:
    """The form says who the OS password logs in (the environment's user) and that root logs in
    over SSH with the keys only; OpenSSH against the deployed board agrees, word for word."""
    site, login = deployed.site, deployed.login
    r = await site.client.get(f"/api/reservations/{deployed.reservation['id']}/form", headers=USER)
    assert r.status_code == 200, r.text
    (field,) = [f for f in r.json() if f["name"] == "os_password"]
    words = field["help"]
    assert "Password of root" not in words, words
    assert "root logs in over SSH with your keys only" in words, words
    assert "SSH password of the environment's user" in words, words
    password_only = ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={login.known_hosts}",
                     "-o", "StrictHostKeyChecking=yes", "-o", "PubkeyAuthentication=no",
                     "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1",
                     "-p", str(login.port)]
    assert await ok([*password_only, login.target, "whoami"], env=askpass(deployed.tmp, PASSWORD)) == "pi\n"
    as_root = await run([*password_only, f"root@{login.host}", "whoami"], env=askpass(deployed.tmp, PASSWORD))
    assert as_root.returncode == 255 and "permission denied" in as_root.stderr.lower()
    root_key = Login(login.host, login.port, "root", login.key, login.known_hosts)
    assert await ok(root_key.ssh("whoami")) == "root\n"


async def test_a_second_users_key_is_refused(deployed: Deployed) -> None:
    key, _pub = user_key(deployed.tmp, "id_other_user")
    login = deployed.login
    other = Login(login.host, login.port, login.user, key, login.known_hosts)
    done = await run(other.ssh("true"))
    assert done.returncode == 255 and "permission denied" in done.stderr.lower()
    done = await run(Login(login.host, login.port, "root", key, login.known_hosts).ssh("true"))
    assert done.returncode == 255


async def test_scp_both_ways_and_sftp(deployed: Deployed) -> None:
    login, tmp = deployed.login, deployed.tmp
    data = secrets.token_bytes(3 << 20)
    (tmp / "up.bin").write_bytes(data)
    await ok(login.scp(str(tmp / "up.bin"), login.remote("up.bin")))
    remote_sum = await ok(login.ssh("sha256sum up.bin"))
    assert remote_sum.split()[0] == hashlib.sha256(data).hexdigest()
    await ok(login.scp(login.remote("up.bin"), str(tmp / "down.bin")))
    assert (tmp / "down.bin").read_bytes() == data
    batch = tmp / "sftp.batch"
    batch.write_text(f"mkdir sftpdir\ncd sftpdir\nput {tmp / 'up.bin'} copy.bin\nls -l\n"
                     f"get copy.bin {tmp / 'sftp.bin'}\nrm copy.bin\ncd ..\nrmdir sftpdir\n")
    out = await ok(login.sftp(batch))
    assert "copy.bin" in out
    assert (tmp / "sftp.bin").read_bytes() == data
    assert await ok(login.ssh("ls -d sftpdir 2>/dev/null || echo gone")) == "gone\n"


async def test_rsync_over_ssh(deployed: Deployed) -> None:
    login, tmp = deployed.login, deployed.tmp
    src = tmp / "tree"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / "sub" / f"file{i}.txt").write_text(f"line {i}\n" * (i + 1))
    (src / "big.bin").write_bytes(secrets.token_bytes(1 << 20))
    await ok(login.rsync(f"{src}/", login.remote("tree/")))
    count = await ok(login.ssh("find tree -type f | wc -l; cat tree/sub/file3.txt | wc -l"))
    assert count.split() == ["21", "4"]
    await ok(login.ssh("echo changed on the board >> tree/sub/file0.txt"))
    back = tmp / "back"
    await ok(login.rsync(login.remote("tree/"), f"{back}/"))
    assert (back / "sub" / "file0.txt").read_text() == "line 0\nchanged on the board\n"
    assert (back / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


def _interactive(argv: list[str]) -> tuple[list[str], int | None]:
    """A terminal session: prompt, echo, line editing (arrow keys, backspace), Ctrl-C, exit."""
    seen: list[str] = []
    # bash (readline) ends the line it read with CR LF, and turns bracketed paste off before output
    out = r"\r\n(?:\x1b\[\?2004l\r)?{}\r\n"
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", timeout=20, dimensions=(24, 100))
    try:
        child.expect(r"pi@pi-1:~\$ ")
        child.send("echo helo")
        child.expect("echo helo")  # echoed as typed
        child.send("\x1b[D")  # cursor left, before the last "o"
        child.send("l\r")
        child.expect(out.format("hello"))
        seen.append("edited")
        child.expect(r"pi@pi-1:~\$ ")
        child.send("echo worldd\x7f\r")  # backspace
        child.expect(out.format("world"))
        seen.append("backspace")
        child.expect(r"pi@pi-1:~\$ ")
        child.send("sleep 60\r")
        time.sleep(0.5)
        started = time.monotonic()
        child.send("\x03")  # Ctrl-C: SIGINT to the foreground job through the terminal
        child.expect(r"pi@pi-1:~\$ ")
        assert time.monotonic() - started < 10
        child.send("echo status=$?\r")
        child.expect(r"status=130")
        seen.append("ctrl-c")
        child.expect(r"pi@pi-1:~\$ ")
        child.send("tty; exit\r")
        child.expect(r"/dev/pts/\d+")
        seen.append("tty")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return seen, child.exitstatus


async def test_an_interactive_session_through_a_pty(deployed: Deployed) -> None:
    argv = deployed.login.ssh(tty=True)
    seen, status = await asyncio.to_thread(_interactive, argv)
    assert seen == ["edited", "backspace", "ctrl-c", "tty"] and status == 0


async def test_the_boards_root_stays_on_its_board(deployed: Deployed) -> None:
    """Root on a board (the agent's key) owns that board only: the host's filesystem is out of
    reach, mounting and device nodes are refused, /usr is the read-only userland."""
    site = deployed.site
    agent = Login(deployed.login.host, 22, "root", Path(site.config.ssh_key_file), deployed.login.known_hosts)
    def refused(command: str) -> str:
        return f"if {command} >/dev/null 2>&1; then echo allowed; else echo refused; fi;"

    marker = f"marker-{secrets.token_hex(4)}"
    out = await ok(agent.ssh(
        "id -u; cat /proc/1/comm; ls /proc | grep -c '^[0-9]';"
        + refused("touch /usr/x") + refused("mount -t tmpfs t /mnt") + refused("mknod /tmp/disk b 8 0")
        + refused("ls /work") + f" echo board-write > /root/{marker}; cat /root/{marker}"))
    uid, comm, processes, *refusals, written = out.split()
    assert (uid, comm, written) == ("0", "piseduce-init", "board-write")
    assert refusals == ["refused"] * 4, out
    assert int(processes) < 30  # its own PID namespace: a handful of processes, not the host's
    assert not Path("/root", marker).exists()  # the host's /root is not the board's


async def test_shaped_link_and_packet_loss_are_real(deployed: Deployed) -> None:
    """tc token bucket on the board's port: a 4 MB copy at 32 Mbit/s takes about a second; with
    5 % of its packets lost both ways it still arrives intact (TCP), and with all lost it does not."""
    login, tmp, cluster = deployed.login, deployed.tmp, deployed.site.cluster
    data = secrets.token_bytes(4_000_000)
    (tmp / "shaped.bin").write_bytes(data)
    await cluster.shape("pi-1", 32.0)
    try:
        started = time.monotonic()
        await ok(login.scp(str(tmp / "shaped.bin"), login.remote("shaped.bin")))
        took = time.monotonic() - started
        assert took >= 4_000_000 * 8 / 32e6 * 0.9, took
    finally:
        await cluster.shape("pi-1", None)
    await cluster.set_loss("pi-1", 5.0)
    try:
        await ok(login.scp(str(tmp / "shaped.bin"), login.remote("lossy.bin")), timeout=120)
        assert (await ok(login.ssh("cmp shaped.bin lossy.bin && echo same"))) == "same\n"
        await cluster.set_loss("pi-1", 100.0)
        done = await run(login.ssh("true"), timeout=60)
        assert done.returncode == 255
    finally:
        await cluster.set_loss("pi-1", 0.0)
    assert await ok(login.ssh("hostname")) == "pi-1\n"


async def test_a_link_down_mid_transfer_stalls_it(deployed: Deployed) -> None:
    """The board's cable is out for 2 s in the middle of a copy: the copy waits, then completes."""
    login, tmp, cluster = deployed.login, deployed.tmp, deployed.site.cluster
    data = secrets.token_bytes(3_000_000)
    (tmp / "flap.bin").write_bytes(data)
    await cluster.shape("pi-1", 16.0)  # 1.5 s of transfer
    try:
        started = time.monotonic()
        argv = login.scp(str(tmp / "flap.bin"), login.remote("flap.bin"))
        copy = asyncio.create_task(ok(argv, timeout=120))
        await asyncio.sleep(0.6)
        await cluster.link_down("pi-1", 2.0)
        await copy
        took = time.monotonic() - started
    finally:
        await cluster.shape("pi-1", None)
    assert took >= 1.5 + 2.0 * 0.9, took
    assert (await ok(login.ssh("sha256sum flap.bin"))).split()[0] == hashlib.sha256(data).hexdigest()


async def test_a_board_whose_port_is_off_is_unreachable(deployed: Deployed) -> None:
    """Last of the module: the PoE port of pi-1 goes off, its link with it."""
    login, site = deployed.login, deployed.site
    await power(site.inventory, 1, on=False)
    board = site.cluster.board("pi-1")
    await board.settled()
    assert not board.powered
    done = await run(login.ssh("true"), timeout=60)
    assert done.returncode == 255
    assert any(word in done.stderr.lower() for word in ("no route", "timed out", "unreachable")), done.stderr
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection(login.host, 22), 3)
    assert os.path.exists(board.card_path)
