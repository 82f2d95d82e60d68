"""The typed protocol between the web UI and the agents (issue 12 #2).

Each driver's real agent (API over ASGI, on its simulator) is asked through the web UI's typed
client (`AgentClient`), route by route: every answer must validate, carry no field the protocol
does not know (a field the agent sends and the web UI would drop is a contract gap), and survive a
round trip through its model. Then hostile answers: a malformed one is refused in one sentence
naming the agent and the field, an unknown extra field is ignored. And statically: the web UI's
routes hold no agent path and no node-type branch, and no status name is typed twice."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

from helpers.g5k_fixtures import USERS, Emulator
from helpers.iotlab_fixtures import SITE, firmware_folder, running_emulator
from helpers.webui_fixtures import write_webui_config
from piseduce import crypto, protocol
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.protocol import AgentInfo, Feature, ReservationOut
from piseduce.webui.agent_client import AgentClient, Result, read
from piseduce.webui.agents import AgentRef, Identity, Reply
from piseduce.webui.database import Database

SRC = Path(__file__).resolve().parents[1] / "src" / "piseduce"
ALICE = "alice@example.org"


# ---------------------------------------------------------------- helpers


def _keys(value: Any) -> set[str]:
    return set(value) if isinstance(value, dict) else set()


def round_trip(result: Result[Any], raw: Any) -> None:
    """The answer validated, lost no field the agent sent, and comes back the same from its dump."""
    assert result.value is not None, result.words
    values = result.value if isinstance(result.value, list) else [result.value]
    raws = raw if isinstance(raw, list) else [raw]
    for value, item in zip(values, raws, strict=True):
        assert isinstance(value, BaseModel)
        dumped = value.model_dump(mode="json")
        assert _keys(item) <= set(type(value).model_fields), (type(value).__name__, _keys(item) - set(dumped))
        assert type(value).model_validate(dumped) == value


class Recorder:
    """The client's transport, keeping every raw JSON answer by route (to compare with the models)."""

    def __init__(self, app: Any) -> None:
        self.raw: dict[str, Any] = {}
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), event_hooks={"response": [self._keep]}
        )

    async def _keep(self, response: httpx.Response) -> None:
        await response.aread()
        if response.headers.get("content-type", "").startswith("application/json"):
            self.raw[f"{response.request.method} {response.request.url.path}"] = response.json()


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Any]:
    """An AgentClient speaking to an in-process agent app, with the agent's key file."""
    made: list[Any] = []

    def make(app: Any, key_path: Path, node_type: str) -> tuple[AgentClient, AgentRef, Recorder]:
        folder = tmp_path / f"webui{len(made)}"
        cfg = load_webui_config(write_webui_config(folder, agent_timeout_seconds=30.0))
        engine = make_engine(cfg.database_url)
        client = AgentClient(cfg, Database(session_factory(engine)), crypto.load_fernet(key_path))
        recorder = Recorder(app)
        client.pools.route_all(recorder.client)
        token = "test-token-0123456789"
        ref = AgentRef(1, "lab", "agent", 80, "http://agent", token, node_type, "", "connected", "", False)
        made.append(engine)
        return client, ref, recorder

    yield make
    for engine in made:
        engine.dispose()


async def _probe(client: AgentClient, ref: AgentRef, rec: Recorder) -> AgentRef:
    info = await client.info(ref)
    round_trip(info, rec.raw["GET /api/info"])
    assert info.value is not None
    return dataclasses.replace(ref, info=info.value)


async def _common(
    client: AgentClient, ref: AgentRef, rec: Recorder, who: Identity, admin: Identity, node: str
) -> ReservationOut:
    """The routes every driver has: nodes, schedule, booking, listing, one reservation, its form,
    the admin's node list and open actions. Returns the booked reservation."""
    assert (await client.health(ref)).ok
    nodes = await client.nodes(ref, who)
    round_trip(nodes, rec.raw["GET /api/nodes"])
    assert nodes.value is not None and node in [n.name for n in nodes.value], nodes
    now = dt.datetime.now(dt.UTC)
    day = await client.schedule(ref, who, now, now + dt.timedelta(days=1))
    round_trip(day, rec.raw["GET /api/schedule"])
    body = {"filters": [{"nodes": [node]}], "duration_hours": 2, "bin": "proto"}
    booked = await client.book(ref, who, body)
    assert booked.ok, booked.words
    round_trip(booked, rec.raw["POST /api/reservations"])
    assert booked.value is not None
    (r,) = booked.value.reservations
    round_trip(await client.reservations(ref, who, status="active"), rec.raw["GET /api/reservations"])
    held, errors = await client.held(who, status="active", refs=[ref])
    assert errors == [] and [x.r.id for x in held] == [r.id]
    round_trip(await client.reservation(ref, who, r.id), rec.raw[f"GET /api/reservations/{r.id}"])
    round_trip(await client.form(ref, who, r.id), rec.raw[f"GET /api/reservations/{r.id}/form"])
    round_trip(await client.admin_nodes(ref, admin), rec.raw["GET /api/admin/nodes"])
    round_trip(await client.actions(ref, admin), rec.raw["GET /api/admin/actions"])
    return r


