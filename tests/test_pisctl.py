"""pisctl against a running web UI (`piseduce webui serve`) and a fake-driver agent in child
processes, as a researcher runs it: the installed entry point, a home of its own, the token on
standard input. Every `--json` output is validated against the web UI's OpenAPI spec."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.pisctl_helpers import SshNode, User, make_token, one_error_line, user_key, validate
from helpers.sequences_fixtures import set_node_attrs
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import (
    AgentProcess,
    WebuiProcess,
    add_user,
    register_agent,
    write_webui_config,
)

pytestmark = pytest.mark.slow

ALICE, BOB = "alice@example.org", "bob@example.org"


@dataclass
class Lab:
    url: str
    config: Path
    agent: AgentProcess
    spec: dict[str, Any]
    root: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("pisctl")
    cfg = write_webui_config(root / "webui", agent_timeout_seconds=3.0, health_check_seconds=2)
    for email in (ALICE, BOB):
        add_user(cfg, email, "a-user-password")
    # An admin from the start: the web UI then creates none (one slow password hash less to start).
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    with contextlib.ExitStack() as started:
        # pi-1..14: odd ones RPI4B with 4 GB, even ones RPI3B+ with 1 GB; each test books nodes of its own.
        agent = AgentProcess(root / "rpi-lab", nodes=14)
        started.callback(agent.stop)
        register_agent(cfg, "rpi-lab", agent.port, "raspberry")
        webui = WebuiProcess(cfg)
        started.callback(webui.stop)
        spec = httpx.get(f"{webui.url}/api/v1/openapi.json", timeout=60).json()
        yield Lab(webui.url, cfg, agent, spec, root)


@pytest.fixture
def alice(lab: Lab, tmp_path: Path) -> User:
    user = User(tmp_path / "alice")
    user.login(lab.url, make_token(lab.config, ALICE))
    return user


def test_login_reads_the_token_from_stdin_checks_it_and_saves_it_0600(lab: Lab, tmp_path: Path) -> None:
    user = User(tmp_path)
    token = make_token(lab.config, ALICE)
    ran = user.run("login", lab.url, "--json", stdin=token + "\n")
    assert ran.code == 0, ran.err
    validate(lab.spec, "GET", "/api/v1/me", ran.json())
    assert ran.json()["email"] == ALICE
    assert token not in ran.out + ran.err
    mode = stat.S_IMODE(user.credentials.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(user.credentials.parent.stat().st_mode) == 0o700
    assert json.loads(user.credentials.read_text()) == {"url": lab.url, "token": token}
    assert user.run("whoami").out.startswith(ALICE)


def test_login_with_a_wrong_token_saves_nothing(lab: Lab, tmp_path: Path) -> None:
    user = User(tmp_path)
    ran = user.run("login", lab.url, stdin="pst_" + "x" * 43 + "\n")
    assert ran.code == 2
    assert "refused this token" in one_error_line(ran)
    assert not user.credentials.exists()


def test_nodes_and_filters(lab: Lab, alice: User) -> None:
    ran = alice.run("nodes", "--json")
    assert ran.code == 0, ran.err
    validate(lab.spec, "GET", "/api/v1/nodes", ran.json())
    assert sorted(n["name"] for n in ran.json()) == sorted(f"pi-{i}" for i in range(1, 15))
    four = alice.run("nodes", "--filter", "model=RPI4B", "--filter", "memory_gb>=4", "--json").json()
    assert sorted(n["name"] for n in four) == sorted(f"pi-{i}" for i in range(1, 15, 2))
    table = alice.run("nodes", "--filter", "model=RPI4B")
    assert "pi-3 " in table.out and "pi-2 " not in table.out
    bad = alice.run("nodes", "--filter", "memory>=lots")
    assert bad.code == 1
    assert "memory" in one_error_line(bad)


def test_reserve_deploy_wait_status_release(lab: Lab, alice: User) -> None:
    booked = alice.run("reserve", "--count", "2", "--filter", "model=RPI3B+", "--hours", "1",
                       "--bin", "cli-run", "--json")
    assert booked.code == 0, booked.err
    validate(lab.spec, "POST", "/api/v1/reservations", booked.json())
    keys = sorted(r["key"] for r in booked.json())
    assert len(keys) == 2 and all(k.startswith("rpi-lab/") for k in keys)

    deployed = alice.run("deploy", "--bin", "cli-run", "--env", "tiny", "--wait", "--json", timeout=180)
    assert deployed.code == 0, deployed.err
    validate(lab.spec, "GET", "/api/v1/reservations", deployed.json())
    assert {r["status"] for r in deployed.json()} == {"deployed"}

    status = alice.run("status", keys[0], "--json")
    validate(lab.spec, "GET", "/api/v1/reservations/{agent}/{rid}", status.json())
    assert status.json()["events"], status.out
    listed = alice.run("status", "--bin", "cli-run")
    assert all(k in listed.out for k in keys) and "deployed" in listed.out

    extended = alice.run("extend", keys[0], "--hours", "1", "--json")
    assert extended.code == 0, extended.err
    validate(lab.spec, "POST", "/api/v1/reservations/{agent}/{rid}/extend", extended.json()[0])
    released = alice.run("release", "--bin", "cli-run", "--json")
    assert released.code == 0, released.err
    for r in released.json():
        validate(lab.spec, "POST", "/api/v1/reservations/{agent}/{rid}/destroy", r)  # release is destroy
    assert {r["key"] for r in released.json()} == set(keys)
    # Once destroyed, its status says when it ended (its last event), not only the planned end.
    deadline = time.monotonic() + 120
    while (gone := alice.run("status", keys[0], "--json").json())["status"] != "ended":
        assert time.monotonic() < deadline, gone["status"]
        time.sleep(1)
    shown = alice.run("status", keys[0])
    ended = [line for line in shown.out.splitlines() if line.startswith("ended: ")]
    from zoneinfo import ZoneInfo

    def local(t: str) -> str:  # as pisctl writes a time, in its shell's zone (TZ, pisctl_helpers)
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00")).astimezone(ZoneInfo("America/Montreal"))
        return f"{when:%a %d %b %Y %H:%M %Z}"

    last = max(gone["events"], key=lambda e: e["n"])
    assert "destroy" in json.dumps(last).lower() or "releas" in json.dumps(last).lower(), last
    said = f"ended: {local(last['time'])} (its last event; planned until {local(gone['end'])})"
    assert ended == [said], shown.out


def test_deploy_wait_exits_1_naming_the_failed_node(lab: Lab, alice: User) -> None:
    set_node_attrs(lab.agent, "pi-11", behavior="raise", behavior_step="install")
    try:
        booked = alice.run("reserve", "--nodes", "rpi-lab/pi-9,rpi-lab/pi-11", "--hours", "1",
                           "--bin", "cli-fail", "--json")
        assert booked.code == 0, booked.err
        ran = alice.run("deploy", "--bin", "cli-fail", "--set", "environment=tiny", "--wait", timeout=180)
        assert ran.code == 1, ran.out + ran.err
        line = [x for x in ran.err.splitlines() if x.startswith("error: ")]
        assert line and "pi-11" in line[0] and "install broke on pi-11" in line[0], ran.err
        assert "pi-9 " not in line[0]
        assert "Traceback" not in ran.err
    finally:
        set_node_attrs(lab.agent, "pi-11", behavior="ok")
        alice.run("release", "--bin", "cli-fail")


def test_deploy_refuses_a_field_the_form_has_not_before_deploying(lab: Lab, alice: User) -> None:
    booked = alice.run("reserve", "--nodes", "rpi-lab/pi-7", "--hours", "1", "--bin", "cli-typo", "--json")
    assert booked.code == 0, booked.err
    key = booked.json()[0]["key"]
    try:
        ran = alice.run("deploy", key, "--set", "enviroment=tiny")
        assert ran.code == 2
        line = one_error_line(ran)
        assert "no field enviroment" in line and "environment" in line
        assert alice.run("status", key, "--json").json()["status"] == "configuring"
    finally:
        alice.run("release", key)


def test_a_taken_node_is_one_line_and_409(lab: Lab, alice: User, tmp_path: Path) -> None:
    bob = User(tmp_path / "bob")
    bob.login(lab.url, make_token(lab.config, BOB))
    mine = alice.run("reserve", "--nodes", "rpi-lab/pi-1", "--hours", "1", "--json")
    assert mine.code == 0, mine.err
    try:
        ran = bob.run("reserve", "--nodes", "rpi-lab/pi-1", "--hours", "1")
        assert ran.code == 1
        assert "HTTP 409" in one_error_line(ran)
        # Bob sees none of Alice's reservations and cannot act on them.
        assert bob.run("status", "--json").json() == []
        other = bob.run("release", mine.json()[0]["key"])
        assert other.code == 1 and "not found" in other.err
    finally:
        alice.run("release", mine.json()[0]["key"])


def test_a_read_token_can_look_but_not_book(lab: Lab, tmp_path: Path) -> None:
    user = User(tmp_path)
    user.login(lab.url, make_token(lab.config, ALICE, scope="read"))
    assert user.run("nodes").code == 0
    ran = user.run("reserve", "--count", "1", "--hours", "1")
    assert ran.code == 1
    assert "HTTP 403" in one_error_line(ran)


def test_schedule_and_envs_json(lab: Lab, alice: User) -> None:
    sched = alice.run("schedule", "--hours", "6", "--json")
    assert sched.code == 0, sched.err
    validate(lab.spec, "GET", "/api/v1/schedule", sched.json())
    envs = alice.run("envs", "--json")
    assert envs.code == 0, envs.err
    validate(lab.spec, "GET", "/api/v1/environments", envs.json())


def test_ssh_uses_the_pinned_key_and_refuses_a_changed_one(lab: Lab, alice: User, tmp_path: Path) -> None:
    identity, pub = user_key(tmp_path)
    real, impostor = SshNode("pi-3", pub), SshNode("impostor", pub)
    try:
        # pi-3 answers with the key its agent pinned; pi-5's address answers with another key.
        set_node_attrs(lab.agent, "pi-3", ssh_port=real.port, ssh_user="pi", host_key=real.key_line)
        set_node_attrs(lab.agent, "pi-5", ssh_port=impostor.port, ssh_user="pi", host_key=real.key_line)
        booked = alice.run("reserve", "--nodes", "rpi-lab/pi-3,rpi-lab/pi-5", "--hours", "1",
                           "--bin", "cli-ssh", "--json")
        assert booked.code == 0, booked.err
        assert alice.run("deploy", "--bin", "cli-ssh", "--env", "tiny", "--wait", timeout=180).code == 0

        ok = alice.run("ssh", "-i", str(identity), "pi-3", "--", "uname", "-n")
        assert ok.code == 0, ok.err
        assert ok.out.strip() == "pi-3 ran: uname -n"
        refused = alice.run("ssh", "-i", str(identity), "rpi-lab/pi-5", "--", "uname", "-n")
        assert refused.code == 255
        assert "impostor ran" not in refused.out
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.err or "verification failed" in refused.err
        # Nothing learnt: the user's own known_hosts is untouched, the temporary one is gone.
        assert not (alice.home / ".ssh" / "known_hosts").exists()
    finally:
        for node in ("pi-3", "pi-5"):
            set_node_attrs(lab.agent, node, ssh_port=0)
        alice.run("release", "--bin", "cli-ssh")
        real.close()
        impostor.close()


def test_the_client_sync_and_async(lab: Lab) -> None:
    import asyncio

    from piseduce.client import ApiError, AsyncClient, Client

    token = make_token(lab.config, BOB)
    with Client(lab.url, token) as api:
        assert api.me().email == BOB
        booked = api.reserve(nodes=["rpi-lab/pi-13"], hours=1, bin="client")
        try:
            api.deploy(booked[0], env="tiny")
            done = api.wait_deployed(booked, timeout=120)
            assert [r.status for r in done] == ["deployed"]
            events = list(api.events(booked[0]))
            assert events and [e.n for e in events] == sorted(e.n for e in events)
            with pytest.raises(ApiError) as refused:
                api.reserve(nodes=["rpi-lab/pi-13"], hours=1)
            assert refused.value.status == 409 and refused.value.detail
        finally:
            api.release(booked[0])

    async def run() -> list[str]:
        async with AsyncClient(lab.url, token) as api:
            nodes, me = await asyncio.gather(api.nodes(["model=RPI4B"]), api.me())
            assert me.email == BOB
            return sorted(n.name for n in nodes)

    assert asyncio.run(run()) == sorted(f"pi-{i}" for i in range(1, 15, 2))


def test_an_admin_sees_and_acts_on_every_reservation(lab: Lab, alice: User, tmp_path: Path) -> None:
    from piseduce.client import Client

    with Client(lab.url, make_token(lab.config, BOB)) as bob:
        key = bob.reserve(nodes=["rpi-lab/pi-14"], hours=1, bin="bobs")[0].key
    admin = User(tmp_path / "admin")
    admin.login(lab.url, make_token(lab.config, ADMIN_EMAIL))
    try:
        # Another user sees none of it and can do nothing to it (404: not theirs), in one line.
        assert key not in [r["key"] for r in alice.run("status", "--json").json()]
        assert "HTTP 403" in one_error_line(alice.run("status", "--all"))
        refused = alice.run("release", key)
        assert refused.code == 1 and "not found" in one_error_line(refused)
        # The admin lists every user's and acts on Bob's by its key.
        everyone = admin.run("status", "--all", "--json")
        assert everyone.code == 0, everyone.err
        validate(lab.spec, "GET", "/api/v1/reservations", everyone.json())
        mine = next(r for r in everyone.json() if r["key"] == key)
        assert mine["owner"] == BOB
        shown = admin.run("status", key, "--json")
        assert shown.code == 0 and shown.json()["owner"] == BOB
        extended = admin.run("extend", key, "--hours", "1", "--json")
        assert extended.code == 0, extended.err
        released = admin.run("release", key, "--json")
        assert released.code == 0, released.err
        with Client(lab.url, make_token(lab.config, BOB)) as bob:
            gone = bob.reservation(key)
        assert gone.status in ("destroying", "ended", "cancelled")
        assert f"by {ADMIN_EMAIL}" in gone.events[-1].message  # the audit trail names the admin
    finally:
        admin.run("release", key)


def test_following_events_sync_and_async_until_deployed(lab: Lab) -> None:
    """`events(key, follow=True)`: every event once, in order, as they come, ending with the deploy."""
    import asyncio

    from piseduce.client import AsyncClient, Client

    token = make_token(lab.config, BOB)

    async def follow(key: str) -> list[int]:
        async with AsyncClient(lab.url, token) as api:
            seen = [e.n async for e in api.events(key, follow=True)]
            assert (await api.reservation(key)).status == "deployed"
            return seen

    with Client(lab.url, token) as api:
        booked = api.reserve(nodes=["rpi-lab/pi-12"], hours=1, bin="follow")
        key = booked[0].key
        try:
            api.deploy(key, env="tiny")
            followed = asyncio.run(asyncio.wait_for(follow(key), 120))
            assert followed == list(range(1, len(followed) + 1)) and len(followed) >= 2
            again = [e.n for e in api.events(key, follow=True)]  # over already: what is there, then stop
            assert again[: len(followed)] == followed
            later = [e.n for e in api.events(key, after=followed[-1])]
            assert all(n > followed[-1] for n in later)
        finally:
            api.release(key)


def test_the_api_guides_examples_run_as_written(lab: Lab) -> None:
    """docs/api.md's Examples block, in bash with `set -eo pipefail` (curl -f: any refusal fails
    it), against this web UI instead of the demo's port: book, deploy, events, release."""
    import re
    import subprocess

    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    block = re.search(r"## Examples\n.*?```sh\n(.*?)```", text, re.S)
    assert block, "docs/api.md has no Examples block"
    script = "set -eo pipefail\n" + block.group(1).replace("http://127.0.0.1:9000", lab.url)
    token = make_token(lab.config, BOB, name="api guide")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PISEDUCE_TOKEN": token})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.endswith(" configuring") for line in lines), done.stdout  # the bin listed
    assert "202" not in done.stderr and done.stderr == "", done.stderr
    released = [line for line in lines if line.split()[-1] in ("destroying", "ended", "cancelled")]
    assert len(released) == 2, done.stdout
    left = httpx.get(f"{lab.url}/api/v1/reservations", params={"bin": "exp1", "status": "active"},
                     headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    assert all(r["status"] in ("destroying", "ended", "cancelled") for r in left), left
# ---------------------------------------------------------------- what a fresh-eyes user found (W20)

SENSORS = "sensor-strasbourg"  # a second agent whose deploy form is IoT-LAB's shape (a firmware file)


@pytest.fixture(scope="module")
def sensors(lab: Lab) -> Iterator[AgentProcess]:
    """Started for the tests below only (last in this file): `--count` bookings above never see it."""
    agent = AgentProcess(lab.root / SENSORS, nodes=3, driver="helpers.fake_driver:FirmwareFormDriver",
                         fake_log=str(lab.root / "sensors.log"))
    try:
        register_agent(lab.config, SENSORS, agent.port, "raspberry")
        probe = User(lab.root / "probe")
        probe.login(lab.url, make_token(lab.config, ALICE))
        wait_until_sync(lambda: any(a["name"] == SENSORS and a["state"] == "up"
                                    for a in probe.run("agents", "--json").json()),
                        timeout=60, interval=0.5, what="the second agent is up")
        yield agent
    finally:
        agent.stop()


def advised(err: str) -> list[str]:
    """The `pisctl …` command an error line advises, as words."""
    found = re.search(r"\((?:[^()]*?; then )?(pisctl [^();]+)\)\s*$", err.strip().splitlines()[-1])
    assert found, err
    return found.group(1).split()[1:]


def test_ssh_picks_the_current_reservation_takes_options_after_the_node_and_advises_what_works(
    lab: Lab, alice: User, tmp_path: Path
) -> None:
    identity, pub = user_key(tmp_path)
    node = SshNode("pi-14", pub)
    set_node_attrs(lab.agent, "pi-14", ssh_port=node.port, ssh_user="pi", host_key=node.key_line)
    key = next_key = ""
    try:
        # As the user had it: a booking of a later slot, cancelled, then one of now, and one more later.
        later = (dt.datetime.now() + dt.timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M")
        old = alice.run("reserve", "--nodes", "rpi-lab/pi-14", "--start", later, "--hours", "1", "--json")
        assert old.code == 0, old.err
        old_key = old.json()[0]["key"]
        assert alice.run("release", old_key).code == 0
        new = alice.run("reserve", "--nodes", "rpi-lab/pi-14", "--hours", "1", "--json")
        assert new.code == 0, new.err
        key = new.json()[0]["key"]
        nxt = alice.run("reserve", "--nodes", "rpi-lab/pi-14", "--start", later, "--hours", "1", "--json")
        assert nxt.code == 0, nxt.err
        next_key = nxt.json()[0]["key"]

        # Not deployed yet: the current booking is named (never the cancelled one), and its advice works.
        early = alice.run("ssh", "pi-14", "-i", str(identity), "--", "uname", "-n")
        assert early.code == 1
        line = one_error_line(early)
        assert key in line and old_key not in line and next_key not in line, line
        assert advised(early.err) == ["deploy", key, "--wait"]
        # The command advised works in this state (with the form's values: its own error asks for them).
        assert "set environment=" in alice.run(*advised(early.err)).err
        assert alice.run(*advised(early.err), "--env", "tiny", timeout=180).code == 0

        # -i after the node, before `--`: used (the server authorizes only that key).
        ok = alice.run("ssh", "pi-14", "-i", str(identity), "--", "uname", "-n")
        assert ok.code == 0, ok.err
        assert ok.out.strip() == "pi-14 ran: uname -n"

        # A redeploy under way: ssh advises a command that works now, and waiting for it works.
        assert alice.run("redeploy", key).code == 0
        during = alice.run("ssh", "pi-14", "-i", str(identity), "--", "true")
        if during.code != 0:
            assert advised(during.err)[0] in ("wait", "redeploy"), during.err
            assert alice.run(*advised(during.err), timeout=180).code == 0
        assert alice.run("wait", key, timeout=180).code == 0
        assert alice.run("deploy", key, "--env", "tiny").code == 1  # what ssh used to advise: 409

        for action in ("redeploy", "reboot"):
            ran = alice.run(action, key, "--wait", timeout=180)
            assert ran.code == 0, ran.err
            assert f"deployed: {key}" in ran.err, ran.err
            after = alice.run("status", key, "--json").json()
            # The wait ended with the process over, not on the `deployed` left from before it.
            assert after["status"] == "deployed" and after.get("progress") is None, after
    finally:
        set_node_attrs(lab.agent, "pi-14", ssh_port=0)
        for k in (key, next_key):
            if k:
                alice.run("release", k)
        node.close()


def test_status_extend_and_nodes_read_as_a_person_reads_them(
    lab: Lab, alice: User, sensors: AgentProcess, tmp_path: Path
) -> None:
    booked = alice.run("reserve", "--nodes", f"{SENSORS}/pi-1", "--hours", "1", "--bin",
                       "a-rather-long-bin-name-for-this-experiment", "--json")
    assert booked.code == 0, booked.err
    key = booked.json()[0]["key"]
    bob = User(tmp_path / "bob")
    bob.login(lab.url, make_token(lab.config, BOB))
    theirs = bob.run("reserve", "--nodes", f"{SENSORS}/pi-2", "--hours", "1", "--json")
    assert theirs.code == 0, theirs.err
    try:
        # A narrow terminal: the key (what the next command needs) is never cut.
        alice.env["COLUMNS"] = "60"
        narrow = alice.run("status")
        assert key in narrow.out and "…" not in narrow.out, narrow.out
        one = alice.run("status", key)
        assert "None" not in one.out and "{'" not in one.out, one.out
        alice.env["COLUMNS"] = "200"

        listed = alice.run("nodes", "--agent", SENSORS).out.splitlines()[1:]
        table = {line.split()[1]: line for line in listed}
        assert f"in use (yours: {key}" in table["pi-1"], table
        assert "booked now" in table["pi-2"] and BOB not in table["pi-2"], table
        assert " free " in table["pi-3"], table

        # Extend without --hours adds the current length, and says what it added and the new end.
        first = alice.run("extend", key)
        assert first.code == 0, first.err
        said = rf"extended: {re.escape(key)} \(pi-1\) by 1 h, now ends \w{{3}} "
        assert re.search(said, first.err), first.err
        second = alice.run("extend", key)
        assert "by 2 h" in second.err, second.err

        assert alice.run("release", key).code == 0
        refused = alice.run("extend", key, "--hours", "1")
        assert refused.code == 1
        assert one_error_line(refused).count(key) == 1, refused.err
    finally:
        alice.env["COLUMNS"] = "200"
        alice.run("release", key)
        bob.run("release", theirs.json()[0]["key"])


def test_a_mixed_bin_takes_each_set_where_its_field_is(
    lab: Lab, alice: User, sensors: AgentProcess, tmp_path: Path
) -> None:
    firmware = tmp_path / "app.elf"
    firmware.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    booked = alice.run("reserve", "--nodes", f"rpi-lab/pi-12,{SENSORS}/pi-3", "--hours", "1",
                       "--bin", "mix", "--json")
    assert booked.code == 0, booked.err
    try:
        typo = alice.run("deploy", "--bin", "mix", "--set", "environment=tiny", "--set", "firmwre_file=@x")
        assert typo.code == 2
        assert "firmwre_file" in one_error_line(typo) and "firmware_file" in typo.err
        assert {r["status"] for r in alice.run("status", "--bin", "mix", "--json").json()} == {"configuring"}

        ran = alice.run("deploy", "--bin", "mix", "--set", "environment=tiny",
                        "--set", f"firmware_file=@{firmware}", "--wait", timeout=180)
        assert ran.code == 0, ran.err
        digest = hashlib.sha256(firmware.read_bytes()).hexdigest()
        assert f"pi-3 deploy flash sha256={digest} name=app.elf" in (lab.root / "sensors.log").read_text()
    finally:
        alice.run("release", "--bin", "mix")


def test_next_slot_from_pisctl_and_the_python_client_is_what_reserve_then_books(
    lab: Lab, alice: User
) -> None:
    """`pisctl next-slot` answers the earliest start the nodes are free together, prints the
    `pisctl reserve` line that books it, and that line books exactly then; the sync and async
    clients answer the same; a request that never fits is one error line."""
    import asyncio
    import shlex

    from piseduce.client import AsyncClient, Client

    t = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(days=2)
    # Bob holds pi-6 and pi-8 for 3 h from t (this agent has no turnaround).
    with Client(lab.url, make_token(lab.config, BOB)) as bob:
        held = bob.reserve(nodes=["rpi-lab/pi-6", "rpi-lab/pi-8"], start=t, hours=3)
    after = (t + dt.timedelta(hours=1)).isoformat()
    args = ("next-slot", "--nodes", "rpi-lab/pi-6,rpi-lab/pi-8", "--after", after, "--hours", "2")
    ran = alice.run(*args, "--json")
    assert ran.code == 0, ran.err
    validate(lab.spec, "POST", "/api/v1/next-slot", ran.json())
    free = t + dt.timedelta(hours=3)
    assert dt.datetime.fromisoformat(ran.json()["start"]) == free, ran.out
    shown = alice.run(*args)
    assert shown.code == 0, shown.err
    assert "rpi-lab/pi-6, rpi-lab/pi-8" in shown.out and "bob" not in shown.out, shown.out
    line = next(x for x in shown.out.splitlines() if x.startswith("Book it: "))
    booked = alice.run(*shlex.split(line.removeprefix("Book it: "))[1:], "--json")
    assert booked.code == 0, booked.err
    assert {dt.datetime.fromisoformat(r["start"]) for r in booked.json()} == {free}
    token = make_token(lab.config, ALICE)
    with Client(lab.url, token) as api:
        # Now Alice's own booking is in the way too: after it.
        slot = api.next_slot(nodes=["rpi-lab/pi-6", "rpi-lab/pi-8"], after=after, hours=2)
        assert slot.start == free + dt.timedelta(hours=2) and slot.end == slot.start + dt.timedelta(hours=2)
        by_count = api.next_slot(count=2, filters=["model=RPI3B+"], after=t, hours=1)
        assert by_count.start == t and len(by_count.nodes) == 2

    async def ask() -> dt.datetime:
        async with AsyncClient(lab.url, token) as api:
            return (await api.next_slot(nodes=["rpi-lab/pi-6"], after=t, hours=1)).start

    assert asyncio.run(ask()) == free + dt.timedelta(hours=2)  # after Bob's and Alice's bookings
    never = alice.run("next-slot", "--count", "99", "--hours", "1")
    assert never.code != 0 and "can never be booked at once" in one_error_line(never)
    with Client(lab.url, token) as api:
        for r in booked.json():
            api.release(f"{r['agent']}/{r['id']}")
    with Client(lab.url, make_token(lab.config, BOB)) as bob:
        for r in held:
            bob.release(r.key)
