"""The IoT-LAB emulator, driven by iotlabcli's own functions (the client the driver uses) and raw HTTP."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError

import httpx
import pytest
from iotlabcli import experiment, rest

from helpers.iotlab_fixtures import PROFILE, SITE, Emulator, running_emulator, tiny_elf
from piseduce.sim.iotlab.records import ids_string, parse_counts

M3_1 = f"m3-1.{SITE}.iot-lab.info"
M3_2 = f"m3-2.{SITE}.iot-lab.info"


def api_for(emu: Emulator, login: str, password: str | None = None) -> rest.Api:
    api = rest.Api(login, password if password is not None else emu.users[login])
    api.url = emu.api_url  # iotlabcli's documented per-instance override of its class attribute
    return api


def wait_state(api: rest.Api, exp_id: int, states: set[str], timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = experiment.get_experiment(api, exp_id)
        if info["state"] in states or time.monotonic() > deadline:
            return info
        time.sleep(0.02)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with running_emulator() as emu:
        yield emu


@pytest.fixture
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "m3_tutorial.elf"
    path.write_bytes(tiny_elf("tutorial"))
    return path


def test_iotlabcli_submit_get_data_stop_reload(emulator: Emulator, firmware: Path) -> None:
    api = api_for(emulator, "alice")
    assert api.check_credential()
    resources = [experiment.exp_resources([M3_1, M3_2], str(firmware), PROFILE["profilename"])]
    exp_id = experiment.submit_experiment(api, "exp1", 20, resources)["id"]

    seen = {experiment.get_experiment(api, exp_id)["state"]}
    info = wait_state(api, exp_id, {"Running"})
    seen.add(info["state"])
    assert info["state"] == "Running" and seen <= {"Waiting", "toLaunch", "Launching", "Running"}
    assert info["user"] == "alice" and info["name"] == "exp1" and info["submitted_duration"] == 20
    assert info["nodes"] == [M3_1, M3_2]
    assert info["firmwareassociations"] == [{"firmwarename": "m3_tutorial.elf", "nodes": [M3_1, M3_2]}]
    assert info["profileassociations"] == [{"profilename": "power_mon", "nodes": [M3_1, M3_2]}]
    assert info["deploymentresults"] == {"0": [M3_1, M3_2]}
    # iotlabcli's own wait helper agrees
    assert experiment.wait_experiment(api, exp_id, step=0, timeout=2) == "Running"

    nodes = api.get_experiment_info(exp_id, "nodes")["items"]
    assert {n["network_address"] for n in nodes} == {M3_1, M3_2} and all(n["state"] == "Busy" for n in nodes)
    running = api.get_experiments(state="Running")["items"]
    assert [e["id"] for e in running] == [exp_id]

    archive = api.get_experiment_info(exp_id, "data")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = set(tar.getnames())
        assert names == {f"{exp_id}/{exp_id}.json", f"{exp_id}/m3_tutorial.elf"}
        member = tar.extractfile(f"{exp_id}/m3_tutorial.elf")
        assert member is not None and member.read() == firmware.read_bytes()

    assert api.node_command("reset", exp_id, [M3_1]) == {"0": [M3_1]}

    experiment.stop_experiment(api, exp_id)
    assert wait_state(api, exp_id, {"Stopped"})["state"] == "Stopped"
    nodes_after = {n["network_address"]: n["state"] for n in api.get_nodes(site=SITE)["items"]}
    assert nodes_after[M3_1] == "Alive"

    new_id = experiment.reload_experiment(api, exp_id, duration=5)["id"]
    assert new_id != exp_id
    reloaded = wait_state(api, new_id, {"Running"})
    assert reloaded["state"] == "Running" and reloaded["submitted_duration"] == 5
    assert (
        reloaded["nodes"] == [M3_1, M3_2] and reloaded["firmwareassociations"] == info["firmwareassociations"]
    )


def test_credentials_and_ownership(emulator: Emulator, firmware: Path) -> None:
    assert not api_for(emulator, "alice", "wrong-password").check_credential()
    r = httpx.get(f"{emulator.api_url}nodes")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert r.json()["code"] == 401
    assert httpx.get(f"{emulator.api_url}sites").status_code == 200  # public, as on the real testbed

    alice, bob = api_for(emulator, "alice"), api_for(emulator, "bob")
    exp_id = experiment.submit_experiment(alice, None, 10, [experiment.exp_resources([M3_1], str(firmware))])[
        "id"
    ]
    for call in (
        lambda: experiment.get_experiment(bob, exp_id),
        lambda: bob.get_experiment_info(exp_id, "data"),
        lambda: experiment.stop_experiment(bob, exp_id),
        lambda: experiment.reload_experiment(bob, exp_id),
    ):
        with pytest.raises(HTTPError) as err:
            call()
        assert err.value.code == 404
    assert bob.get_experiments(state="Waiting,toLaunch,Launching,Running")["items"] == []
    # others' experiments are visible in the testbed-wide running list, with their nodes
    running = bob.get_running_experiments()["items"]
    assert [(e["id"], e["user"], e["nodes"]) for e in running] == [(exp_id, "alice", [M3_1])]
    # bob has no profiles; alice's profile is hers only
    assert bob.get_profiles() == [] and alice.get_profiles()[0]["profilename"] == "power_mon"
    with pytest.raises(HTTPError) as err:
        experiment.submit_experiment(bob, None, 10, [experiment.exp_resources([M3_2], None, "power_mon")])
    assert err.value.code == 500 and "power_mon" in str(err.value.msg)


def test_refusals_and_faults(emulator: Emulator, firmware: Path) -> None:
    api = api_for(emulator, "alice")
    emulator.site.nodes[M3_2].state = "Dead"
    with pytest.raises(HTTPError) as err:
        experiment.submit_experiment(api, None, 10, [experiment.exp_resources([M3_2])])
    assert err.value.code == 500 and "Invalid nodes state" in str(err.value.msg)
    with pytest.raises(HTTPError) as err:
        experiment.submit_experiment(
            api, None, 10, [experiment.exp_resources([f"m3-99.{SITE}.iot-lab.info"])]
        )
    assert "Invalid nodes list" in str(err.value.msg)

    emulator.faults(submit_error="Maximum number of experiments reached")
    with pytest.raises(HTTPError) as err:
        experiment.submit_experiment(api, None, 10, [experiment.exp_resources([M3_1])])
    assert err.value.code == 500 and "Maximum number of experiments reached" in str(err.value.msg)
    emulator.faults(submit_error="", launch_error="flash failed: firmware does not fit")
    exp_id = experiment.submit_experiment(api, None, 10, [experiment.exp_resources([M3_1], str(firmware))])[
        "id"
    ]
    info = wait_state(api, exp_id, {"Error"})
    assert info["state"] == "Error" and info["deploymentresults"] == {"1": [M3_1]}
    with pytest.raises(RuntimeError, match="Error"):
        experiment.wait_experiment(api, exp_id, step=0, timeout=1)

    emulator.faults(launch_error="", error_rate=1.0)
    with pytest.raises(HTTPError) as err:
        api.get_experiments()
    assert err.value.code == 503
    emulator.faults(error_rate=0.0)
    assert api.get_experiments(state="Error")["total"] == 1

    # bad bodies are 400s with the testbed's error format, never 5xx
    auth = ("alice", emulator.users["alice"])
    r = httpx.post(f"{emulator.api_url}experiments", auth=auth, files={"x.json": b"{}"})
    assert r.status_code == 400 and "new_exp.json" in r.json()["message"]
    r = httpx.post(f"{emulator.api_url}experiments", auth=auth, files={"new_exp.json": b"not json"})
    assert r.status_code == 400
    bad = {"type": "physical", "duration": 0, "nodes": [M3_1]}
    r = httpx.post(
        f"{emulator.api_url}experiments", auth=auth, files={"new_exp.json": json.dumps(bad).encode()}
    )
    assert r.status_code == 400 and "duration" in r.json()["message"]
    r = httpx.get(f"{emulator.api_url}experiments?state=Nope", auth=auth)
    assert r.status_code == 400


def test_busy_nodes_reservations_and_queue(emulator: Emulator) -> None:
    api = api_for(emulator, "alice")
    foreign = emulator.foreign([M3_1], duration=30)
    states = {n["network_address"]: n["state"] for n in api.get_nodes(site=SITE)["items"]}
    assert states[M3_1] == "Busy" and emulator.experiment(foreign)["user"] == "someone-else"
    # a booking at a fixed time that overlaps the other user's experiment is refused
    soon = int(time.time()) + 120
    with pytest.raises(HTTPError) as err:
        experiment.submit_experiment(api, None, 10, [experiment.exp_resources([M3_1])], start_time=soon)
    assert "not enough resources" in str(err.value.msg)
    # an as-soon-as-possible one waits for the node
    queued = experiment.submit_experiment(api, None, 10, [experiment.exp_resources([M3_1])])["id"]
    time.sleep(0.5)
    assert experiment.get_experiment(api, queued)["state"] == "Waiting"
    # a future reservation waits for its date
    later = experiment.submit_experiment(api, None, 10, [experiment.exp_resources([M3_2])], start_time=soon)[
        "id"
    ]
    info = experiment.get_experiment(api, later)
    assert info["state"] == "Waiting" and info["reservation"] == soon


def test_alias_submission_and_profiles_crud(emulator: Emulator) -> None:
    api = api_for(emulator, "bob")
    alias = experiment.AliasNodes(2, SITE, "a8:at86rf231")
    exp_id = experiment.submit_experiment(api, "alias", 5, [experiment.exp_resources(alias)])["id"]
    nodes = experiment.get_experiment(api, exp_id)["nodes"]
    assert sorted(nodes) == [f"a8-1.{SITE}.iot-lab.info", f"a8-2.{SITE}.iot-lab.info"]
    api.add_profile({**PROFILE, "profilename": "radio_mon"})
    assert api.get_profile("radio_mon")["nodearch"] == "m3"
    api.del_profile("radio_mon")
    with pytest.raises(HTTPError):
        api.get_profile("radio_mon")
    with pytest.raises(HTTPError) as err:
        api.add_profile({**PROFILE, "profilename": "../etc"})
    assert err.value.code == 400


def test_helpers() -> None:
    assert ids_string([1, 2, 3, 5, 7, 8]) == "1-3+5+7-8"
    assert parse_counts("m3=12, a8=4") == {"m3": 12, "a8": 4}
    with pytest.raises(ValueError):
        parse_counts("m3=lots")


def test_command_line_serves_and_stops(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"carol": {"password": "carol-secret", "profiles": [PROFILE]}}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piseduce.cli",
            "sim",
            "iotlab",
            "--site",
            "lille",
            "--port",
            str(port),
            "--users-file",
            str(users),
            "--time-scale",
            "50",
            "--nodes",
            "m3=3",
            "--busy",
            "1",
            "--dead",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/nodes", auth=("carol", "carol-secret"))
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.1)
        states = {n["network_address"]: n["state"] for n in r.json()["items"]}
        assert states == {
            "m3-1.lille.iot-lab.info": "Alive",
            "m3-2.lille.iot-lab.info": "Busy",
            "m3-3.lille.iot-lab.info": "Dead",
        }
        api = rest.Api("carol", "carol-secret")
        api.url = f"http://127.0.0.1:{port}/api/"
        assert api.get_profiles()[0]["profilename"] == "power_mon"
        assert httpx.get(f"http://127.0.0.1:{port}/api/user", auth=("carol", "nope")).status_code == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "lille" in out and "carol-secret" not in out
