"""The SSH gateway (`piseduce agent gateway`) with the real OpenSSH client through ProxyJump: a
user reaches the board they hold and nothing else, the refusals are logged, and the jump (an open
session included) ends with the reservation. The boards are SSH servers on two loopback addresses
(127.0.0.1 and 127.0.0.2), the node addresses the gateway forwards to."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from sqlalchemy.orm import Session, sessionmaker

from helpers.agent_helpers import free_port
from helpers.raspberry_helpers import agent_config, sessions_for
from piseduce.agent.gateway import host_key, known_hosts_line, serve
from piseduce.agent.lifecycle import DEPLOYED, ENDED
from piseduce.agent.models import Node, Reservation
from piseduce.db import write_session

pytestmark = pytest.mark.slow


async def board_process(process: asyncssh.SSHServerProcess[str]) -> None:
    if process.command == "sleep":
        await asyncio.sleep(60)
    process.stdout.write("hello from the board\n")
    process.exit(0)


@dataclass
class Lab:
    tmp: Path
    sessions: sessionmaker[Session]
    ssh_config: Path
    gw_port: int
    api_port: int
    board_port: int


def write_key(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    return key


BOARD_NAMES = ("pi-1", "pi-2", "pi-3", "127.0.0.1", "127.0.0.2")


@contextlib.asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    board_port, gw_port, api_port = free_port(), free_port(), free_port()
    config = agent_config(
        tmp_path,
        gateway_port=gw_port,
        gateway_board_port=board_port,
        gateway_poll_seconds=0.5,
        gateway_max_unauthenticated=8,
        gateway_max_unauthenticated_per_address=4,
        gateway_login_grace_seconds=3,
    )
    sessions = sessions_for(config)
    alice, bob, stranger = (write_key(tmp_path / n) for n in ("alice", "bob", "stranger"))
    board_key = asyncssh.generate_private_key("ssh-ed25519")
    now = dt.datetime.now(dt.UTC)
    with write_session(sessions) as s:
        # alice holds pi-1 and pi-3 (two reservations), bob pi-2.
        for i, user, key in ((1, "alice@lab", alice), (2, "bob@lab", bob), (3, "alice@lab", alice)):
            s.add(Node(name=f"pi-{i}", ip=f"127.0.0.{i}"))
            s.flush()
            s.add(
                Reservation(
                    node_name=f"pi-{i}",
                    owner=user,
                    start=now - dt.timedelta(hours=1),
                    end=now + dt.timedelta(hours=1),
                    busy_until=now + dt.timedelta(hours=1),
                    status=DEPLOYED,
                    params={"ssh_keys": [key.export_public_key().decode()]},
                )
            )
    authorized = asyncssh.import_authorized_keys(
        "".join(k.export_public_key().decode() for k in (alice, bob, stranger))
    )
    boards = [
        await asyncssh.create_server(
            asyncssh.SSHServer,
            f"127.0.0.{i}",
            board_port,
            server_host_keys=[board_key],
            authorized_client_keys=authorized,
            process_factory=board_process,
        )
        for i in (1, 2, 3)
    ]
    # Something else listening on the agent host (the agent API's place), which must stay unreachable.
    other = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", api_port)
    gw_key = host_key(config.resolve(config.gateway_host_key_file))
    known = tmp_path / "known_hosts"
    board_pub = board_key.export_public_key().decode().strip()
    known.write_text(
        known_hosts_line(gw_key, "127.0.0.1", gw_port)
        + "\n"
        + "".join(f"[{h}]:{board_port} {board_pub}\n" for h in BOARD_NAMES)
    )
    common = (
        f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
        "  IdentitiesOnly yes\n  ConnectTimeout 10\n"
    )
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host gw\n  HostName 127.0.0.1\n  Port {gw_port}\n  User jump\n  ProxyJump none\n"
        f"  IdentityFile %d/KEY\n{common}"
        f"Host *\n  ProxyJump gw\n  User pi\n  Port {board_port}\n{common}"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, sessions, stop, host="127.0.0.1"))
    await asyncio.sleep(0.5)
    try:
        yield Lab(tmp_path, sessions, cfg, gw_port, api_port, board_port)
    finally:
        stop.set()
        await task
        other.close()
        for b in boards:
            b.close()


async def ssh(lab: Lab, user_key: str, *args: str, timeout: float = 20) -> tuple[int, str]:
    cfg = lab.tmp / f"ssh_config_{user_key}"
    text = lab.ssh_config.read_text().replace("%d/KEY", str(lab.tmp / user_key))
    cfg.write_text(text.replace("Host *\n", f"Host *\n  IdentityFile {lab.tmp / user_key}\n"))
    proc = await asyncio.create_subprocess_exec(
        "ssh",
        "-F",
        str(cfg),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode()


async def test_a_user_reaches_only_their_board(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "piseduce.agent.gateway")
    async with lab(tmp_path) as lb:
        rc, out = await ssh(lb, "alice", "pi-1", "hostname")
        assert rc == 0 and "hello from the board" in out, out
        rc, out = await ssh(lb, "alice", "127.0.0.1", "hostname")  # the same board by address
        assert rc == 0, out
        # Another user's board, by name and by address: refused.
        for dest in ("pi-2", "127.0.0.2"):
            rc, out = await ssh(lb, "alice", dest, "hostname")
            assert rc != 0 and "hello" not in out, out
        assert "refused forwarding to 'pi-2'" in caplog.text
        # Another port of the agent host, the board's port 80: refused.
        rc, out = await ssh(lb, "alice", "-p", str(lb.api_port), "127.0.0.1", "x")
        assert rc != 0 and f"refused forwarding to '127.0.0.1':{lb.api_port}" in caplog.text
        rc, out = await ssh(lb, "alice", "-p", "80", "pi-1", "x")
        assert rc != 0 and "refused forwarding to 'pi-1':80" in caplog.text
        assert f"only port {lb.board_port} of your boards" in out, out
        # A shell or a command on the gateway itself: refused.
        rc, out = await ssh(lb, "alice", "gw", "id")
        assert rc != 0 and "refused a session" in caplog.text
        # Hostile keys: unknown, and the other user's key for alice's board.
        rc, out = await ssh(lb, "stranger", "pi-1", "hostname")
        assert rc != 0 and "Permission denied" in out, out
        rc, out = await ssh(lb, "bob", "pi-1", "hostname")
        assert rc != 0 and "hello" not in out
        rc, out = await ssh(lb, "bob", "pi-2", "hostname")
        assert rc == 0, out


async def test_access_ends_with_the_reservation(tmp_path: Path) -> None:
    async with lab(tmp_path) as lb:
        cfg_run = asyncio.create_task(ssh(lb, "alice", "pi-1", "sleep", timeout=40))
        await asyncio.sleep(3)
        assert not cfg_run.done()
        with write_session(lb.sessions) as s:
            for r in s.query(Reservation).filter_by(owner="alice@lab"):
                r.status = ENDED
        t0 = time.monotonic()
        rc, out = await cfg_run
        assert rc != 0 and "hello" not in out
        assert time.monotonic() - t0 < 5
        # With none of her reservations left, her key no longer logs in at all.
        rc, out = await ssh(lb, "alice", "pi-1", "hostname")
        assert rc != 0 and "Permission denied" in out, out


async def test_a_reservation_ending_closes_only_its_own_forwards(tmp_path: Path) -> None:
    """One connection forwarding to two of alice's boards (ssh -L twice, a ControlMaster): when
    pi-1's reservation ends, its channel closes and the one to pi-3 goes on."""
    async with lab(tmp_path) as lb, asyncssh.connect(
        "127.0.0.1", lb.gw_port, username="jump", client_keys=[str(lb.tmp / "alice")], known_hosts=None
    ) as conn:
        one_r, one_w = await conn.open_connection("pi-1", lb.board_port)
        three_r, three_w = await conn.open_connection("pi-3", lb.board_port)
        for r in (one_r, three_r):  # each board's SSH banner through the jump
            assert (await asyncio.wait_for(r.readline(), 5)).startswith(b"SSH-2.0-")
        with write_session(lb.sessions) as s:
            s.query(Reservation).filter_by(node_name="pi-1").one().status = ENDED
        assert await asyncio.wait_for(one_r.read(), 5) == b""  # pi-1's channel closed
        three_w.write(b"SSH-2.0-test\r\n")  # pi-3's still carries: its server answers
        assert await asyncio.wait_for(three_r.read(1), 5)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("pi-1", lb.board_port)


