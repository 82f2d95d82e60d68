"""iotlabcli's own console commands (iotlab-auth, -status, -experiment, -node, -profile, -robot),
each run as a program against the IoT-LAB emulator (an argument list, never a shell string), as a
researcher would run their usual scripts on `./run demo`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.iotlab_fixtures import PROFILE, SITE, Emulator, running_emulator, tiny_elf

BIN = Path(sys.executable).parent
M3 = [f"m3-{i}.{SITE}.iot-lab.info" for i in range(1, 7)]
A8 = [f"a8-{i}.{SITE}.iot-lab.info" for i in range(1, 3)]


class Cli:
    """Runs iotlabcli's console scripts with the emulator's URL and a private ~/.iotlabrc."""

    def __init__(self, emu: Emulator, folder: Path) -> None:
        self.emu = emu
        self.folder = folder
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IOTLAB")},
            "IOTLAB_API_URL": emu.api_url,
            "IOTLAB_PASSWORD_FILE": str(folder / "iotlabrc"),
            "HOME": str(folder),
        }

    def run(self, tool: str, *args: str, stdin: str | None = None, ok: bool = True) -> Any:
        proc = subprocess.run(
            [str(BIN / tool), *args], cwd=self.folder, env=self.env, input=stdin,
            capture_output=True, text=True, timeout=60, start_new_session=True,
        )
        if ok:
            assert proc.returncode == 0, f"{tool} {args}: {proc.stdout}{proc.stderr}"
            out = proc.stdout.strip()
            try:
                return json.loads(out) if out else None
            except json.JSONDecodeError:
                return out
        return proc


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    with running_emulator(time_scale=40.0, robots="m3=2") as emu:
        c = Cli(emu, tmp_path)
        (tmp_path / "tutorial_m3.elf").write_bytes(tiny_elf("tutorial"))
        (tmp_path / "idle.elf").write_bytes(tiny_elf("idle"))
        # the password on stdin (no terminal: getpass reads it there), never on a command line
        out = c.run("iotlab-auth", "-u", "alice", stdin=emu.users["alice"] + "\n")
        assert "Written" in str(out)
        yield c


def wait_running(cli: Cli, exp_id: int) -> None:
    state = cli.run("iotlab-experiment", "wait", "-i", str(exp_id), "--step", "1", "--timeout", "20")
    assert state == "Running"


def test_status_auth_and_info(cli: Cli) -> None:
    assert cli.run("iotlab-auth", "-l") == "SSH keys:"
    key = cli.folder / "id_ed25519.pub"  # -i names the private key; its .pub is sent
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJx7e5hBMz3G0oiqHRrxmHEMdRQN8Yv0V2XJ0vHD5dVt"
                   " me@lab\n")
    cli.run("iotlab-auth", "-k", "-i", str(cli.folder / "id_ed25519"))
    assert cli.run("iotlab-auth", "-l").splitlines()[1:] == [key.read_text().strip()]
    assert cli.run("iotlab-status", "--sites")["items"][0]["site"] == SITE
    nodes = cli.run("iotlab-status", "--nodes", "--archi", "m3", "--state", "Alive")["items"]
    assert {n["network_address"] for n in nodes} == set(M3)  # "m3" matches m3:at86rf231
    assert cli.run("iotlab-status", "--nodes-ids", "--archi", "a8")["items"] == [
        {"archi": "a8:at86rf231", "nodes_ids": "1-2", "site": SITE}]
    assert cli.run("iotlab-status", "--nodes", "--archi", "m3:at86rf231", "--site", SITE)["items"]
    assert cli.run("iotlab-status", "--nodes", "--archi", "m", "--site", SITE)["items"] == []
    assert cli.run("iotlab-status", "--experiments-running")["items"] == []
    info = cli.run("iotlab-experiment", "info", "--list", "--site", SITE, "--archi", "a8")["items"]
    assert {n["network_address"] for n in info} == set(A8)
    ids = cli.run("iotlab-experiment", "info", "--list-id", "--archi", "m3")["items"]
    assert ids[0]["nodes_ids"] == "1-6"
    # errors come in the API's own shape, and the command says so on one line
    bad = cli.run("iotlab-experiment", "get", "-i", "999", "-p", ok=False)
    assert bad.returncode != 0 and '{"code":404,"message":"Experiment 999 not found"}' in bad.stderr
    # every error of the API has that shape, unknown routes and methods included
    import httpx

    auth = ("alice", cli.emu.users["alice"])
    for method, path, code in (("GET", "nope", 404), ("DELETE", "nodes", 405), ("GET", "experiments/x", 400)):
        r = httpx.request(method, f"{cli.emu.api_url}{path}", auth=auth)
        assert r.status_code == code and set(r.json()) == {"code", "message"} and r.json()["code"] == code


def test_experiment_lifecycle_with_every_get(cli: Cli) -> None:
    sub = cli.run("iotlab-experiment", "submit", "-n", "cli", "-d", "20",
                  "-l", f"{SITE},m3,1-2,tutorial_m3.elf,{PROFILE['profilename']}",
                  "-l", f"{SITE},m3,3")
    exp_id = sub["id"]
    wait_running(cli, exp_id)
    info = cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-p")
    assert info["state"] == "Running" and info["nodes"] == M3[:3]
    assert cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-s")["state"] == "Running"
    nodes = cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-n")["items"]
    assert {n["network_address"] for n in nodes} == set(M3[:3])
    assert cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-r")["items"]
    assert cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-ri")["items"][0]["nodes_ids"] == "1-3"
    assert cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-d") == {"0": M3[:3]}
    assert cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-ni")["items"][0]["nodes_ids"] == "1-3"
    assert cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-st")["start_time"] <= time.time()
    assert cli.run("iotlab-experiment", "get", "-e") == {"Running": [exp_id]}
    listed = cli.run("iotlab-experiment", "get", "-l", "--state", "Running")["items"]
    assert [e["id"] for e in listed] == [exp_id]
    cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-a")
    archive = cli.folder / f"{exp_id}.tar.gz"
    with tarfile.open(archive) as tar:
        description = json.load(tar.extractfile(f"{exp_id}/{exp_id}.json"))  # type: ignore[arg-type]
    assert description["nodes"] == M3[:3]

    # the experiment's own JSON, as found in its archive, submits again with `load`
    (cli.folder / "exp.json").write_text(json.dumps(description))
    cli.run("iotlab-experiment", "stop", "-i", str(exp_id))
    again = cli.run("iotlab-experiment", "load", "-f", "exp.json")["id"]
    wait_running(cli, again)
    loaded = cli.run("iotlab-experiment", "get", "-i", str(again), "-p")
    assert loaded["nodes"] == M3[:3] and loaded["firmwareassociations"] == description["firmwareassociations"]
    assert loaded["profileassociations"] == description["profileassociations"]

    reloaded = cli.run("iotlab-experiment", "reload", "-i", str(exp_id), "-d", "5")["id"]
    cli.run("iotlab-experiment", "stop", "-i", str(again))
    wait_running(cli, reloaded)
    assert cli.run("iotlab-experiment", "get", "-i", str(reloaded), "-p")["submitted_duration"] == 5


def test_alias_reservation_and_main_command(cli: Cli) -> None:
    # an alias request names the architecture by its board ("m3"), as users write it
    alias = cli.run("iotlab-experiment", "submit", "-n", "alias", "-d", "10", "-l", f"2,archi=m3+site={SITE}")
    wait_running(cli, alias["id"])
    nodes = cli.run("iotlab-experiment", "get", "-i", str(alias["id"]), "-p")["nodes"]
    assert len(nodes) == 2 and all(n.startswith("m3-") for n in nodes)
    start = int(time.time()) + 3600
    later = cli.run("iotlab-experiment", "submit", "-d", "10", "-r", str(start), "-l", f"{SITE},a8,1")["id"]
    info = cli.run("iotlab-experiment", "get", "-i", str(later), "-p")
    assert info["state"] == "Waiting" and info["reservation"] == start
    assert cli.run("iotlab-experiment", "get", "-i", str(later), "-st")["start_time"] == start
    details = cli.run("iotlab", "status", "--sites")["items"]  # sites/details
    assert [d["site"] for d in details] == [SITE]
    assert {a["archi"] for a in details[0]["archis"]} == {"m3:at86rf231", "a8:at86rf231"}
    assert cli.run("iotlab", "experiment", "get", "-e") == {"Running": [alias["id"]]}
    active = cli.run("iotlab", "experiment", "get", "-e", "--active")
    assert active == {"Running": [alias["id"]], "Waiting": [later]}


def test_node_commands_and_profiles(cli: Cli) -> None:
    exp_id = cli.run("iotlab-experiment", "submit", "-d", "10", "-l", f"{SITE},m3,1-2")["id"]
    wait_running(cli, exp_id)
    for flag in ("--start", "--stop", "--reset", "--debug-start", "--debug-stop", "--flash-idle",
                 "--profile-reset"):
        assert cli.run("iotlab-node", flag, "-i", str(exp_id)) == {"0": M3[:2]}, flag
    assert cli.run("iotlab-node", "--flash", "tutorial_m3.elf", "-i", str(exp_id), "-l", f"{SITE},m3,1") \
        == {"0": [M3[0]]}
    assert cli.run("iotlab-node", "--profile", PROFILE["profilename"], "-i", str(exp_id)) == {"0": M3[:2]}
    # a profile file loaded for the nodes (multipart: the profile JSON and nodes.json)
    (cli.folder / "radio.json").write_text(json.dumps({**PROFILE, "profilename": "radio_file"}))
    assert cli.run("iotlab-node", "--profile-load", "radio.json", "-i", str(exp_id), "-e", f"{SITE},m3,2") \
        == {"0": [M3[0]]}
    bad = cli.run("iotlab-node", "--reset", "-i", str(exp_id), "-l", f"{SITE},m3,5", ok=False)
    assert bad.returncode != 0 and "Nodes not in experiment" in bad.stderr + bad.stdout

    cli.run("iotlab-profile", "addm3", "-n", "m3_power", "-p", "dc", "-current", "-voltage", "-power",
            "-period", "1100", "-avg", "16")
    cli.run("iotlab-profile", "adda8", "-n", "a8_radio", "-p", "dc", "-rssi", "-channels", "11", "26",
            "-num", "1", "-rperiod", "1")
    names = {p["profilename"] for p in cli.run("iotlab-profile", "get", "-l")}
    assert {"power_mon", "m3_power", "a8_radio"} <= names
    assert cli.run("iotlab-profile", "get", "-n", "m3_power")["consumption"]["period"] == 1100
    assert {p["profilename"] for p in cli.run("iotlab-profile", "get", "-l", "--archi", "a8")} == {"a8_radio"}
    cli.run("iotlab-profile", "addcustom", "-n", "custom_power", "-p", "dc", "-power", "-period", "140",
            "-avg", "1")
    assert cli.run("iotlab-profile", "get", "-n", "custom_power")["nodearch"] == "custom"
    (cli.folder / "custom.json").write_text(json.dumps({**PROFILE, "profilename": "from_file"}))
    cli.run("iotlab-profile", "load", "-f", "custom.json")
    cli.run("iotlab-profile", "del", "-n", "from_file")
    assert "from_file" not in {p["profilename"] for p in cli.run("iotlab-profile", "get", "-l")}


def test_scripts_with_site_associations(cli: Cli) -> None:
    (cli.folder / "collect.sh").write_text("#!/bin/bash\nserial_aggregator > out.log\n")
    (cli.folder / "collect.env").write_text("DURATION=60\n")
    exp_id = cli.run("iotlab-experiment", "submit", "-d", "10", "-l", f"{SITE},m3,1",
                     "--site-association", f"{SITE},script=collect.sh,scriptconfig=collect.env")["id"]
    wait_running(cli, exp_id)
    info = cli.run("iotlab-experiment", "get", "-i", str(exp_id), "-p")
    host = f"{SITE}.iot-lab.info"  # iotlabcli names sites by their frontend
    assert info["siteassociations"]["script"] == [{"scriptname": "collect.sh", "sites": [host]}]
    assert info["siteassociations"]["scriptconfig"] == [{"scriptconfigname": "collect.env", "sites": [host]}]
    # the associated script runs from the experiment's start
    assert cli.run("iotlab-experiment", "script", "-i", str(exp_id), "--status") == {"0": [host]}
    assert cli.run("iotlab-experiment", "script", "-i", str(exp_id), "--kill") == {"0": [host]}
    assert cli.run("iotlab-experiment", "script", "-i", str(exp_id), "--status", SITE) == {"1": [host]}
    assert cli.run("iotlab-experiment", "script", "-i", str(exp_id), "--run",
                   f"{SITE},script=collect.sh") == {"0": [host]}
    assert cli.run("iotlab-experiment", "script", "-i", str(exp_id), "--status") == {"0": [host]}
    with tarfile.open(fileobj=io.BytesIO(cli.emu.site.archive("alice", exp_id))) as tar:
        assert tar.extractfile(f"{exp_id}/collect.sh").read() == (cli.folder / "collect.sh").read_bytes()  # type: ignore[union-attr]
    bad = cli.run("iotlab-experiment", "script", "-i", str(exp_id), "--status", "lille", ok=False)
    assert bad.returncode != 0 and "lille" in bad.stderr + bad.stdout


def test_robots(cli: Cli) -> None:
    """The site's first two M3 nodes ride robots: their status, the circuits, a mobility."""
    circuits = cli.run("iotlab-robot", "get", "--list")
    assert {c["name"] for c in circuits} == {"square", "line"} and all(c["site"] == SITE for c in circuits)
    assert cli.run("iotlab-robot", "get", "-n", "square")["points"] == ["p0", "p1", "p2", "p3"]
    mobile = cli.run("iotlab-status", "--nodes", "--archi", "m3")["items"]
    assert [n["network_address"] for n in mobile if n["mobile"]] == M3[:2]
    exp_id = cli.run("iotlab-experiment", "submit", "-d", "10", "-l", f"{SITE},m3,1-3")["id"]
    wait_running(cli, exp_id)
    status = cli.run("iotlab-robot", "status", "-i", str(exp_id))["items"]
    assert [(r["network_address"], r["state"]) for r in status] == [(M3[0], "Docked"), (M3[1], "Docked")]
    assert cli.run("iotlab-robot", "update", "-n", "square", "-i", str(exp_id), "-l", f"{SITE},m3,1") \
        == {"0": [M3[0]]}
    assert cli.run("iotlab-robot", "status", "-i", str(exp_id))["items"][0]["state"] == "Moving"
    from iotlabcli import robot
    from iotlabcli.rest import Api

    # the map and docks are public: iotlabcli fetches them without credentials, from Api.url
    old_url, Api.url = Api.url, cli.emu.api_url
    try:
        maps = robot.robot_get_map(SITE)
    finally:
        Api.url = old_url
    assert maps["config"]["site"] == SITE and maps["image"].startswith(b"\x89PNG")
    assert {d["node"] for d in maps["dock"]["items"]} == set(M3[:2])
    bad = cli.run("iotlab-robot", "status", "-i", str(exp_id), "-l", f"{SITE},m3,3", ok=False)
    assert bad.returncode != 0 and '"code":400' in (bad.stderr + bad.stdout).replace(" ", "")


