"""Compressed environments chain too (simulated cluster, real mode: the real `piseduce-node` on
each board): the agent decompresses the image once into its raw cache (raw_cache.py) and the
chain carries the raw copy, whose checksum each board verifies; a redeploy reuses the copy; a
corrupt image fails every board with the reason and leaves no cache entry."""

from __future__ import annotations

import gzip
import hashlib
import lzma
from pathlib import Path
from typing import Any

import pytest

from helpers.raspberry_helpers import USER
from helpers.rpi_fixtures import require_real_mode
from helpers.rpi_site import Site, deploy, make_site, reserve, wait_for
from piseduce.agent.drivers.raspberry import raw_cache
from piseduce.sim.images import build_environment

pytestmark = pytest.mark.slow
BOARDS = ["pi-1", "pi-2", "pi-3"]


def messages(res: dict[str, Any]) -> list[str]:
    return [e["message"] for e in res["events"]]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The decompressions the agent runs (the executor runs in the test's process)."""
    calls: list[str] = []
    real = raw_cache._decompress

    def count(*args: Any) -> raw_cache.RawEntry:
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(raw_cache, "_decompress", count)
    return calls


async def deployed_as_chain(site: Site, ids: list[int]) -> list[dict[str, Any]]:
    done = [await wait_for(site, rid, ("deployed", "failed"), timeout=300) for rid in ids]
    for res in done:
        assert res["status"] == "deployed", (res["node"], res["error"], messages(res)[-8:])
        text = messages(res)
        place = BOARDS.index(res["node"]) + 1
        assert any(f"{res['node']} is board {place} of a chain of 3" in m for m in text), text
        assert any(m.startswith("image verified: sha256") for m in text), text
    return done


@pytest.mark.parametrize("fmt", ["gz", "xz"])
async def test_three_boards_chain_a_compressed_image_decompressed_once(
        tmp_path: Path, fmt: str, counted: list[str]) -> None:
    require_real_mode()
    folder = tmp_path / "images"
    env = build_environment(folder, "raspios", size_mb=64, compress=fmt, random_mb=4)  # type: ignore[arg-type]
    image = folder / env["image"]
    raw = (lzma.decompress if fmt == "xz" else gzip.decompress)(image.read_bytes())
    raw_sha = hashlib.sha256(raw).hexdigest()
    async with make_site(tmp_path, (folder, env), boards=3) as site:
        ids = await reserve(site, BOARDS)
        for rid in ids:
            await deploy(site, rid)
        done = await deployed_as_chain(site, ids)
        key = hashlib.sha256(image.read_bytes()).hexdigest()
        assert counted == [key]
        # Each board verified the raw image's checksum (read back from its card).
        for res in done:
            assert any(m.startswith(f"image verified: sha256 {raw_sha[:16]}") for m in messages(res)), \
                messages(res)
        # The boards that waited for the copy say it was prepared; a board reaching its write step
        # once the copy was already there (a loaded agent) finds it made: at least one says so.
        assert any("prepared for the chain" in m for res in done for m in messages(res)), done
        entry = raw_cache.lookup(raw_cache.folder_of(site.config.raw_cache_dir), key)
        assert entry is not None and entry.sha256 == raw_sha and entry.size == len(raw)
        st = entry.path.stat()
        assert st.st_blocks * 512 < 0.3 * st.st_size, (st.st_blocks * 512, st.st_size)
        inode = st.st_ino
        # A second deployment of the same image chains from the same copy: no decompression.
        for rid in ids:
            r = await site.client.post(f"/api/reservations/{rid}/redeploy", headers=USER)
            assert r.status_code == 202, r.text
        again = await deployed_as_chain(site, ids)
        assert counted == [key] and entry.path.stat().st_ino == inode
        for res in again:
            last = messages(res)[len(messages(next(d for d in done if d["node"] == res["node"]))):]
            assert not any("prepared for the chain" in m for m in last), last


async def test_a_corrupt_compressed_image_fails_every_board_and_leaves_no_entry(
        tmp_path: Path, counted: list[str]) -> None:
    require_real_mode()
    folder = tmp_path / "images"
    env = build_environment(folder, "raspios", size_mb=64, compress="xz", random_mb=4)
    image = folder / env["image"]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # a download cut half-way
    env = {k: v for k, v in env.items() if k != "checksum"}  # the agent computes the file's
    async with make_site(tmp_path, (folder, env), boards=3) as site:
        ids = await reserve(site, BOARDS)
        for rid in ids:
            await deploy(site, rid)
        done = [await wait_for(site, rid, ("deployed", "failed"), timeout=300) for rid in ids]
        for res in done:
            assert res["status"] == "failed", (res["node"], messages(res)[-8:])
            assert "the image cannot be prepared for the chain" in res["error"], res["error"]
            assert "xz" in res["error"] and "truncated" in res["error"], res["error"]
        assert len(counted) == 1
        cache = raw_cache.folder_of(site.config.raw_cache_dir)
        assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


async def test_a_raw_cache_that_cannot_be_written_leaves_the_direct_path(
        tmp_path: Path, counted: list[str]) -> None:
    """A full or unwritable cache disk is no reason to fail a deployment: each board gets the
    compressed image straight from the agent (as one board alone does), with a warning."""
    require_real_mode()
    folder = tmp_path / "images"
    env = build_environment(folder, "raspios", size_mb=64, compress="gz", random_mb=4)
    (tmp_path / "cache").write_text("not a folder")  # where the agent's raw_cache_path points
    async with make_site(tmp_path, (folder, env), boards=3) as site:
        assert site.config.raw_cache_dir == tmp_path / "cache"
        ids = await reserve(site, BOARDS)
        for rid in ids:
            await deploy(site, rid)
        done = [await wait_for(site, rid, ("deployed", "failed"), timeout=300) for rid in ids]
        for res in done:
            assert res["status"] == "deployed", (res["node"], res["error"], messages(res)[-8:])
            text = messages(res)
            assert any("cannot write the raw cache in" in m and "straight from the agent" in m
                       for m in text), text
            assert not any("of a chain of" in m for m in text), text
            assert any(m.startswith("image verified: sha256") for m in text), text
