"""Each deployment gives the board fresh SSH host keys (the user guide's promise): the deployment
removes the image's keys, and the board's first boot of its new system makes its own, as Raspberry
Pi OS's regenerate_ssh_host_keys does. The simulated board serves the key on its card, never a
fixed one of its own: the agent pins what the board serves, OpenSSH connects with that pinned
line, and the line of the previous deployment is refused after a redeploy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers.openssh_helpers import Login, run
from helpers.raspberry_helpers import USER
from helpers.rpi_fixtures import BOTH_MODES, mode_options, served_host_key
from helpers.rpi_site import Site, _ok, deploy, make_site, reserve, wait_for
from piseduce.sim.images import build_environment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("images")
    return folder, build_environment(folder, "raspios", size_mb=56, compress="gz")


@pytest.fixture(params=BOTH_MODES.args[1])
async def site(request: pytest.FixtureRequest, tmp_path: Path,
               image_dir: tuple[Path, dict[str, Any]]) -> AsyncIterator[Site]:
    async with make_site(tmp_path, image_dir, **mode_options(request.param)) as s:
        yield s


async def served_key(conn: dict[str, Any]) -> str:
    return await served_host_key(conn["host"], int(conn["port"]))


def pinned(conn: dict[str, Any]) -> str:
    return " ".join(str(conn["host_key"]).split()[:2])


async def ssh_hostname(login: Login) -> tuple[int, str, str]:
    done = await run(login.ssh("hostname"))
    return done.returncode, done.stdout.strip(), done.stderr


def login_for(site: Site, name: str, conn: dict[str, Any]) -> Login:
    """OpenSSH with strict checking and only this connection's pinned known_hosts line."""
    folder = site.tmp / name
    folder.mkdir()
    return Login.of(folder, conn, site.key)


async def action_done(site: Site, rid: int, action: str, times: int) -> dict[str, Any]:
    """The reservation once `action` has finished `times` times (its events repeat per run)."""
    message = f"{action} finished"
    await wait_until_async(site, rid, message, times)
    res = await wait_for(site, rid, ("failed",), events=(message,))
    assert res["status"] == "deployed", (res["error"], res["events"][-6:])
    return res


async def wait_until_async(site: Site, rid: int, message: str, times: int) -> None:
    async def count() -> int:
        r = await _ok(await site.client.get(f"/api/reservations/{rid}", headers=USER))
        if r["status"] == "failed":
            raise AssertionError((r["error"], r["events"][-6:]))
        return sum(e["message"] == message for e in r["events"])

    for _ in range(1200):
        if await count() >= times:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{message!r} not seen {times} times")


async def test_each_deployment_gives_the_board_a_fresh_host_key(site: Site) -> None:
    (rid,) = await reserve(site, ["pi-1"])
    await deploy(site, rid)
    first = await wait_for(site, rid, ("deployed", "failed"))
    assert first["status"] == "deployed", (first["error"], first["events"][-6:])
    conn1 = first["connection"]
    assert pinned(conn1) == await served_key(conn1)
    login1 = login_for(site, "first", conn1)
    code, out, err = await ssh_hostname(login1)
    assert (code, out) == (0, "pi-1"), err
    # a reboot is not a deployment: the system keeps its key
    await _ok(await site.client.post(f"/api/reservations/{rid}/reboot", headers=USER), 202)
    again = await action_done(site, rid, "reboot", 1)
    assert pinned(again["connection"]) == pinned(conn1) == await served_key(conn1)

    fingerprints = {conn1["host_key_fingerprint"]}
    for n in (1, 2):
        await _ok(await site.client.post(f"/api/reservations/{rid}/redeploy", headers=USER), 202)
        conn = (await action_done(site, rid, "redeploy", n))["connection"]
        assert conn["host_key_fingerprint"] not in fingerprints, (n, conn["host_key_fingerprint"])
        fingerprints.add(conn["host_key_fingerprint"])
        assert pinned(conn) == await served_key(conn)
        code, out, err = await ssh_hostname(login_for(site, f"redeploy{n}", conn))
        assert (code, out) == (0, "pi-1"), err
        # the line pinned by the first deployment no longer matches: OpenSSH refuses
        code, out, err = await ssh_hostname(login1)
        assert code == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in err, (code, err)