# ---------------------------------------------------------------- each driver's agent


def _creds(kind: str, login: str, password: str) -> dict[str, dict[str, str]]:
    return {kind: {"user": login, "password": password}}


async def test_g5k_agent_answers_validate(
    g5k_emulator: Emulator, make_agent_config: Any, make_client: Any
) -> None:
    from piseduce.agent.app import create_app

    config = make_agent_config(
        node_type="g5k", driver="", name="g5k-nancy", g5k_site="nancy", g5k_api_url=g5k_emulator.url,
        timeout_scale=0.01, poll_interval=0.05, turnaround_minutes=0, g5k_status_cache_seconds=0,
    )  # fmt: skip
    app = create_app(config)
    try:
        client, ref, rec = make_client(app, config.key_path, "g5k")
        ref = await _probe(client, ref, rec)
        assert ref.about.credentials == "g5k" and ref.supports(Feature.EXTEND)
        assert not ref.supports(Feature.NODE_REGISTRY) and not ref.supports(Feature.POWER)
        who = Identity(ALICE, "user", _creds("g5k", "alice", USERS["alice"]))
        admin = Identity("root@example.org", "admin", _creds("g5k", "alice", USERS["alice"]))
        r = await _common(client, ref, rec, who, admin, "grisou-1")
        check = await client.check_credentials(ref, who, 10)
        round_trip(check, rec.raw["POST /api/credentials/check"])
        assert check.value is not None and check.value.valid
        done = await client.act(ref, who, r.id, "destroy")
        round_trip(done, rec.raw[f"POST /api/reservations/{r.id}/destroy"])
    finally:
        app.state.agent.engine.dispose()


@pytest.fixture
def iotlab() -> Iterator[Any]:
    with running_emulator() as emu:
        yield emu


async def test_iotlab_agent_answers_validate_and_it_offers_no_extend(
    iotlab: Any, make_agent_config: Any, make_client: Any
) -> None:
    from piseduce.agent.app import create_app

    config = make_agent_config(
        node_type="iot-lab", driver="", iot_site=SITE, iotlab_api_url=iotlab.api_url,
        firmware_path="firmwares/", timeout_scale=0.05, poll_interval=0.05, turnaround_minutes=0,
    )  # fmt: skip
    firmware_folder(config.firmware_dir)
    app = create_app(config)
    try:
        client, ref, rec = make_client(app, config.key_path, "iot-lab")
        ref = await _probe(client, ref, rec)
        assert ref.about.credentials == "iotlab" and ref.supports(Feature.FIRMWARE)
        assert not ref.supports(Feature.EXTEND)
        creds = _creds("iotlab", "alice", iotlab.users["alice"])
        who = Identity(ALICE, "user", creds)
        admin = Identity("root@example.org", "admin", creds)
        r = await _common(client, ref, rec, who, admin, "m3-1")
        # Nothing offers an extension, and the agent refuses one in words.
        assert "extend" not in r.actions
        refused = await client.extend(ref, who, r.id, 1)
        assert refused.status == 409 and "cannot extend" in refused.error, refused
        done = await client.act(ref, who, r.id, "destroy")
        round_trip(done, rec.raw[f"POST /api/reservations/{r.id}/destroy"])
    finally:
        app.state.agent.engine.dispose()


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from piseduce.sim.images import build_environment

    folder = tmp_path_factory.mktemp("images")
    return folder, build_environment(folder, "raspios", size_mb=56, compress="gz")


