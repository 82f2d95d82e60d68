"""The environment factory: `piseduce-node read-image`, the raspberry `register_env` process through
the real API and engine against the simulated cluster, and the web UI page."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from piseduce.node import disk
from piseduce.sim.images import build_environment
from raspberry_helpers import ADMIN, USER
from test_raspberry_e2e import Site, _ok, deploy, image_dir, openssh_login, reserve, site, wait_for

__all__ = ["image_dir", "site"]  # fixtures of the end-to-end raspberry tests, used here

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


# ---------------------------------------------------------------- register_env through the API


BOB = {**USER, "X-Piseduce-User": "bob@example.org"}


async def test_register_env_then_deploy_it_elsewhere(site: Site) -> None:
    pi1, pi2 = await reserve(site, ["pi-1", "pi-2"])
    url = f"/api/reservations/{pi1}/register_env"
    # Not deployed yet: refused with the reason; nothing queued.
    r = await site.client.post(url, json={"name": "alice-sys"}, headers=USER)
    assert r.status_code == 409 and "only a deployed node" in r.json()["detail"]
    await deploy(site, pi1, part_size="2gb")
    res = await wait_for(site, pi1, ("deployed", "failed"))
    assert res["status"] == "deployed", (res["error"], res["events"][-6:])

    for bad in ("../etc", "", "-dash", "a" * 65, "sp ace", "é"):
        r = await site.client.post(url, json={"name": bad}, headers=USER)
        assert r.status_code == 422 and "environment name" in r.json()["detail"], (bad, r.text)
    r = await site.client.post(url, json={"name": site.env["name"]}, headers=USER)
    assert r.status_code == 422 and "already exists" in r.json()["detail"]
    # Another user's reservation is not found, whatever the name.
    r = await site.client.post(url, json={"name": "bob-sys"}, headers=BOB)
    assert r.status_code == 404

    await _ok(await site.client.post(url, json={"name": "alice-sys"}, headers=USER), 202)
    r = await site.client.post(url, json={"name": "other"}, headers=USER)
    assert r.status_code == 409  # busy with the registration
    done = await wait_for(site, pi1, ("failed",), timeout=120, events=("register_env finished",))
    assert done["status"] == "deployed", (done["error"], done["events"][-6:])
    messages = " | ".join(e["message"] for e in done["events"])
    assert "card of pi-1 saved" in messages and "environment alice-sys registered" in messages
    # The board is back in its own system, unchanged.
    assert await openssh_login(site, done) == "pi-1"

    envs = await _ok(await site.client.get("/api/admin/environments", headers=ADMIN))
    env = next(e for e in envs if e["name"] == "alice-sys")
    image = site.config.env_dir / "alice-sys.img.gz"
    assert env["owner"] == "alice@example.org" and env["state"] == "available"
    assert env["image"] == image.name and env["ssh_user"] == "pi"
    assert env["checksum"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert env["sector_start"] == site.env["sector_start"]
    assert env["size"] > 2 * GIB
    assert not list(site.config.env_dir.glob(".*.part"))  # no temporary file left
    # Taken now.
    r = await site.client.post(url, json={"name": "alice-sys"}, headers=USER)
    assert r.status_code == 422 and "already exists" in r.json()["detail"]

    # Offered to its owner, not to another user, who cannot deploy it either.
    form = await _ok(await site.client.get(f"/api/reservations/{pi2}/form", headers=USER))
    assert "alice-sys" in form[0]["choices"] and site.env["name"] in form[0]["choices"]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=4)
    body = {"filters": [{"nodes": ["pi-2"]}], "start": later.isoformat(), "duration_hours": 1}
    (bob_res,) = (await _ok(await site.client.post("/api/reservations", json=body, headers=BOB), 201))[
        "reservations"]
    form = await _ok(await site.client.get(f"/api/reservations/{bob_res['id']}/form", headers=BOB))
    assert "alice-sys" not in form[0]["choices"] and site.env["name"] in form[0]["choices"]
    r = await site.client.post(f"/api/reservations/{bob_res['id']}/deploy", headers=BOB,
                               json={"environment": "alice-sys", "ssh_keys": [site.pub]})
    assert r.status_code == 422 and "alice-sys" in r.text

    # Deployed on the other board, it is that board's system: its name, the owner's key.
    await deploy(site, pi2, environment="alice-sys", part_size="2gb")
    res2 = await wait_for(site, pi2, ("deployed", "failed"), timeout=120)
    assert res2["status"] == "deployed", (res2["error"], res2["events"][-6:])
    assert res2["connection"]["environment"] == "alice-sys"
    assert await openssh_login(site, res2) == "pi-2"
