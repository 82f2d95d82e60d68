"""The environment factory: `piseduce-node read-image`, the raspberry `register_env` process through
the real API and engine against the simulated cluster, and the web UI page."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import html
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.agent_helpers import ADMIN
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.raspberry_helpers import USER
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import (
    AgentProcess,
    Browser,
    add_agent_form,
    add_user,
    deployed_on,
    fast_argon2,
    reservation,
    webui_client,
    write_webui_config,
)
from piseduce.node import disk
from piseduce.sim.images import build_environment
from test_raspberry_e2e import Site, _ok, deploy, image_dir, openssh_login, reserve, site, wait_for

__all__ = ["fast_argon2", "image_dir", "site"]  # fixtures defined in the modules above, used here

GIB = 1024**3
MIB = 1024**2
FLASH_RE = re.compile(r'<div class="flash (\w+)" role="(?:status|alert)">([^<]*)</div>')


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


def gzip_contains(path: Path, needle: bytes) -> bool:
    """Whether the decompressed stream holds `needle` (read a megabyte at a time)."""
    tail = b""
    with gzip.open(path, "rb") as f:
        while data := f.read(MIB):
            if needle in tail + data:
                return True
            tail = data[-len(needle):]
    return False


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


@pytest.mark.slow
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

    # In an env_path every account may write to, another account could swap the saved image.
    mode = site.config.env_dir.stat().st_mode
    os.chmod(site.config.env_dir, mode | 0o777)
    try:
        r = await site.client.post(url, json={"name": "alice-sys"}, headers=USER)
    finally:
        os.chmod(site.config.env_dir, mode)
    assert r.status_code == 409 and "writable by every account" in r.json()["detail"], r.text

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
    # The user's card (their password hashes, their keys) is theirs only.
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
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
    # ...with its own host key: pi-1's (saved on its card at its first boot) is not in the image,
    # and pi-2 does not answer with it.
    assert res2["connection"]["host_key"] != done["connection"]["host_key"]
    assert res2["connection"]["host_key_fingerprint"] != done["connection"]["host_key_fingerprint"]
    assert not gzip_contains(image, b"OPENSSH PRIVATE KEY")


# ---------------------------------------------------------------- web UI page


def flash_texts(html_text: str) -> list[tuple[str, str]]:
    return [(k, html.unescape(m)) for k, m in FLASH_RE.findall(html_text)]


def post_and_follow(b: Browser, data: dict[str, str], status: int = 303) -> list[tuple[str, str]]:
    """The messages after a POST: a refusal comes back at once (400) with the form still filled in
    (the node chosen and the name typed); a success redirects to the page (303)."""
    r = b.post("/env-factory", data, page="/env-factory")
    assert r.status_code == status, r.text
    if status == 400:
        assert f'value="{html.escape(data["name"].strip())}"' in r.text
        assert f'<option value="{data["node"]}" selected>' in r.text or "Choose one of your" in r.text
        return flash_texts(r.text)
    return flash_texts(b.get(r.headers["location"]).text)


@pytest.mark.slow
def test_webui_page_lists_own_deployed_nodes_and_forwards_the_request(
    tmp_path: Path, fast_argon2: None
) -> None:
    from piseduce.agent.models import Environment
    from piseduce.config import load_agent_config
    from piseduce.db import make_engine, session_factory

    agent = AgentProcess(tmp_path / "lab-a", nodes=2, driver="helpers.env_factory_driver:FactoryDriver")
    try:
        mine = deployed_on(agent, "alice@example.org", "pi-1")
        bobs = deployed_on(agent, "bob@example.org", "pi-2")
        engine = make_engine(load_agent_config(agent.config, check_files=False).database_url)
        with session_factory(engine)() as s, s.begin():
            s.add(Environment(name="taken-env", image="taken.img.gz"))
        engine.dispose()

        # The agent's first answers can take over the helpers' 1 s deadline on a loaded machine
        # (CI saw an empty list): this test is about what the page lists, not about deadlines.
        config = write_webui_config(tmp_path / "webui", agent_timeout_seconds=5.0)
        add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
        add_user(config, "alice@example.org", "alice-password")
        with webui_client(config) as admin:
            admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
            r = admin.post("/admin/agents", add_agent_form("lab-a", agent.port), page="/admin/agents")
            assert r.status_code == 303, r.text
        with webui_client(config) as b:
            b.login("alice@example.org", "alice-password")
            page = b.get("/env-factory")
            assert page.status_code == 200
            assert 'href="/env-factory"' in page.text
            options = re.findall(r'<option value="([^"]+)"[^>]*>([^<]*)</option>', page.text)
            assert [label for _, label in options] == ["pi-1 on lab-a (deployed with tiny)"], page.text
            ref = options[0][0]
            assert ref.endswith(f":{mine}")
            # Manage offers the factory on the deployed node, which the page then preselects.
            manage = b.get("/manage").text
            links = re.findall(r'save-env" href="/env-factory\?node=([^"]+)"', manage)
            assert links == [ref.replace(":", "%3A")]
            chosen = b.get(f"/env-factory?node={ref}").text
            assert f'<option value="{ref}" selected>' in chosen

            # CSRF enforced: a form without the token changes nothing.
            r = b.post("/env-factory", {"node": ref, "name": "alice-env"}, csrf=False)
            assert r.status_code == 403 and "CSRF" in r.text
            assert reservation(agent, "alice@example.org", mine)["status"] == "deployed"

            assert post_and_follow(b, {"node": ref, "name": "../bad"}, 400)[0][0] == "error"
            # Another user's reservation, even with a forged reference, is not sent.
            forged = ref.split(":")[0] + f":{bobs}"
            kind, text = post_and_follow(b, {"node": forged, "name": "alice-env"}, 400)[0]
            assert kind == "error" and "Choose one of your deployed" in text
            # The agent's refusal is shown in words.
            kind, text = post_and_follow(b, {"node": ref, "name": "taken-env"}, 400)[0]
            assert kind == "error" and "taken-env already exists" in text

            kind, text = post_and_follow(b, {"node": ref, "name": "alice-env"})[0]
            assert kind == "ok" and "pi-1 is being saved as the environment alice-env" in text
            assert "Manage" in text

            def finished() -> bool:
                res = reservation(agent, "alice@example.org", mine)
                msgs = [e["message"] for e in res["events"]]
                return res["status"] == "deployed" and "register_env finished" in msgs

            wait_until_sync(finished, timeout=30)
            events = [e["message"] for e in reservation(agent, "alice@example.org", mine)["events"]]
            assert any("saving pi-1 as environment alice-env" in m for m in events)
            # Bob's node was left alone.
            bob = reservation(agent, "bob@example.org", bobs)
            assert not any("environment" in e["message"] and "saving" in e["message"] for e in bob["events"])
    finally:
        agent.stop()
