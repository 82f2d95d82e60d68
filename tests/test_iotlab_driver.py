"""The iot-lab driver against the IoT-LAB emulator: first its functions and processes directly, then
through the real agent API (ASGI) and executor."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.iotlab_fixtures import (
    SITE,
    Emulator,
    agent_config,
    reservation_view,
    run_process,
    running_emulator,
    tiny_elf,
)
from piseduce.agent.drivers.base import (
    ActionRefused,
    BookingRefused,
    CredentialsRequired,
    InvalidParams,
    StepError,
)
from piseduce.agent.drivers.iotlab import inventory as inventory_module
from piseduce.agent.drivers.iotlab.driver import IotlabDriver

M3_1 = f"m3-1.{SITE}.iot-lab.info"
CREDENTIALS_HINT = "set them in Settings → IoT-LAB Credentials"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    # a8-2 is Dead, a8-1 is held by another user's long experiment
    with running_emulator(busy=1, dead=1) as emu:
        yield emu


@pytest.fixture
def driver(emulator: Emulator, tmp_path: Path) -> IotlabDriver:
    return IotlabDriver(agent_config(tmp_path, emulator.api_url), None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- inventory and availability


async def test_sync_keeps_alive_and_busy_nodes_and_falls_back_on_its_last_list(
    emulator: Emulator, driver: IotlabDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CredentialsRequired):
        await driver.sync_nodes(None)  # the API wants an account, and nothing was synced yet
    specs = await driver.sync_nodes(emulator.creds("alice"))
    assert specs is not None
    by_name = {s.name: s for s in specs}
    assert sorted(by_name) == ["a8-1", "m3-1", "m3-2", "m3-3", "m3-4", "m3-5", "m3-6"]  # a8-2 is Dead
    m3 = by_name["m3-1"]
    assert m3.status == "available"
    assert m3.properties["archi"] == "m3:at86rf231" and m3.properties["model"] == "m3"
    assert isinstance(m3.properties["x"], float) and m3.properties["site"] == SITE
    assert m3.attrs["network_address"] == M3_1
    assert by_name["a8-1"].attrs["iotlab_state"] == "Busy"

    emulator.site.nodes[M3_1].state = "Suspected"
    assert len(await driver.sync_nodes(emulator.creds("alice")) or []) == 7  # within the burst window
    monkeypatch.setattr(inventory_module, "INVENTORY_BURST_SECONDS", 0.0)
    assert "m3-1" not in {s.name for s in await driver.sync_nodes(emulator.creds("alice")) or []}
    # refused (no account): the last list is served rather than an empty inventory
    assert len(await driver.sync_nodes(None) or []) == 6


async def test_remote_busy_and_booking_checks(emulator: Emulator, driver: IotlabDriver) -> None:
    now = dt.datetime.now(dt.UTC)
    alice = emulator.creds("alice")
    assert await driver.remote_busy(now, now + dt.timedelta(hours=2), None) == []
    busy = await driver.remote_busy(now, now + dt.timedelta(hours=2), alice)
    assert [(b.node, b.end) for b in busy] == [("a8-1", now + dt.timedelta(hours=2))]
    assert "outside PiSeduce" in busy[0].reason

    with pytest.raises(CredentialsRequired):
        await driver.on_booked([reservation_view(1)], None)
    with pytest.raises(CredentialsRequired):
        await driver.on_booked([reservation_view(1)], {"user": "alice", "password": "wrong"})
    with pytest.raises(BookingRefused, match="a8-1 is busy on IoT-LAB"):
        await driver.on_booked([reservation_view(1), reservation_view(2, "a8-1")], alice)
    assert await driver.on_booked([reservation_view(1)], alice) == {1: {"experiments": []}}
    # experiments this agent submitted are in its own calendar, not "outside"
    r = reservation_view(3, "m3-2")
    await run_process(driver, "deploy", r, alice)
    busy = await driver.remote_busy(now, now + dt.timedelta(hours=2), emulator.creds("bob"))
    assert {b.node for b in busy} == {"a8-1"}


# ---------------------------------------------------------------- deploy form


async def test_form_lists_firmwares_and_the_users_profiles(emulator: Emulator, driver: IotlabDriver) -> None:
    fields = {f.name: f for f in await driver.deploy_form(reservation_view(1), emulator.creds("alice"))}
    assert fields["firmware"].choices == ["", "iotlab_a8_m3_tutorial.elf", "m3_tutorial.elf"]
    assert fields["profile"].choices == ["", "power_mon"]
    assert fields["firmware_file"].kind == "file"
    # A page user picks the file as it is (the web UI encodes it): the help says so, and says
    # what an API client sends.
    help_text = fields["firmware_file"].help
    assert "(base64)" not in help_text and "as it is" in help_text and "API" in help_text, help_text
    bob_fields = {f.name: f for f in await driver.deploy_form(reservation_view(1), emulator.creds("bob"))}
    assert bob_fields["profile"].choices == [""]
    with pytest.raises(CredentialsRequired):
        await driver.deploy_form(reservation_view(1), None)


@pytest.mark.parametrize(
    "name",
    [
        "../secret.key",
        "..",
        "/etc/passwd",
        "sub/m3_tutorial.elf",
        "m3_tutorial.elf/..",
        ".hidden",
        "a b.elf",
        "x..elf",
    ],
)
async def test_firmware_names_never_leave_the_firmware_folder(
    emulator: Emulator, driver: IotlabDriver, name: str
) -> None:
    with pytest.raises(InvalidParams) as err:
        await driver.validate_deploy(reservation_view(1), {"firmware": name}, emulator.creds("alice"))
    assert err.value.field == "firmware"


async def test_form_validation(emulator: Emulator, driver: IotlabDriver, tmp_path: Path) -> None:
    alice = emulator.creds("alice")
    r = reservation_view(7)
    # a symlink in the folder that leads outside is neither offered nor accepted
    outside = tmp_path / "outside.elf"
    outside.write_bytes(tiny_elf("outside"))
    os.symlink(outside, driver.firmwares.folder / "link.elf")
    assert "link.elf" not in driver.firmwares.names()
    with pytest.raises(InvalidParams):
        await driver.validate_deploy(r, {"firmware": "link.elf"}, alice)
    with pytest.raises(InvalidParams, match="no firmware named"):
        await driver.validate_deploy(r, {"firmware": "missing.elf"}, alice)
    with pytest.raises(InvalidParams, match="no monitoring profile"):
        await driver.validate_deploy(r, {"profile": "power_mon"}, emulator.creds("bob"))
    with pytest.raises(InvalidParams) as err:
        await driver.validate_deploy(r, {"profile": "../../x"}, alice)
    assert err.value.field == "profile"

    assert await driver.validate_deploy(
        r, {"firmware": "m3_tutorial.elf", "profile": "power_mon"}, alice
    ) == {
        "firmware": "m3_tutorial.elf",
        "firmware_source": "folder",
        "profile": "power_mon",
    }
    assert await driver.validate_deploy(r, {"environment": "ignored"}, alice) == {
        "firmware": "",
        "firmware_source": "",
        "profile": "",
    }

    upload = base64.b64encode(tiny_elf("mine")).decode()
    params = await driver.validate_deploy(
        r, {"firmware_file": upload, "firmware_file_name": "my_app.elf"}, alice
    )
    assert params["firmware_source"] == "upload"
    assert driver.firmwares.uploaded(7, "my_app.elf").read_bytes() == tiny_elf("mine")
    assert "my_app.elf" not in driver.firmwares.names()
    for bad, field in (
        ({"firmware_file": upload, "firmware_file_name": "../my_app.elf"}, "firmware_file_name"),
        ({"firmware_file": upload}, "firmware_file_name"),
        ({"firmware_file": "%%%not base64", "firmware_file_name": "x.elf"}, "firmware_file"),
        (
            {"firmware_file": base64.b64encode(b"text").decode(), "firmware_file_name": "x.elf"},
            "firmware_file",
        ),
        ({"firmware_file": upload, "firmware_file_name": "x.sh"}, "firmware_file_name"),
        (
            {"firmware_file": upload, "firmware_file_name": "x.elf", "firmware": "m3_tutorial.elf"},
            "firmware_file",
        ),
    ):
        with pytest.raises(InvalidParams) as err:
            await driver.validate_deploy(r, bad, alice)
        assert err.value.field == field, bad


# ---------------------------------------------------------------- processes


async def test_deploy_submits_one_experiment_and_follows_it_to_running(
    emulator: Emulator, driver: IotlabDriver
) -> None:
    alice = emulator.creds("alice")
    params = {"firmware": "m3_tutorial.elf", "firmware_source": "folder", "profile": "power_mon"}
    r = reservation_view(11, params=params)
    ctx = await run_process(driver, "deploy", r, alice)
    exp_id = r.driver_state["experiment_id"]
    exp = emulator.experiment(exp_id)
    assert exp["state"] == "Running" and exp["user"] == "alice"
    assert exp["nodes"] == [M3_1]
    assert exp["name"] == f"piseduce_{SITE}_r11"
    assert exp["submitted_duration"] in (59, 60)  # what remains of the 1 h reservation, never more
    assert exp["firmwareassociations"] == [{"firmwarename": "m3_tutorial.elf", "nodes": [M3_1]}]
    assert exp["profileassociations"] == [{"profilename": "power_mon", "nodes": [M3_1]}]
    assert r.connection == {
        "site": SITE,
        "nodes": [M3_1],
        "experiment_id": exp_id,
        "login": "alice",
        "host": f"{SITE}.iot-lab.info",
        "user": "alice",
        "ssh": f"ssh alice@{SITE}.iot-lab.info",
    }
    assert driver.connection_info(r) == r.connection
    assert any("Running" in m for _, m in ctx.events)
    assert not any(alice["password"] in m for _, m in ctx.events)

    # a second deploy of the same reservation after a crash adopts the experiment (same name, node)
    r.driver_state.pop("experiment_id")
    r.driver_state["experiments"] = []
    await driver.processes()["deploy"].steps[1].run(await _ctx(driver, r, "deploy", alice))
    assert r.driver_state["experiment_id"] == exp_id
    assert len(emulator.site.experiments) == 2  # the other user's and ours, no duplicate


async def _ctx(driver: IotlabDriver, r: Any, process: str, creds: dict[str, str]) -> Any:
    from helpers.iotlab_fixtures import MiniContext

    return MiniContext(r, driver.config, process, creds)


async def test_a_future_reservation_is_submitted_for_its_start(
    emulator: Emulator, driver: IotlabDriver
) -> None:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)
    r = reservation_view(12, start=start, hours=2)
    ctx = await _ctx(driver, r, "deploy", emulator.creds("alice"))
    await driver.processes()["deploy"].steps[1].run(ctx)
    exp = emulator.experiment(r.driver_state["experiment_id"])
    assert exp["reservation"] == int(start.timestamp()) and exp["submitted_duration"] == 120
    assert exp["state"] == "Waiting"
    assert not await driver.processes()["deploy"].steps[2].done(ctx)  # type: ignore[misc]


async def test_refused_experiment_fails_with_the_testbeds_message(
    emulator: Emulator, driver: IotlabDriver
) -> None:
    emulator.faults(submit_error="You have reached your experiments quota")
    with pytest.raises(
        StepError, match="IoT-LAB refused the experiment: You have reached your experiments quota"
    ):
        await run_process(driver, "deploy", reservation_view(21), emulator.creds("alice"))
    emulator.faults(submit_error="", launch_error="flash failed: firmware too large")
    r = reservation_view(22, params={"firmware": "m3_tutorial.elf", "firmware_source": "folder"})
    with pytest.raises(StepError) as err:
        await run_process(driver, "deploy", r, emulator.creds("alice"))
    assert "ended in state Error" in str(err.value) and "flash failed: firmware too large" in str(err.value)
    assert M3_1 in str(err.value)


async def test_missing_or_wrong_credentials_fail_the_deployment_with_a_hint(
    emulator: Emulator, driver: IotlabDriver
) -> None:
    with pytest.raises(StepError, match=CREDENTIALS_HINT):
        await run_process(driver, "deploy", reservation_view(31), None)
    with pytest.raises(StepError, match=CREDENTIALS_HINT) as err:
        await run_process(driver, "deploy", reservation_view(31), {"user": "alice", "password": "not-it"})
    assert "not-it" not in str(err.value)


async def test_destroy_redeploy_reboot_and_data(emulator: Emulator, driver: IotlabDriver) -> None:
    alice, bob = emulator.creds("alice"), emulator.creds("bob")
    upload = base64.b64encode(tiny_elf("uploaded")).decode()
    r = reservation_view(41)
    r.params = await driver.validate_deploy(
        r, {"firmware_file": upload, "firmware_file_name": "mine.elf"}, alice
    )
    await run_process(driver, "deploy", r, alice)
    first = r.driver_state["experiment_id"]

    await run_process(driver, "reboot", r, alice)

    archive = await driver.download_data(r, alice)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile(f"{first}/mine.elf")
        assert member is not None and member.read() == tiny_elf("uploaded")
    with pytest.raises(ActionRefused):  # IoT-LAB does not show bob alice's experiment
        await driver.download_data(r, bob)

    await run_process(driver, "redeploy", r, alice)
    second = r.driver_state["experiment_id"]
    assert second != first and r.driver_state["experiments"] == [first, second]
    assert emulator.experiment(first)["state"] == "Stopped"
    reloaded = emulator.experiment(second)
    assert reloaded["state"] == "Running" and reloaded["nodes"] == [M3_1]
    assert reloaded["firmwareassociations"] == [{"firmwarename": "mine.elf", "nodes": [M3_1]}]
    assert r.connection["experiment_id"] == second

    with pytest.raises(ActionRefused, match="cannot extend"):
        r.status = "deployed"
        await driver.on_extend(r, r.end + dt.timedelta(hours=1), alice)

    await run_process(driver, "destroy", r, alice)
    assert emulator.experiment(second)["state"] == "Stopped"
    assert r.driver_state["experiment_id"] is None and r.connection == {}
    assert not driver.firmwares.upload_dir(41).exists()
    # the archive of the last experiment stays available to its owner
    assert (await driver.download_data(r, alice))[:2] == b"\x1f\x8b"

    with pytest.raises(StepError, match="deploy first"):
        await run_process(driver, "reboot", r, alice)


async def test_destroy_touches_only_its_own_experiment_and_works_without_credentials(
    emulator: Emulator, driver: IotlabDriver
) -> None:
    alice = emulator.creds("alice")
    mine, other = reservation_view(51, "m3-3"), reservation_view(52, "m3-4")
    await run_process(driver, "deploy", mine, alice)
    await run_process(driver, "deploy", other, alice)
    await run_process(driver, "destroy", mine, alice)
    assert emulator.experiment(mine.driver_state["previous_id"])["state"] == "Stopped"
    assert emulator.experiment(other.driver_state["experiment_id"])["state"] == "Running"

    ctx = await run_process(driver, "destroy", other, None)
    assert any(level == "warning" and "ends by itself" in m for level, m in ctx.events)
    assert emulator.experiment(other.driver_state["previous_id"])["state"] == "Running"

    # refused credentials end a destroy too (the experiment ends at the reservation's end) ...
    third = reservation_view(53, "m3-5")
    await run_process(driver, "deploy", third, alice)
    ctx = await run_process(driver, "destroy", third, {"user": "alice", "password": "changed"})
    assert any(level == "warning" and "refused" in m for level, m in ctx.events)
    # ... but not a redeploy, which needs them to reload
    third.driver_state["experiment_id"] = third.driver_state["previous_id"]
    with pytest.raises(StepError, match=CREDENTIALS_HINT):
        await run_process(driver, "redeploy", third, {"user": "alice", "password": "changed"})


async def test_transient_api_errors_are_retried(emulator: Emulator, driver: IotlabDriver) -> None:
    emulator.faults(error_rate=0.25)
    r = reservation_view(61, params={"profile": "power_mon"})
    await run_process(driver, "deploy", r, emulator.creds("alice"))
    emulator.faults(error_rate=0.0)
    assert emulator.experiment(r.driver_state["experiment_id"])["state"] == "Running"
    assert len([e for e in emulator.site.experiments.values() if e.user == "alice"]) == 1


# ---------------------------------------------------------------- through the agent API and executor


def _headers(
    emu: Emulator, config: Any, user: str, login: str | None, *, admin: bool = False
) -> dict[str, str]:
    from helpers.agent_helpers import headers
    from piseduce.crypto import encrypt_json, load_fernet

    h = headers(user, admin=admin)
    if login is not None:
        h["X-Piseduce-Credentials"] = encrypt_json(load_fernet(config.key_path), emu.creds(login))
    return h


@pytest.fixture
def iot_agent(emulator: Emulator, make_agent_config: Any) -> Iterator[Any]:
    from helpers.iotlab_fixtures import firmware_folder
    from piseduce.agent.app import create_app

    config = make_agent_config(
        node_type="iot-lab",
        driver="",
        iot_site=SITE,
        iotlab_api_url=emulator.api_url,
        firmware_path="firmwares/",
        timeout_scale=0.05,
        poll_interval=0.05,
        turnaround_minutes=0,
    )
    firmware_folder(config.firmware_dir)
    app = create_app(config)
    yield app
    app.state.agent.engine.dispose()


async def _wait_status(
    client: httpx.AsyncClient, rid: int, h: dict[str, str], want: set[str]
) -> dict[str, Any]:
    import asyncio
    import time

    deadline = time.monotonic() + 20
    while True:
        body = (await client.get(f"/api/reservations/{rid}", headers=h)).json()
        if body["status"] in want:
            return dict(body)
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_through_the_agent_api_and_executor(emulator: Emulator, iot_agent: Any) -> None:
    import asyncio

    from piseduce.agent.engine.executor import Executor

    state = iot_agent.state.agent
    config = state.config
    alice = _headers(emulator, config, "alice@example.org", "alice")
    stop = asyncio.Event()
    executor = Executor(config, state.sessions, state.driver, "iotlab-test")
    task = asyncio.create_task(executor.run_forever(stop))
    transport = httpx.ASGITransport(app=iot_agent)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            r = await client.get("/api/nodes", headers=_headers(emulator, config, "alice@example.org", None))
            assert r.status_code == 403 and CREDENTIALS_HINT in r.json()["detail"]
            r = await client.get("/api/nodes", headers=alice)
            assert r.status_code == 200, r.text
            names = {n["name"] for n in r.json()}
            assert "m3-1" in names and "a8-2" not in names

            # a node held by another IoT-LAB user cannot be booked
            r = await client.post(
                "/api/reservations",
                json={"filters": [{"nodes": ["a8-1"]}], "duration_hours": 1},
                headers=alice,
            )
            assert r.status_code == 409, r.text
            r = await client.post(
                "/api/reservations",
                json={"filters": [{"nodes": ["m3-1"]}], "duration_hours": 1},
                headers=alice,
            )
            assert r.status_code == 201, r.text
            rid = r.json()["reservations"][0]["id"]

            form = {
                f["name"]: f
                for f in (await client.get(f"/api/reservations/{rid}/form", headers=alice)).json()
            }
            assert (
                "m3_tutorial.elf" in form["firmware"]["choices"] and "power_mon" in form["profile"]["choices"]
            )
            r = await client.post(
                f"/api/reservations/{rid}/deploy", json={"firmware": "../secret.key"}, headers=alice
            )
            assert r.status_code == 422 and "firmware" in r.json()["detail"]
            r = await client.post(
                f"/api/reservations/{rid}/deploy",
                json={"firmware": "m3_tutorial.elf", "profile": "power_mon"},
                headers=alice,
            )
            assert r.status_code == 202, r.text
            body = await _wait_status(client, rid, alice, {"deployed", "failed"})
            assert body["status"] == "deployed", body
            exp_id = body["connection"]["experiment_id"]
            assert body["connection"]["nodes"] == [M3_1]
            assert emulator.experiment(exp_id)["state"] == "Running"

            # the data archive: its owner only
            r = await client.get(f"/api/reservations/{rid}/data", headers=alice)
            assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
            with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
                assert f"{exp_id}/m3_tutorial.elf" in tar.getnames()
            bob = _headers(emulator, config, "bob@example.org", "bob")
            assert (await client.get(f"/api/reservations/{rid}/data", headers=bob)).status_code == 404
            root = _headers(emulator, config, "root@example.org", "bob", admin=True)
            assert (await client.get(f"/api/reservations/{rid}/data", headers=root)).status_code == 403
            no_creds = _headers(emulator, config, "alice@example.org", None)
            assert (await client.get(f"/api/reservations/{rid}/data", headers=no_creds)).status_code == 403

            r = await client.post(f"/api/reservations/{rid}/redeploy", headers=alice)
            assert r.status_code == 202, r.text
            body = await _wait_status(client, rid, alice, {"deployed", "failed"})
            assert body["status"] == "deployed" and body["connection"]["experiment_id"] != exp_id, body
            assert emulator.experiment(exp_id)["state"] == "Stopped"
            second = body["connection"]["experiment_id"]

            r = await client.post(f"/api/reservations/{rid}/destroy", headers=alice)
            assert r.status_code == 202, r.text
            body = await _wait_status(client, rid, alice, {"ended"})
            assert emulator.experiment(second)["state"] == "Stopped"

            # refused by IoT-LAB: the reservation fails with the testbed's message
            emulator.faults(submit_error="Invalid nodes state : [m3-2.strasbourg.iot-lab.info]")
            r = await client.post(
                "/api/reservations",
                json={"filters": [{"nodes": ["m3-2"]}], "duration_hours": 1},
                headers=alice,
            )
            rid2 = r.json()["reservations"][0]["id"]
            r = await client.post(f"/api/reservations/{rid2}/deploy", json={}, headers=alice)
            assert r.status_code == 202, r.text
            body = await _wait_status(client, rid2, alice, {"deployed", "failed"})
            assert body["status"] == "failed"
            assert "Invalid nodes state : [m3-2.strasbourg.iot-lab.info]" in body["error"]
            assert emulator.users["alice"] not in str(body)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_credentials_check_asks_the_iotlab_api(emulator: Emulator, iot_agent: Any) -> None:
    from piseduce.crypto import encrypt_json, load_fernet

    config = iot_agent.state.agent.config
    transport = httpx.ASGITransport(app=iot_agent)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        alice = _headers(emulator, config, "a@example.org", "alice")
        r = await client.post("/api/credentials/check", headers=alice)
        assert r.status_code == 200 and r.json()["valid"] is True, r.text
        assert r.json()["testbed"] == "FIT IoT-LAB" and r.json()["user"] == "alice"
        h = _headers(emulator, config, "a@example.org", None)
        h["X-Piseduce-Credentials"] = encrypt_json(
            load_fernet(config.key_path), {"user": "alice", "password": "wrong-password"}
        )
        r = await client.post("/api/credentials/check", headers=h)
        assert r.status_code == 200 and r.json()["valid"] is False, r.text
        assert "IoT-LAB refused the login 'alice'" in r.json()["message"]


# ---------------------------------------------------------------- energy (consumption profiles)


def _pin_frontend(emulator: Emulator, driver: IotlabDriver) -> None:
    """What the operator does: the frontend's address and its host key, pinned in the agent's config."""
    driver.config.iotlab_frontend = f"127.0.0.1:{emulator.frontend.port}"
    driver.energy.known_hosts().write_text(emulator.frontend.known_hosts_line)


async def test_energy_refused_without_a_pinned_frontend_or_a_power_measure(
    emulator: Emulator, driver: IotlabDriver
) -> None:
    alice = emulator.creds("alice")
    r = reservation_view(50)
    with pytest.raises(InvalidParams, match="host key"):
        await driver.validate_deploy(r, {"energy": True}, alice)
    _pin_frontend(emulator, driver)
    with pytest.raises(InvalidParams, match="expected true or false"):
        await driver.validate_deploy(r, {"energy": "yes"}, alice)
    emulator.site.users["alice"].profiles["radio_only"] = {
        "profilename": "radio_only", "nodearch": "m3", "power": "dc", "consumption": None,
        "radio": {"mode": "rssi", "channels": [11], "period": 1, "num_per_channel": 0},
    }
    with pytest.raises(InvalidParams, match="does not measure power"):
        await driver.validate_deploy(r, {"energy": True, "profile": "radio_only"}, alice)
    with pytest.raises(InvalidParams, match="m3 and a8 nodes only"):
        await driver.validate_deploy(reservation_view(51, node="wsn430-1"), {"energy": True}, alice)
    form = {f.name: f for f in await driver.deploy_form(r, alice)}
    assert form["energy"].kind == "checkbox" and form["energy"].default is False


async def test_energy_of_a_reservation_from_the_testbeds_consumption_files(
    emulator: Emulator, driver: IotlabDriver
) -> None:
    """Deploy with energy and no profile: the agent's key lands in the user's IoT-LAB keys (beside
    theirs), its profile on the node; after a redeploy and the destroy, the two experiments' OML
    files are read from the frontend over SFTP and their energy is the reservation's."""
    import asyncio

    alice = emulator.creds("alice")
    emulator.site.users["alice"].ssh_keys = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJx7e5hBMz3G0oiqHRrxmHEMdRQN8Yv0V2XJ0vHD5dVt me"
    ]
    _pin_frontend(emulator, driver)
    r = reservation_view(52)
    r.params = await driver.validate_deploy(r, {"energy": True}, alice)
    assert r.params["energy"] is True
    ctx = await run_process(driver, "deploy", r, alice)
    first = r.driver_state["experiment_id"]
    keys = emulator.site.users["alice"].ssh_keys
    assert len(keys) == 2 and keys[0].endswith(" me") and keys[1].endswith("piseduce-agent")
    assert emulator.experiment(first)["profileassociations"] == [
        {"profilename": "piseduce_energy_m3", "nodes": [M3_1]}
    ]
    assert any("SSH key added" in m for _, m in ctx.events)
    await asyncio.sleep(2.5)
    await run_process(driver, "redeploy", r, alice)
    await asyncio.sleep(2.5)
    assert "energy" not in r.driver_state  # measured once the experiments have stopped
    ctx = await run_process(driver, "destroy", r, alice)
    used = r.driver_state["energy"]
    # one measure each 0.56 s on two experiments of ~2.5 s each, an M3 drawing ~55 mW
    assert used["samples"] >= 6 and 0.03 < used["mean_w"] < 0.08 and used["peak_w"] < 0.1
    assert 2.0 < used["seconds"] < 30
    assert used["wh"] == pytest.approx(used["mean_w"] * used["seconds"] / 3600, abs=1e-4)
    assert any(m.startswith("Energy: ") for _, m in ctx.events)
    assert len(emulator.site.users["alice"].ssh_keys) == 2  # a second deployment adds no key twice
    # without energy asked, nothing is read
    r2 = reservation_view(53, node="m3-2")
    r2.params = await driver.validate_deploy(r2, {"energy": False}, alice)
    assert "energy" not in r2.params
    await run_process(driver, "deploy", r2, alice)
    await run_process(driver, "destroy", r2, alice)
    assert "energy" not in r2.driver_state