@pytest.fixture
async def rpi_site(tmp_path: Path, image_dir: tuple[Path, dict[str, Any]]) -> AsyncIterator[Any]:
    from helpers.rpi_site import make_site

    async with make_site(tmp_path, image_dir) as s:
        yield s


@pytest.mark.slow
async def test_raspberry_agent_answers_validate(rpi_site: Any, make_client: Any) -> None:
    client, ref, rec = make_client(None, rpi_site.config.key_path, "raspberry")
    rec.client = rpi_site.client
    client.pools.route_all(rpi_site.client)
    rpi_site.client.event_hooks["response"].append(rec._keep)
    ref = await _probe(client, ref, rec)
    for feature in (Feature.EXTEND, Feature.POWER, Feature.ENVIRONMENTS, Feature.MONITORING,
                    Feature.NODE_REGISTRY, Feature.REBOOT, Feature.BOOTFILES, Feature.SAVE_ENV):
        assert ref.supports(feature), feature
    assert ref.about.credentials == "none"
    who, admin = Identity(ALICE, "user"), Identity("root@example.org", "admin")
    board = rpi_site.cluster.inventory()["boards"][0]["name"]
    r = await _common(client, ref, rec, who, admin, board)
    extended = await client.extend(ref, who, r.id, 1)
    round_trip(extended, rec.raw[f"POST /api/reservations/{r.id}/extend"])
    switches = await client.switches(ref, admin)
    round_trip(switches, rec.raw["GET /api/admin/switches"])
    assert switches.value
    name = switches.value[0].name
    round_trip(await client.switch_ports(ref, admin, name), rec.raw[f"GET /api/admin/switches/{name}/ports"])
    envs = await client.environments(ref, admin)
    round_trip(envs, rec.raw["GET /api/admin/environments"])
    assert envs.value
    env = envs.value[0].name
    round_trip(await client.environment(ref, admin, env), rec.raw[f"GET /api/admin/environments/{env}"])
    round_trip(await client.scan_environments(ref, admin), rec.raw["POST /api/admin/environments/scan"])
    mon = await client.monitoring(ref, who, "power", "1h")
    round_trip(mon, rec.raw["GET /api/monitoring"])
    done = await client.act(ref, who, r.id, "destroy")
    round_trip(done, rec.raw[f"POST /api/reservations/{r.id}/destroy"])


# ---------------------------------------------------------------- hostile and newer agents

REF = AgentRef(7, "pi-lab", "h", 1, "http://h:1", "t" * 12, "raspberry", "", "connected", "", False)
GOOD = {
    "id": 3, "node": "pi-1", "owner": ALICE, "bin": "b", "start": "2030-01-01T10:00:00Z",
    "end": "2030-01-01T12:00:00Z", "status": "deployed", "progress": 40, "actions": ["destroy"],
}  # fmt: skip


def test_a_malformed_answer_is_refused_in_one_sentence_naming_agent_and_field() -> None:
    for bad, field, words in (
        ({**GOOD, "status": "exploded"}, "0.status", "is not a reservation status"),
        ({**GOOD, "progress": 250}, "0.progress", "less than or equal to 100"),
        ({**GOOD, "start": "yesterday"}, "0.start", "datetime"),
        ({**GOOD, "node": "x" * 5000}, "0.node", "at most 255"),
        ({**GOOD, "actions": ["format_c"]}, "0.actions.0", "is not a reservation action"),
    ):
        result = read(Reply(REF, True, 200, [bad]), list[ReservationOut], "GET /api/reservations")
        assert result.value is None and not result.ok
        assert result.words.startswith("pi-lab: answered something unexpected to GET /api/reservations (")
        assert f"{field}: " in result.words and words in result.words, result.words
        assert "\n" not in result.words
    # Not a list at all, and a huge list of garbage: one sentence, a bounded one.
    assert "pi-lab" in read(Reply(REF, True, 200, {"x": 1}), list[ReservationOut], "GET /api/x").words
    many = read(Reply(REF, True, 200, [{"junk": i} for i in range(1000)]), list[ReservationOut], "GET /api/x")
    assert "more" in many.words and len(many.words) < 1000


