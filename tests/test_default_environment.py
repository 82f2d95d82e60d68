"""The environment a deploy form preselects is the operator's choice (the admin-set default), else
the newest public one, never a user's private image."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx

from helpers.agent_helpers import ADMIN
from helpers.raspberry_helpers import sessions_for
from helpers.switch_fixtures import Ports
from piseduce.agent.drivers.base import NodeView, ReservationView
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.config import load_agent_config

Api = tuple[httpx.AsyncClient, Ports, SwitchInfo, Path]


def _reservation(owner: str) -> ReservationView:
    now = dt.datetime.now(dt.UTC)
    return ReservationView(id=1, node=NodeView(name="pi-1"), owner=owner, bin="", start=now, end=now,
                           status="configuring")


async def _form_default(driver: RaspberryDriver, owner: str) -> tuple[str | None, list[str]]:
    (env_field,) = [f for f in await driver.deploy_form(_reservation(owner), None) if f.name == "environment"]
    return env_field.default, env_field.choices


async def test_a_private_environment_is_never_everyones_default(api: Api, tmp_path: Path) -> None:  # noqa: F811
    client, _, _, env_dir = api
    for name in ("aaa-mine", "raspios", "ubuntu", "old"):
        (env_dir / f"{name}.img").write_bytes(name.encode())

    async def add(name: str, **extra: object) -> None:
        body = {"name": name, "image": f"{name}.img", "ssh_user": "pi", **extra}
        r = await client.post("/api/admin/environments", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text

    # Alice's saved environment sorts first by name; ubuntu is the newest public image.
    await add("old", state="disabled")
    await add("raspios")
    await add("aaa-mine", owner="alice@example.org")
    await add("ubuntu")
    driver = RaspberryDriver(load_agent_config(tmp_path / "config_agent.json"),
                             sessions_for(load_agent_config(tmp_path / "config_agent.json")))
    try:
        assert await _form_default(driver, "bob@example.org") == ("ubuntu", ["raspios", "ubuntu"])
        # Even its owner does not get a private image preselected: the operator's choice comes first.
        everything = ["aaa-mine", "raspios", "ubuntu"]
        assert await _form_default(driver, "alice@example.org") == ("ubuntu", everything)

        r = await client.post("/api/admin/environments/raspios/default", headers=ADMIN)
        assert r.status_code == 200 and r.json()["default"] is True and r.json()["preselected"] is True
        for owner in ("alice@example.org", "bob@example.org"):
            assert (await _form_default(driver, owner))[0] == "raspios"
        listing = {e["name"]: (e["default"], e["preselected"])
                   for e in (await client.get("/api/admin/environments", headers=ADMIN)).json()}
        assert listing == {"aaa-mine": (False, False), "old": (False, False), "raspios": (True, True),
                           "ubuntu": (False, False)}

        # Refused: a private image, a disabled one, an unknown one.
        r = await client.post("/api/admin/environments/aaa-mine/default", headers=ADMIN)
        assert r.status_code == 409 and r.json()["detail"] == (
            "environment aaa-mine is private to alice@example.org: only a public environment can be "
            "everyone's default")
        r = await client.post("/api/admin/environments/old/default", headers=ADMIN)
        assert r.status_code == 409 and "disabled" in r.json()["detail"]
        assert (await client.post("/api/admin/environments/ghost/default", headers=ADMIN)).status_code == 404
        assert (await _form_default(driver, "bob@example.org"))[0] == "raspios"

        # One default at a time; unsetting it falls back to the newest public image.
        r = await client.post("/api/admin/environments/ubuntu/default", headers=ADMIN)
        assert r.status_code == 200
        defaults = [e["name"] for e in (await client.get("/api/admin/environments", headers=ADMIN)).json()
                    if e["default"]]
        assert defaults == ["ubuntu"]
        r = await client.delete("/api/admin/environments/ubuntu/default", headers=ADMIN)
        assert r.status_code == 200 and r.json()["default"] is False and r.json()["preselected"] is True
        # A default made private stops being anyone's default.
        await client.post("/api/admin/environments/raspios/default", headers=ADMIN)
        body = {"name": "raspios", "image": "raspios.img", "ssh_user": "pi", "owner": "bob@example.org"}
        r = await client.put("/api/admin/environments/raspios", json=body, headers=ADMIN)
        assert r.status_code == 200 and r.json()["default"] is False
        assert await _form_default(driver, "alice@example.org") == ("ubuntu", ["aaa-mine", "ubuntu"])
        assert (await _form_default(driver, "bob@example.org")) == ("ubuntu", ["raspios", "ubuntu"])
        # Users may not choose it.
        r = await client.post("/api/admin/environments/ubuntu/default",
                              headers={**ADMIN, "X-Piseduce-Role": "user"})
        assert r.status_code == 403
    finally:
        await driver.close()
