"""Long card phases: progress of every phase (bytes done of a total), stalls detected from progress
that stops growing (not from a quiet connection), budgets that follow the image size, and the
simulated card's speed.

The helper runs for real (`piseduce-node`, or through the simulator's slow card); the SSH side
uses a small asyncssh server whose "helper" is scripted, to make a phase quiet or stuck at will.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from helpers.raspberry_helpers import Ctx, agent_config, sessions_for
from piseduce.agent.drivers.base import NodeView, StepError
from piseduce.agent.drivers.raspberry import card
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.ssh import HelperProgress
from piseduce.agent.models import Environment
from piseduce.db import write_session
from piseduce.sim.rpi.card import CardSpeed, parse_speed, spread

GIB = 1 << 30
MB = 1_000_000


def _card(tmp_path: Path, size: int = 256 << 20) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "card.img"
    with open(path, "wb") as f:
        f.truncate(size)
    return {"PISEDUCE_NODE_DEVICE": str(path)}


def _run(env: dict[str, str], argv: list[str], data: bytes = b"") -> tuple[int, list[dict[str, Any]], float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", *argv], input=data, capture_output=True,
                          env={**os.environ, **env}, timeout=120)
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    return proc.returncode, lines, time.monotonic() - started


def _image(size: int) -> bytes:
    # Not compressible, not zeros: every byte is written and read for real.
    return (hashlib.sha256(b"seed").digest() * (size // 32 + 1))[:size]


# ---------------------------------------------------------------- the helper reports every phase


def test_write_image_reports_progress_through_the_read_back(tmp_path: Path) -> None:
    """The read-back of a written image is a long phase too: it reports bytes done of a total."""
    data = _image(24 << 20)
    env = _card(tmp_path)
    sha = hashlib.sha256(data).hexdigest()
    # A card reading at 16 MB/s: the read-back lasts 1.5 s, more than one report interval.
    status, lines, _ = _run(env, ["piseduce.sim.rpi.card", "--read-mbps", "16", "--", "write-image",
                                  "--sha256", sha, "--size", str(len(data))], data)
    assert status == 0, lines
    assert lines[-1]["ok"] and lines[-1]["verified"] is True
    verify = [line for line in lines if line.get("phase") == "verify"]
    assert verify, lines
    assert all(line["total"] == len(data) for line in verify)
    dones = [line["done"] for line in verify]
    assert dones[0] == 0 and dones[-1] == len(data) and len(set(dones)) >= 3, dones
    assert dones == sorted(dones)
    write = [line for line in lines if line.get("phase") == "write"]
    assert write and write[-1]["done"] == len(data) and write[-1]["total"] == len(data)


def test_verify_and_wipe_are_commands_with_progress(tmp_path: Path) -> None:
    data = _image(8 << 20)
    env = _card(tmp_path)
    sha = hashlib.sha256(data).hexdigest()
    status, lines, _ = _run(env, ["piseduce.node.cli", "write-image", "--sha256", sha, "--no-verify",
                                  "--image-size", str(len(data))], data)
    assert status == 0 and lines[-1]["verified"] is False and lines[-1]["image_sha256"] == sha
    status, lines, _ = _run(env, ["piseduce.node.cli", "verify", "--size", str(len(data)), "--sha256", sha])
    assert status == 0 and lines[-1] == {"ok": True, "verified": True, "size": len(data), "sha256": sha}
    assert [ln["phase"] for ln in lines[:-1]] == ["verify"] * (len(lines) - 1)
    # A card that does not hold the image: refused with the reason.
    status, lines, _ = _run(env, ["piseduce.node.cli", "verify", "--size", str(len(data)),
                                  "--sha256", "0" * 64])
    assert status == 1 and "does not hold what was written" in lines[-1]["error"]
    status, lines, _ = _run(env, ["piseduce.node.cli", "wipe", "--full"])
    assert status == 0 and lines[-1]["zeroed"] == 256 << 20
    wipe = [ln for ln in lines[:-1] if ln.get("phase") == "wipe"]
    assert wipe[0]["done"] == 0 and wipe[-1]["done"] == wipe[-1]["total"] == 256 << 20


# ---------------------------------------------------------------- the simulated card's speed


def test_simulated_card_writes_and_reads_at_its_speed(tmp_path: Path) -> None:
    data = _image(16 << 20)
    sha = hashlib.sha256(data).hexdigest()
    argv = ["write-image", "--sha256", sha, "--size", str(len(data))]
    status, _, fast = _run(_card(tmp_path / "a"), ["piseduce.sim.rpi.card", "--", *argv], data)
    assert status == 0
    # 16.8 MB written at 20 MB/s, then read back at 40 MB/s: 0.84 + 0.42 s at least.
    status, lines, slow = _run(_card(tmp_path / "b"), ["piseduce.sim.rpi.card", "--write-mbps", "20",
                                                       "--read-mbps", "40", "--", *argv], data)
    assert status == 0 and lines[-1]["verified"]
    # Only the lower bound: a loaded machine makes both runs slower, never the limited one faster.
    assert slow >= len(data) / (20 * MB) + len(data) / (40 * MB), (fast, slow)


def test_zero_blocks_cost_card_time_though_the_file_stays_sparse(tmp_path: Path) -> None:
    data = bytes(32 << 20)
    sha = hashlib.sha256(data).hexdigest()
    env = _card(tmp_path)
    status, _, took = _run(env, ["piseduce.sim.rpi.card", "--write-mbps", "40", "--", "write-image",
                                 "--sha256", sha, "--no-verify"], data)
    assert status == 0 and took >= len(data) / (40 * MB)
    assert os.stat(env["PISEDUCE_NODE_DEVICE"]).st_blocks * 512 < 1 << 20


def test_card_speed_options() -> None:
    assert parse_speed("unlimited") == (None, None)
    assert parse_speed("realistic") == ((20.0, 40.0), 44.0)
    assert parse_speed("30") == ((30.0, 30.0), None)
    assert parse_speed("20-40:44") == ((20.0, 40.0), 44.0)
    for bad in ("fast", "40-20", "0", "-3", "20:0"):
        with pytest.raises(ValueError, match="card speed"):
            parse_speed(bad)
    speeds = spread(3, (20.0, 40.0), 44.0)
    assert [s.write_mbps for s in speeds] == [20.0, 30.0, 40.0] and {s.read_mbps for s in speeds} == {44.0}
    assert spread(2, None, None) == [CardSpeed(), CardSpeed()]
    assert CardSpeed(25, 44).argv() == ["--write-mbps", "25", "--read-mbps", "44"]


# ---------------------------------------------------------------- stalls: progress, not silence


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # tests only: no authentication


Script = Callable[[asyncssh.SSHServerProcess[bytes]], Awaitable[None]]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[asyncssh.SSHClientConnection]]]:
    servers: list[asyncssh.SSHAcceptor] = []
    conns: list[asyncssh.SSHClientConnection] = []

    async def start(script: Script) -> asyncssh.SSHClientConnection:
        host_key = asyncssh.generate_private_key("ssh-ed25519")

        async def handle(proc: asyncssh.SSHServerProcess[bytes]) -> None:
            await script(proc)
            proc.exit(0)

        server = await asyncssh.create_server(_Server, "127.0.0.1", 0, server_host_keys=[host_key],
                                              process_factory=handle, encoding=None)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        conn = await asyncssh.connect("127.0.0.1", port, username="root", known_hosts=None,
                                      client_keys=None, agent_path=None, config=None)
        conns.append(conn)
        return conn

    yield start
    for c in conns:
        c.close()
    for s in servers:
        s.close()


def _line(**fields: Any) -> bytes:
    return (json.dumps(fields) + "\n").encode()


async def test_a_long_quiet_phase_that_progresses_is_not_killed(scripted: Any, tmp_path: Path) -> None:
    """Like a card read-back: nothing moves on the connection for 6 stall windows but the
    progress lines, which grow."""

    async def helper(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        await proc.stdin.read()
        for done in range(0, 13):
            proc.stdout.write(_line(progress=done * 8, phase="verify", done=done, total=12,
                                    message=f"{done}"))
            await asyncio.sleep(0.1)
        proc.stdout.write(_line(ok=True, verified=True))

    conn = await scripted(helper)
    source = tmp_path / "image"
    source.write_bytes(b"x" * 1000)
    seen: list[HelperProgress] = []

    async def note(p: HelperProgress) -> None:
        seen.append(p)

    result = await sshc.stream_file_to_helper(conn, ["piseduce-node", "write-image"], source,
                                              on_progress=note, stall_timeout=0.25)
    assert result == {"ok": True, "verified": True}
    assert [p.done for p in seen] == list(range(13)) and seen[-1].total == 12


async def test_a_phase_whose_progress_stops_is_killed_with_the_reason(scripted: Any) -> None:
    """Heartbeats that repeat the same count are no progress: a stuck card is detected."""

    async def helper(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        proc.stdout.write(_line(progress=10, phase="verify", done=100, total=1000,
                                message="verify: 100 of 1000 bytes"))
        for _ in range(600):
            proc.stdout.write(_line(progress=10, phase="verify", done=100, total=1000,
                                    message="verify: 100 of 1000 bytes"))
            await asyncio.sleep(0.05)

    conn = await scripted(helper)

    async def note(p: HelperProgress) -> None:
        pass

    started = time.monotonic()
    with pytest.raises(sshc.NodeCommandError) as err:
        await asyncio.wait_for(
            sshc.stream_file_to_helper(conn, ["piseduce-node", "verify"], None, on_progress=note,
                                       stall_timeout=0.5),
            10,
        )
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert message.startswith("'piseduce-node verify' stalled: no progress for 0.5 s"), message
    assert "last: verify: 100 of 1000 bytes" in message, message


def test_stall_window_follows_the_worst_case_card_speed() -> None:
    # The helper flushes every 32 MiB: at 10 MB/s a report that grows comes every 4.4 s at worst.
    assert card.WORST_CASE_WRITE_BPS == card.WORST_CASE_READ_BPS == 10 * MB
    assert card.stall_seconds() >= 10 * (32 * (1 << 20) / (10 * MB))
    assert card.stall_seconds() >= 60


# ---------------------------------------------------------------- budgets follow the image size


async def test_write_and_verify_budgets_follow_the_image_size(tmp_path: Path) -> None:
    config = agent_config(tmp_path, timeout_scale=1.0)
    sessions = sessions_for(config)
    driver = RaspberryDriver(config, sessions)
    steps = {s.name: s for s in driver.processes()["deploy"].steps}
    (config.env_dir / "big.img.xz").write_bytes(b"\xfd7zXZ\x00" + bytes(100))
    (config.env_dir / "raw.img").write_bytes(bytes(4096))
    budgets: dict[str, tuple[float, float]] = {}
    try:
        for name, image, size in (("small", "big.img.xz", 2 * GIB), ("large", "big.img.xz", 16 * GIB),
                                  ("huge", "big.img.xz", 64 * GIB), ("unknown", "big.img.xz", 0),
                                  ("raw", "raw.img", 0)):
            with write_session(sessions) as s:
                s.merge(Environment(name=name, image=image, size=size, ssh_user="pi", checksum="a" * 64))
            ctx = Ctx(config, NodeView(name="pi-1"), {"environment": name})
            write, verify = steps["write_image"].budget, steps["verify"].budget
            assert write is not None and verify is not None
            budgets[name] = (write(ctx), verify(ctx))
        # 16 GiB at 10 MB/s: 1718 s of writing, as much of reading back, plus a power loss.
        assert budgets["large"][0] >= 16 * GIB / (10 * MB) + 300
        assert budgets["large"][1] >= 16 * GIB / (10 * MB)
        assert budgets["huge"][0] >= 64 * GIB / (10 * MB) > 3600
        assert budgets["small"][0] < budgets["large"][0] < budgets["huge"][0]
        # A compressed image of unknown size may fill the largest card; a raw one is its own size.
        assert budgets["unknown"][0] == budgets["huge"][0]
        assert budgets["raw"][0] == max(300.0, 300 + 4096 / (10 * MB))
        # After the write, the read-back's budget follows what was written.
        ctx = Ctx(config, NodeView(name="pi-1"), {"environment": "unknown"})
        ctx.state["write_result"] = {"written": 2 * GIB}
        verify = steps["verify"].budget
        assert verify is not None and verify(ctx) == budgets["small"][1]
        with pytest.raises(StepError, match="does not exist"):
            write = steps["write_image"].budget
            assert write is not None
            write(Ctx(config, NodeView(name="pi-1"), {"environment": "gone"}))
    finally:
        await driver.close()
