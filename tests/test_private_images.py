"""Saved environments are their owner's: the image of a user's card (their /etc/shadow hashes and
authorized keys) is mode 0600 from its first byte, the temporary file it arrives in too; a symbolic
or hard link planted in its place is not followed; private images an older version left readable
are tightened when the agent starts; a world-writable env_path is refused for saving and said.

The whole registration through the API and the simulated boards is in test_env_factory.py."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from helpers.raspberry_helpers import agent_config, sessions_for
from piseduce.agent import env_factory
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.ssh import HelperProgress
from piseduce.agent.models import Environment
from piseduce.db import write_session
from test_card_progress import _line, scripted

__all__ = ["scripted"]  # the fixture, used here


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask of most services (022): what the old code's files got their 0644 from."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def test_a_card_image_is_private_while_it_arrives_and_after(
    scripted: Any, tmp_path: Path, usual_umask: None
) -> None:
    async def helper(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        for i in range(3):
            proc.stdout.write(b"shadow hashes " * 4096)
            await proc.stdout.drain()
            await asyncio.sleep(0.05)
            proc.stderr.write(_line(progress=30 * (i + 1), phase="read", done=i + 1, total=3,
                                    message=f"{i + 1} of 3"))
            await asyncio.sleep(0.05)
        proc.stderr.write(_line(ok=True, compressed=3 * 14 * 4096))

    conn = await scripted(helper)
    part = tmp_path / ".alice-sys.img.gz.part"
    modes: list[int] = []

    async def note(_p: HelperProgress) -> None:
        modes.append(mode(part))  # the temporary file, while bytes arrive

    result, received, _sha = await sshc.read_helper_stream(
        conn, ["piseduce-node", "read-image"], part, on_progress=note, stall_timeout=5, max_bytes=1 << 30
    )
    assert result["ok"] and received == 3 * 14 * 4096
    assert modes and set(modes) == {0o600}, [oct(m) for m in modes]
    assert mode(part) == 0o600


async def test_a_link_planted_in_place_of_the_image_is_not_followed(
    scripted: Any, tmp_path: Path
) -> None:
    async def helper(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        proc.stdout.write(b"card bytes")
        proc.stderr.write(_line(ok=True, compressed=10))

    async def note(_p: HelperProgress) -> None:
        pass

    victim = tmp_path / "agent.db"
    victim.write_bytes(b"the agent's database")
    # A hard link of another file of the agent's: replaced by a new file, the other one untouched.
    part = tmp_path / ".x.img.gz.part"
    os.link(victim, part)
    conn = await scripted(helper)
    await sshc.read_helper_stream(conn, ["piseduce-node", "read-image"], part, on_progress=note,
                                  stall_timeout=5, max_bytes=1 << 20)
    assert victim.read_bytes() == b"the agent's database"
    assert part.read_bytes() == b"card bytes" and mode(part) == 0o600

    # Another archive, over the same pinned connection: its file is private too.
    archive = tmp_path / ".boot.tar"
    archive.symlink_to(victim)
    # (the symbolic link is removed, not followed: the file is new)
    await sshc.read_helper_output_to_file(conn, ["piseduce-node", "export-boot"], archive,
                                          max_bytes=1 << 20, timeout=5)
    assert not archive.is_symlink() and mode(archive) == 0o600
    assert victim.read_bytes() == b"the agent's database"


def _environment(sessions: Any, name: str, image: str, owner: str) -> None:
    with write_session(sessions) as s:
        s.add(Environment(name=name, image=image, size=0, sector_start=0, ssh_user="pi", checksum="",
                          owner=owner))


def test_private_images_left_readable_are_tightened_when_the_agent_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = agent_config(tmp_path)
    sessions = sessions_for(config)
    private = config.env_dir / "alice-sys.img.gz"
    public = config.env_dir / "raspios.img.gz"
    for path in (private, public):
        path.write_bytes(b"image")
        os.chmod(path, 0o644)  # as the environment factory of earlier versions saved them
    _environment(sessions, "alice-sys", private.name, "alice@example.org")
    _environment(sessions, "raspios", public.name, "")
    with caplog.at_level(logging.WARNING):
        RaspberryDriver(config, sessions)
    assert mode(private) == 0o600
    # Public images are read by the agent only too, but an administrator's modes are theirs.
    assert mode(public) == 0o644
    assert any("alice-sys.img.gz" in r.getMessage() and "0600" in r.getMessage() for r in caplog.records)


def test_a_world_writable_env_path_is_refused_for_saving_and_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = agent_config(tmp_path)
    assert env_factory.unsafe_env_dir(config.env_dir) is None
    os.chmod(config.env_dir, 0o777)
    reason = env_factory.unsafe_env_dir(config.env_dir)
    assert reason is not None and "writable by every account" in reason and "chmod o-w" in reason
    with caplog.at_level(logging.WARNING):
        RaspberryDriver(config, sessions_for(config))
    assert any("writable by every account" in r.getMessage() for r in caplog.records)
