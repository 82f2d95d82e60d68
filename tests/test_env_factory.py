"""The environment factory: `piseduce-node read-image`, the raspberry `register_env` process through
the real API and engine against the simulated cluster, and the web UI page."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from piseduce.node import disk
from piseduce.sim.images import build_environment

GIB = 1024**3
MIB = 1024**2


def node_helper(card: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "piseduce.node.cli", *args], input=stdin,
                          capture_output=True, env={**os.environ, "PISEDUCE_NODE_DEVICE": str(card)},
                          timeout=120)


def json_lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def sha256_prefix(path: Path, length: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while length:
            data = f.read(min(MIB, length))
            assert data
            h.update(data)
            length -= len(data)
    return h.hexdigest()


# ---------------------------------------------------------------- read-image (node helper)


def test_read_image_round_trip(tmp_path: Path) -> None:
    env = build_environment(tmp_path / "img", "raspios", size_mb=56, compress="gz")
    image = (tmp_path / "img" / env["image"]).read_bytes()
    raw = gzip.decompress(image)
    card, copy = tmp_path / "card.img", tmp_path / "copy.img"
    for path in (card, copy):
        with open(path, "wb") as f:
            f.truncate(GIB)
    out = node_helper(card, "write-image", "--sha256", env["checksum"], stdin=image)
    assert out.returncode == 0, out.stdout

    read = node_helper(card, "read-image", "--compress", "gz")
    assert read.returncode == 0, read.stderr
    lines = json_lines(read.stderr)
    result = lines[-1]
    assert result["ok"] is True and result["size"] == len(raw) == env["size"]
    assert result["sha256"] == hashlib.sha256(raw).hexdigest()
    assert result["sector_start"] == env["sector_start"]
    assert result["compressed"] == len(read.stdout)
    assert any("progress" in line for line in lines[:-1])
    # stdout is only the image: a valid gzip stream of exactly the card's partitions
    assert gzip.decompress(read.stdout) == raw
    # zero megabytes did not go through deflate, yet stay small
    assert len(read.stdout) < len(raw) // 4

    # the image read back deploys like the original: same bytes up to the end of partition 2
    out = node_helper(copy, "write-image", "--sha256", hashlib.sha256(read.stdout).hexdigest(),
                      stdin=read.stdout)
    assert out.returncode == 0, out.stdout
    assert json_lines(out.stdout)[-1]["image_sha256"] == result["sha256"]
    table = disk.read_table(copy)
    assert table is not None
    end = table.get(2).end * disk.SECTOR
    assert end == len(raw)
    assert sha256_prefix(copy, end) == sha256_prefix(card, end) == result["sha256"]


def test_read_image_refuses_a_blank_card(tmp_path: Path) -> None:
    card = tmp_path / "blank.img"
    with open(card, "wb") as f:
        f.truncate(64 * MIB)
    read = node_helper(card, "read-image")
    assert read.returncode == 1 and read.stdout == b""
    assert json_lines(read.stderr)[-1] == {"ok": False,
                                           "error": "the card has no partition table: nothing to read"}