async def test_energy_unreadable_frontend_never_fails_the_destroy(
    emulator: Emulator, driver: IotlabDriver
) -> None:
    alice = emulator.creds("alice")
    _pin_frontend(emulator, driver)
    r = reservation_view(54)
    r.params = await driver.validate_deploy(r, {"energy": True}, alice)
    await run_process(driver, "deploy", r, alice)
    # a host key other than the pinned one: refused, never accepted silently
    other = emulator.frontend.known_hosts_line.split()[0]
    driver.energy.known_hosts().write_text(
        f"{other} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJx7e5hBMz3G0oiqHRrxmHEMdRQN8Yv0V2XJ0vHD5dVt\n"
    )
    ctx = await run_process(driver, "destroy", r, alice)
    assert emulator.experiment(r.driver_state["experiments"][0])["state"] == "Stopped"
    assert "energy" not in r.driver_state
    assert any(level == "warning" and "frontend could not be read" in m for level, m in ctx.events)


async def test_energy_through_the_agent_api_kept_after_the_end(emulator: Emulator, iot_agent: Any) -> None:
    """With the user's own power profile: deploy with energy through the agent's API, destroy; the
    reservation's energy is in its answer and in the list once ended, and stays there."""
    import asyncio

    from piseduce.agent.engine.executor import Executor

    state = iot_agent.state.agent
    config = state.config
    config.iotlab_frontend = f"127.0.0.1:{emulator.frontend.port}"
    config.resolve(config.iotlab_frontend_known_hosts).write_text(emulator.frontend.known_hosts_line)
    alice = _headers(emulator, config, "alice@example.org", "alice")
    bob = _headers(emulator, config, "bob@example.org", "bob")
    stop = asyncio.Event()
    task = asyncio.create_task(Executor(config, state.sessions, state.driver, "iotlab-e").run_forever(stop))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=iot_agent), base_url="http://a") as c:
            book = {"filters": [{"nodes": ["m3-3"]}], "duration_hours": 1}
            r = await c.post("/api/reservations", json=book, headers=alice)
            rid = r.json()["reservations"][0]["id"]
            r = await c.post(f"/api/reservations/{rid}/deploy", json={"energy": "on"}, headers=alice)
            assert r.status_code == 422 and "energy" in r.json()["detail"]
            r = await c.post(f"/api/reservations/{rid}/deploy", json={"energy": True, "profile": "power_mon"},
                             headers=alice)
            assert r.status_code == 202, r.text
            body = await _wait_status(c, rid, alice, {"deployed", "failed"})
            assert body["status"] == "deployed", body
            assert body.get("energy") is None
            # While it runs, the monitor's rounds store the node's power from IoT-LAB's measures:
            # the reservation shows its energy so far, as a Raspberry Pi's does.
            from piseduce.agent import monitor

            for _ in range(2):
                await asyncio.sleep(1)
                got = await state.driver.sample()
                assert [(k, n) for k, n, _w in got] == [("power", "m3-3")] and 0.03 < got[0][2] < 0.08
                monitor.store(state.sessions, dt.datetime.now(dt.UTC), got)
            so_far = (await c.get(f"/api/reservations/{rid}", headers=alice)).json()["energy"]
            assert so_far["final"] is False and so_far["samples"] == 2 and 0.03 < so_far["mean_w"] < 0.08
            assert (await c.post(f"/api/reservations/{rid}/destroy", headers=alice)).status_code == 202
            body = await _wait_status(c, rid, alice, {"ended"})
            used = body["energy"]
            assert used["final"] is True and used["samples"] >= 10 and 0.03 < used["mean_w"] < 0.08
            listed = {x["id"]: x for x in (await c.get("/api/reservations", headers=alice)).json()}
            assert listed[rid]["energy"] == used
            assert (await c.get(f"/api/reservations/{rid}", headers=bob)).status_code in (403, 404)
            await asyncio.sleep(0.5)
            assert (await c.get(f"/api/reservations/{rid}", headers=alice)).json()["energy"] == used
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