async def test_unauthenticated_connections_are_bounded(tmp_path: Path) -> None:
    async with lab(tmp_path) as lb:
        conns = [await asyncio.open_connection("127.0.0.1", lb.gw_port) for _ in range(30)]
        # Over the limit, connections are dropped; a real user still gets in after the grace time.
        await asyncio.sleep(3.5)
        rc, out = await ssh(lb, "alice", "pi-1", "hostname")
        assert rc == 0, out
        for _, w in conns:
            w.close()
    assert os.path.exists(tmp_path / "gateway_host_key")


async def test_one_address_cannot_hold_every_login_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle connections from one address (a port scan, a slowloris) take at most
    gateway_max_unauthenticated_per_address of the waiting slots: a user elsewhere gets in at once,
    not after the login grace time; the flood's refusals are one log line, not one per connection."""
    caplog.set_level(logging.INFO, "piseduce.agent.gateway")
    async with lab(tmp_path) as lb:
        flood = [await asyncio.open_connection("127.0.0.1", lb.gw_port, local_addr=("127.0.0.9", 0))
                 for _ in range(40)]
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        rc, out = await ssh(lb, "alice", "pi-1", "hostname")
        assert rc == 0, out
        assert time.monotonic() - t0 < 2.5  # well within the lab's 3 s grace
        closed = 0
        for r, w in flood:
            with contextlib.suppress(TimeoutError):
                closed += await asyncio.wait_for(r.read(4096), 0.05) == b""
            w.close()
        assert closed >= 40 - 4, closed
    refusals = [r for r in caplog.records if "refused 127.0.0.9" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert (tmp_path / "gateway_host_key").stat().st_mode & 0o777 == 0o600