def test_a_newer_agents_extra_fields_and_features_are_ignored() -> None:
    newer = [{**GOOD, "gpu_hours": 3}]
    result = read(Reply(REF, True, 200, newer), list[ReservationOut], "GET /api/reservations")
    assert result.value is not None and result.value[0].status == "deployed"
    assert not hasattr(result.value[0], "gpu_hours")
    info = AgentInfo.model_validate(
        {"name": "n", "node_type": "quantum", "site": "s", "version": "9", "features": ["extend", "teleport"],
         "credentials": "none", "colour": "blue"}
    )  # fmt: skip
    assert info.features == {Feature.EXTEND}


def test_an_older_agents_info_reads_as_what_it_did() -> None:
    """An agent of before `features` (the web UI upgraded first): its node type says what it does."""
    old = {"name": "n", "node_type": "iot-lab", "site": "grenoble", "version": "0.1"}
    info = AgentInfo.model_validate(old)
    assert info.credentials == "iotlab" and info.supports(Feature.REBOOT)
    assert not info.supports(Feature.EXTEND)
    assert AgentInfo.model_validate({**old, "node_type": "raspberry"}).supports(Feature.POWER)


def test_every_answer_model_ignores_extras_and_the_agent_routes_declare_them() -> None:
    from piseduce.agent.app import create_app  # noqa: F401 (the routes are declared on import)

    models = [v for v in vars(protocol).values() if isinstance(v, type) and issubclass(v, protocol.Wire)]
    assert len(models) > 15
    for model in models:
        assert model.model_config.get("extra") == "ignore", model
    TypeAdapter(list[ReservationOut]).json_schema()  # documentable (the agent's OpenAPI has it)


# ---------------------------------------------------------------- static


def _py(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_web_ui_routes_hold_no_agent_path_and_no_node_type_branch() -> None:
    problems = []
    for path in _py(SRC / "webui" / "routes"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""["']/api/""", line) or re.search(r"node_type\s*(==|!=|\bin\b|\bnot in\b)", line):
                problems.append(f"{path.name}:{n}: {line.strip()}")
    assert problems == [], "\n".join(problems)


def test_no_status_name_is_typed_again_in_the_web_ui() -> None:
    names = "|".join(protocol.STATUSES)
    problems = []
    for path in _py(SRC / "webui"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(rf"""["']({names})["']""", line):
                problems.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- the web UI follows the features


def iotlab_agent_of_today(calls: list[str]) -> Any:
    """An IoT-LAB agent as the agents before the protocol answered: an /api/info without features,
    and `extend` among its reservation's actions (what the web UI offered, though IoT-LAB cannot)."""
    from fastapi import FastAPI

    app = FastAPI()
    mine = {**GOOD, "node": "m3-1", "actions": ["destroy", "extend", "redeploy"]}

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {"name": "iot", "node_type": "iot-lab", "site": SITE, "version": "0.1"}

    @app.get("/api/reservations")
    async def reservations() -> list[dict[str, Any]]:
        return [mine]

    @app.post("/api/reservations/{rid}/{action}")
    async def act(rid: int, action: str) -> dict[str, Any]:
        calls.append(action)
        return {"id": rid, "status": "deployed", "message": f"{action} queued"}

    return app


@pytest.mark.usefixtures("fast_argon2")
def test_manage_offers_no_extend_for_iotlab_reservations(tmp_path: Path) -> None:
    from helpers.iotlab_fixtures import serve
    from helpers.webui_fixtures import add_user, register_agent, webui_client

    config = write_webui_config(tmp_path / "webui")
    add_user(config, ALICE, "alice-password")
    calls: list[str] = []
    with serve(iotlab_agent_of_today(calls)) as url:
        register_agent(config, "iot-grenoble", int(url.rsplit(":", 1)[1]), "iot-lab")
        with webui_client(config) as b:
            b.login(ALICE, "alice-password")
            page = b.get("/manage").text
            card = page.split('data-ref="1:3"')[1].split('class="node-card')[0]
            assert 'data-action="destroy"' in card and 'data-action="redeploy"' in card
            assert 'data-action="extend"' not in card, "Extend offered for an IoT-LAB reservation"
            assert '<option value="extend">' not in page  # nor in the actions bar
            # Asked anyway (a crafted form): refused in words, the agent never asked.
            r = b.post("/manage/action", {"action": "extend", "sel": "1:3", "hours": "1"}, page="/manage")
            assert "cannot extend" in r.text and calls == []
            r = b.post("/manage/action", {"action": "redeploy", "sel": "1:3"}, page="/manage")
            assert "redeploy queued" in r.text and calls == ["redeploy"]
