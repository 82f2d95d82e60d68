"""The web UI against real agents (fake driver, child processes): adding agents, the fan-out with
a dead agent, booking, configure/deploy, manage actions, and privacy between users."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from helpers.agent_helpers import free_port
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD, TOKEN
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import (
    AgentProcess,
    Browser,
    SilentPort,
    add_agent_form,
    add_user,
    webui_client,
    write_webui_config,
)
from piseduce import crypto
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.webui.agents import AgentHub, Identity, detail_words
from piseduce.webui.database import Database
from piseduce.webui.models import Agent

pytestmark = pytest.mark.usefixtures("fast_argon2")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path_factory.mktemp("agents") / "rpi-lab", nodes=8)
    yield a
    a.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = write_webui_config(tmp_path / "webui")
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg, "alice@example.org", "alice-password")
    add_user(cfg, "bob@example.org", "bob-password")
    return cfg


def add(b: Browser, name: str, port: int, token: str = TOKEN) -> str:
    r = b.post("/admin/agents", add_agent_form(name, port, token), page="/admin/agents")
    return r.text if r.status_code != 303 else b.get("/admin/agents").text


def stored_agents(config: Path) -> list[Agent]:
    engine = make_engine(load_webui_config(config).database_url)
    try:
        with session_factory(engine)() as s:
            return list(s.scalars(select(Agent)))
    finally:
        engine.dispose()


def book(b: Browser, **data: object) -> str:
    body = {"mode": "selected", "when": "now", "duration": "1", "bin": "", **data}
    r = b.post("/reserve", body, page="/reserve")
    return r.text


def test_add_agent_checks_health_and_token(config: Path, agent: AgentProcess) -> None:
    with webui_client(config) as b:
        b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        page = add(b, "wrong", agent.port, token="not-the-token-at-all")
        assert "refused the token" in page
        dead = free_port()
        page = add(b, "nobody", dead)
        assert "unreachable" in page and f"127.0.0.1:{dead}" in page
        page = add(b, "rpi-lab", agent.port)
        row = re.search(r'<tr data-agent="rpi-lab"[^>]*>.*?</tr>', page, re.S)
        assert row and "connected" in row.group(0) and "raspberry" in row.group(0)
        assert add(b, "rpi-lab", agent.port).count("exists already") == 1
    agents = stored_agents(config)
    assert [a.name for a in agents] == ["rpi-lab"]
    # The token is stored encrypted with the key file, never in clear.
    assert TOKEN not in agents[0].token
    fernet = crypto.load_fernet(load_webui_config(config).key_path)
    assert crypto.decrypt_str(fernet, agents[0].token) == TOKEN


def test_book_configure_deploy_manage(config: Path, agent: AgentProcess) -> None:
    with webui_client(config) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        add(admin, "rpi-lab", agent.port)
    with webui_client(config) as b:
        b.login("alice@example.org", "alice-password")
        cal = b.get("/reserve").text
        assert 'data-key="1/pi-1"' in cal and "raspberry.svg" in cal
        # A day out of the calendars' range (or with no UTC equivalent) shows today instead.
        for day in ("0001-01-01", "9999-12-31", "someday"):
            r = b.get(f"/reserve?day={day}")
            assert r.status_code == 200 and 'data-key="1/pi-1"' in r.text, day
        # By count with filters (AND): 1 node whose model is RPI3B+ and memory_gb <= 1.
        filters = '[{"prop":"model","op":"=","value":"rpi3b+"},{"prop":"memory_gb","op":"<=","value":"1"}]'
        text = book(b, mode="count", count="1", filters=filters)
        booked = re.findall(r'<li class="booked">(pi-\d+) on rpi-lab', text)
        assert len(booked) == 1 and int(booked[0].split("-")[1]) % 2 == 0, text
        # Too many: the result says what was not booked and why.
        text = book(b, mode="count", count="2", filters='[{"prop":"model","op":"=","value":"RPI5"}]')
        assert 'class="refused"' in text and "not enough free nodes" in text and 'class="booked"' not in text
        # By click: two named nodes; one of them taken already -> the agent's reason in words.
        text = book(b, node=["1/pi-1", f"1/{booked[0]}"])
        assert 'class="refused"' in text and "rpi-lab" in text
        # A start with no UTC equivalent is refused in words, and books nothing.
        text = book(b, node=["1/pi-1"], when="later", start="0001-01-01T00:00+00:01")
        assert "not a valid date" in text and 'class="booked"' not in text
        text = book(b, node=["1/pi-1", "1/pi-3"], bin="exp1")
        assert text.count('class="booked"') == 2, re.findall(r"<li[^>]*>[^<]*<", text)
        cal = b.get("/reserve").text
        assert "cal-bar mine" in cal

        page = b.get("/configure").text
        refs = re.findall(r'name="(r\d+)\.ref" value="(\d+:\d+)"', page)
        assert len(refs) == 3 and 'name="r0.environment"' in page
        data: dict[str, object] = {"bin": "exp1"}
        for prefix, ref in refs:
            data[f"{prefix}.ref"] = ref
            data[f"{prefix}.environment"] = "tiny"
            data[f"{prefix}.__ssh"] = "1"
        # A bad value is refused by the agent and shown on the card, in words.
        data[f"{refs[0][0]}.environment"] = "huge"
        r = b.post("/configure/deploy", data, page="/configure")
        assert r.status_code == 400 and "choose one of tiny, big" in r.text
        page = b.get("/configure").text
        refs = re.findall(r'name="(r\d+)\.ref" value="(\d+:\d+)"', page)
        assert len(refs) == 1
        data = {"bin": "exp1", f"{refs[0][0]}.ref": refs[0][1], f"{refs[0][0]}.environment": "big"}
        r = b.post("/configure/deploy", data, page="/configure")
        assert r.status_code == 303 and r.headers["location"] == "/manage"

        def all_deployed() -> bool:
            text = b.get("/manage/updates").text
            statuses = re.findall(r'data-status="(\w+)"', text)
            return len(statuses) == 3 and set(statuses) == {"deployed"}

        wait_until_sync(all_deployed, timeout=30, interval=0.3)
        page = b.get("/manage").text
        assert "ssh root@pi-1" in page and 'data-bin="exp1"' in page
        ev = b.get(f"/manage/events/1/{refs[0][1].split(':')[1]}").text
        assert "<li" in ev and "No event yet" not in ev

        # Actions: reboot on one node, extend, and an action the agent refuses -> words.
        one = re.search(r'data-node="pi-1" data-ref="(\d+:\d+)"', page)
        assert one
        r = b.post("/manage/action", {"action": "reboot", "sel": one.group(1)}, page="/manage")
        assert "Reboot: pi-1 on rpi-lab" in r.text, re.findall(r"class=.flash[^<]*", r.text)
        r = b.post("/manage/action", {"action": "extend", "sel": one.group(1), "hours": "1"}, page="/manage")
        assert 'class="flash ok"' in r.text
        r = b.post(
            "/manage/action", {"action": "extend", "sel": one.group(1), "hours": "5000"}, page="/manage"
        )
        err = re.findall(r'class="flash error"[^>]*>([^<]*)', r.text)
        assert err and "rpi-lab" in err[0] and len(err[0]) > 40, err  # the agent's reason, in words
        r = b.post(
            "/manage/action",
            {
                "action": "destroy",
                "sel": [m for _p, m in re.findall(r'data-node="(pi-\d+)" data-ref="(\d+:\d+)"', page)],
            },
            page="/manage",
        )
        assert r.text.count('class="flash ok"') == 3


def test_other_users_reservations_invisible_and_untouchable(config: Path, agent: AgentProcess) -> None:
    with webui_client(config) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        add(admin, "rpi-lab", agent.port)
    with webui_client(config) as alice, webui_client(config) as bob:
        alice.login("alice@example.org", "alice-password")
        bob.login("bob@example.org", "bob-password")
        text = book(alice, node=["1/pi-7"], bin="secret-bin")
        assert 'class="booked"' in text, text
        page = alice.get("/configure").text
        ref = re.search(r'name="r0\.ref" value="(\d+:\d+)"', page)
        assert ref
        rid = ref.group(1).split(":")[1]
        # Bob sees the node busy, not who holds it, and not the reservation itself.
        cal = bob.get("/reserve").text
        assert "alice@example.org" not in cal and "cal-bar" in cal
        assert "pi-7" not in bob.get("/configure").text
        assert "secret-bin" not in bob.get("/manage").text
        assert "alice" not in bob.get(f"/manage/events/1/{rid}").text
        for action in ("destroy", "extend", "reboot"):
            r = bob.post("/manage/action", {"action": action, "sel": ref.group(1)}, page="/manage")
            assert 'class="flash error"' in r.text and "not found" in r.text
        r = bob.post("/configure/cancel", {"sel": ref.group(1)}, page="/configure")
        r = bob.post(
            "/configure/deploy",
            {"bin": "x", "r0.ref": ref.group(1), "r0.environment": "tiny"},
            page="/configure",
        )
        assert r.status_code == 400 and "not found" in r.text
        # Alice's reservation is untouched.
        assert 'name="r0.ref"' in alice.get("/configure").text
        alice.post("/configure/cancel", {"sel": ref.group(1)}, page="/configure")
        assert "pi-7" not in alice.get("/configure").text


def test_dead_agent_never_stalls_a_page(config: Path, agent: AgentProcess, tmp_path: Path) -> None:
    silent = SilentPort()
    extra = AgentProcess(tmp_path / "second", nodes=2, executor=False)
    try:
        with webui_client(config) as b:
            b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
            add(b, "rpi-lab", agent.port)
            add(b, "second", extra.port)
            engine = make_engine(load_webui_config(config).database_url)
            with session_factory(engine)() as s, s.begin():
                # A hung agent (accepts, never answers), as if it had hung after being added.
                s.add(
                    Agent(
                        name="hung",
                        host="127.0.0.1",
                        port=silent.port,
                        node_type="raspberry",
                        token=crypto.encrypt_str(
                            crypto.load_fernet(load_webui_config(config).key_path), TOKEN
                        ),
                        status="connected",
                    )
                )
            engine.dispose()
            extra.stop()  # a stopped agent
            for attempt in range(3):
                t0 = time.monotonic()
                page = b.get("/reserve").text
                took = time.monotonic() - t0
                assert took < 2.0, f"attempt {attempt}: {took:.2f} s"
                assert "Agent hung: unreachable" in page and "Agent second: unreachable" in page
                assert 'data-key="1/pi-1"' in page  # the live agent's nodes are there
            t0 = time.monotonic()
            manage = b.get("/manage").text
            assert time.monotonic() - t0 < 2.0 and "Agent hung: unreachable" in manage

            def state(name: str) -> str:
                row = re.search(rf'<tr data-agent="{name}"[^>]*>.*?</tr>', b.get("/admin/agents").text, re.S)
                assert row
                m = re.search(r"agent-(\w+) state", row.group(0))
                return m.group(1) if m else ""

            wait_until_sync(lambda: state("second") == "unreachable", timeout=10)
            # It comes back: connected again by the background check, without a click.
            extra.start()
            wait_until_sync(lambda: state("second") == "connected", timeout=40, interval=0.5)
            assert 'data-key="2/pi-1"' in b.get("/reserve").text
            # Delete with a POST (the page asks for confirmation first).
            b.post("/admin/agents/3/delete", page="/admin/agents")
            assert 'data-agent="hung"' not in b.get("/admin/agents").text
    finally:
        silent.close()
        extra.stop()


def test_detail_words_and_credentials_header(tmp_path: Path) -> None:
    assert detail_words(
        [{"loc": ["body", "filters", 0, "count"], "msg": "Input should be greater than 0"}]
    ) == ("filters.0.count: Input should be greater than 0")
    assert detail_words("not enough free nodes") == "not enough free nodes"
    cfg = load_webui_config(write_webui_config(tmp_path / "w"))
    fernet = crypto.load_fernet(cfg.key_path)
    engine = make_engine(cfg.database_url)
    hub = AgentHub(cfg, Database(session_factory(engine)), fernet)
    who = Identity("u@example.org", "user", {"g5k": {"user": "u", "password": "pw"}})
    g5k = hub.ref(
        Agent(
            id=1,
            name="g",
            host="h",
            port=1,
            token=crypto.encrypt_str(fernet, TOKEN),
            node_type="g5k",
            site="nancy",
            status="connected",
            last_error="",
            needs_credentials=True,
        )
    )
    rpi = hub.ref(
        Agent(
            id=2,
            name="r",
            host="h",
            port=1,
            token=crypto.encrypt_str(fernet, TOKEN),
            node_type="raspberry",
            site="",
            status="connected",
            last_error="",
            needs_credentials=False,
        )
    )
    h = hub._headers(g5k, who)
    assert h["Authorization"] == f"Bearer {TOKEN}" and h["X-Piseduce-User"] == "u@example.org"
    assert crypto.decrypt_json(fernet, h["X-Piseduce-Credentials"]) == {"user": "u", "password": "pw"}
    assert "X-Piseduce-Credentials" not in hub._headers(rpi, who)
    engine.dispose()


def test_configure_refuses_numbers_json_cannot_carry(config: Path, agent: AgentProcess) -> None:
    """float() reads nan, inf and 1e999; the agent call could not encode them: 500 (issue 11 #7)."""
    with webui_client(config) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        add(admin, "rpi-lab", agent.port)
    with webui_client(config) as b:
        b.login("alice@example.org", "alice-password")
        for value in ("nan", "NaN", "inf", "-Infinity", "1e999", "-1e400"):
            data = {"bin": "nums", "r0.ref": "1:999999", "r0.__number": "size", "r0.size": value}
            r = b.post("/configure/deploy", data, page="/configure")
            assert r.status_code == 400 and "size: a finite number is expected" in r.text, (value, r.text)
        data = {"bin": "nums", "r0.ref": "1:999999", "r0.__number": "size", "r0.size": "ten"}
        r = b.post("/configure/deploy", data, page="/configure")
        assert r.status_code == 400 and "size: a number is expected" in r.text


def test_admin_node_properties_keep_nan_as_text() -> None:
    from piseduce.webui.routes.infra_forms import parse_properties

    got = parse_properties("a=nan;b=inf;c=-inf;d=1.5;e=3")
    assert got == {"a": "nan", "b": "inf", "c": "-inf", "d": 1.5, "e": 3}
def test_a_refused_configure_form_comes_back_with_every_value(config: Path, agent: AgentProcess) -> None:
    import datetime as dt
    import html

    with webui_client(config) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        add(admin, "rpi-lab", agent.port)
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).replace(microsecond=0).isoformat()
    with webui_client(config) as b:
        b.login("bob@example.org", "bob-password")
        text = book(b, node=["1/pi-5", "1/pi-7"], bin="kept", when="later", start=start)
        assert text.count('class="booked"') == 2, text
        page = b.get("/configure").text
        refs = dict(re.findall(r'name="(r\d+)\.ref" value="(\d+:\d+)"', page))
        assert len(refs) == 2 and 'name="g0.bin" value="kept"' in page
        data: dict[str, object] = {"g0.bin": "kept-too"}
        for prefix, ref in refs.items():
            data.update({f"{prefix}.ref": ref, f"{prefix}.group": "0", f"{prefix}.__tick": "1",
                         f"{prefix}.deploy": "on", f"{prefix}.__ssh": "1"})  # fmt: skip
        data["r0.environment"], data["r1.environment"] = "big", "tiny"
        data["r0.ssh_keys_extra"] = "not a public key"  # refused by the web UI: nothing is sent
        r = b.post("/configure/deploy", data, page="/configure")
        # The reason names the node, in the banner and on its card.
        assert r.status_code == 400 and "pi-5 (rpi-lab): " in r.text and "Node 1" not in r.text, r.text
        assert re.search(r'data-node="pi-5">.*?<div class="err" role="alert">Not deployed: ', r.text, re.S)
        # Every value is back: the group's bin, each card's environment and the text of the keys.
        assert 'name="g0.bin" value="kept-too"' in r.text
        assert re.search(r'name="r0\.environment"[^>]*>.*?<option value="big" selected>', r.text, re.S)
        assert re.search(r'name="r1\.environment"[^>]*>.*?<option value="tiny" selected>', r.text, re.S)
        assert f"{html.escape('not a public key')}</textarea>" in r.text
        # An unticked card is not deployed: it waits on the page, with the bin of its reservation.
        del data["r0.ssh_keys_extra"], data["r1.deploy"]
        r = b.post("/configure/deploy", data, page="/configure")
        assert r.status_code == 303, r.text
        page = b.get("/configure").text
        assert len(re.findall(r'name="r\d+\.ref"', page)) == 1 and 'name="g0.bin" value="kept"' in page
        r = b.post("/configure/cancel", {"sel": list(refs.values())}, page="/configure")
