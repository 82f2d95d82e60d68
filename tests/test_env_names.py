"""Private environment names stay private (issue 11, defect 9): saving a node as an environment
under a name another user's private environment holds is refused in the same words as a name a
stray file holds, which tell nothing of who or what holds it. (Deploy forms list only public and
own environments, and refuse another user's: test_env_factory.py's real raspberry run.)"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from helpers.webui_fixtures import AgentProcess, agent_headers, deployed_on
from piseduce.agent.models import Environment
from piseduce.config import load_agent_config
from piseduce.db import make_engine, session_factory

ALICE = "alice@example.org"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    folder = tmp_path_factory.mktemp("env-names")
    a = AgentProcess(folder / "rpi", nodes=3, driver="helpers.env_factory_driver:FactoryDriver",
                     env_path=str(folder / "envs"))
    cfg = load_agent_config(a.config, check_files=False)
    cfg.env_dir.mkdir(parents=True, exist_ok=True)
    (cfg.env_dir / "stray.img.gz").write_bytes(b"not registered")
    engine = make_engine(cfg.database_url)
    with session_factory(engine).begin() as s:
        s.add(Environment(name="carol-private", image="carol.img.gz", owner="carol@example.org"))
        s.add(Environment(name="alice-own", image="alice.img.gz", owner=ALICE))
        s.add(Environment(name="public-env", image="public.img.gz", owner=""))
    engine.dispose()
    yield a
    a.stop()


def register(agent: AgentProcess, rid: int, name: str) -> httpx.Response:
    return httpx.post(f"{agent.url}/api/reservations/{rid}/register_env", json={"name": name},
                      headers=agent_headers(ALICE), timeout=10)


def test_a_taken_name_tells_nothing_of_who_holds_it(agent: AgentProcess) -> None:
    rid = deployed_on(agent, ALICE, "pi-1")
    refusals = {name: register(agent, rid, name) for name in ("carol-private", "stray")}
    for name, r in refusals.items():
        assert r.status_code == 422
        assert r.json()["detail"] == (
            f"name: the name {name} is not available on this agent; choose another one"
        )
    assert "carol" not in refusals["carol-private"].text.replace("carol-private", "")
    # What the caller may see is said plainly: a public environment, or one of their own.
    r = register(agent, rid, "public-env")
    assert r.status_code == 422 and "a public environment named public-env already exists" in r.text
    r = register(agent, rid, "alice-own")
    assert r.status_code == 422 and "your environment alice-own already exists" in r.text