def _oml_rows(text: str) -> list[list[str]]:
    """The measures of a consumption file, read as oml-plot-tools reads it (9 header lines)."""
    lines = text.splitlines()
    assert lines[0].startswith("protocol: ") and lines[7] == "content: text" and lines[8] == ""
    assert "control_node_measures_consumption timestamp_s:uint32 timestamp_us:uint32 power:double " \
           "voltage:double current:double" in lines[6]
    return [line.split("\t") for line in lines[9:]]


def test_consumption_profile_measures_into_frontend_files(cli: Cli) -> None:
    """A consumption profile made with iotlab-profile, put on nodes at submission, reset on one of
    them mid-run; the OML files are then fetched from the site's frontend with OpenSSH's sftp and
    the key registered with iotlab-auth, as a researcher does."""
    key = cli.folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    cli.run("iotlab-auth", "-k", "-i", str(key))
    cli.run("iotlab-profile", "addm3", "-n", "m3_energy", "-p", "dc", "-power", "-voltage", "-current",
            "-period", "1100", "-avg", "64")
    exp_id = cli.run("iotlab-experiment", "submit", "-d", "10",
                     "-l", f"{SITE},m3,1-2,,m3_energy", "-l", f"{SITE},m3,3")["id"]
    wait_running(cli, exp_id)
    time.sleep(1.5)
    reset = cli.run("iotlab-node", "--profile-reset", "-i", str(exp_id), "-l", f"{SITE},m3,2")
    assert reset == {"0": [M3[1]]}
    time.sleep(1.0)
    cli.run("iotlab-experiment", "stop", "-i", str(exp_id))

    known = cli.folder / "known_hosts"
    known.write_text(cli.emu.frontend.known_hosts_line)
    out = cli.folder / "fetched"
    out.mkdir()

    def sftp(login: str, identity: Path) -> subprocess.CompletedProcess[str]:
        batch = cli.folder / "batch"
        batch.write_text(f"get -r .iot-lab/{exp_id}/consumption {out}\n")
        return subprocess.run(
            ["sftp", "-b", str(batch), "-i", str(identity), "-P", str(cli.emu.frontend.port),
             "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
             "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", f"{login}@127.0.0.1"],
            capture_output=True, text=True, timeout=60, env=cli.env,
        )

    # bob did not register this key: the frontend refuses him
    refused = sftp("bob", key)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    got = sftp("alice", key)
    assert got.returncode == 0, got.stderr
    files = sorted(p.name for p in (out / "consumption").iterdir())
    assert files == ["m3_1.oml", "m3_2.oml"]  # m3-3 had no profile: no file
    full = _oml_rows((out / "consumption" / "m3_1.oml").read_text())
    cut = _oml_rows((out / "consumption" / "m3_2.oml").read_text())
    assert len(full) >= 15 and 5 <= len(cut) < len(full) - 5  # m3-2 stopped measuring at the reset
    times = [int(r[3]) + int(r[4]) / 1e6 for r in full]
    assert times == sorted(times) and [int(r[2]) for r in full] == list(range(1, len(full) + 1))
    for row in full:
        assert len(row) == 8 and row[1] == "1"
        power, voltage, current = map(float, row[5:])
        assert 0.02 < power < 0.1 and 3.0 < voltage < 3.5 and abs(current - power / voltage) < 1e-5
