"""pisctl and the client when an agent does not answer: a list says which agent is missing from it
(one `warning:` line, stdout still the list), a booking on that agent is one `error:` line naming it
and saying what to do; the client library issues AgentsUnavailable, a warning a script can catch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from helpers.agent_helpers import free_port
from helpers.pisctl_helpers import User, make_token, one_error_line
from helpers.webui_fixtures import AgentProcess, WebuiProcess, add_user, register_agent, write_webui_config

pytestmark = pytest.mark.slow

CAROL = "carol@example.org"


@dataclass
class Site:
    url: str
    token: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("pisctl-down")
    cfg = write_webui_config(root / "webui", agent_timeout_seconds=2.0, health_check_seconds=2)
    add_user(cfg, CAROL, "a-user-password")
    # Made before the web UI runs: its health checks of the silent agent write to the same SQLite
    # file every 2 s, and a token written beside them met "database is locked" under load.
    token = make_token(cfg, CAROL)
    with contextlib.ExitStack() as started:
        agent = AgentProcess(root / "rpi-up", nodes=3)
        started.callback(agent.stop)
        register_agent(cfg, "rpi-up", agent.port, "raspberry")
        # An agent the web UI knows whose address answers nothing (its machine is off).
        register_agent(cfg, "rpi-off", free_port(), "raspberry")
        webui = WebuiProcess(cfg)
        started.callback(webui.stop)
        yield Site(webui.url, token)


@pytest.fixture(scope="module")
def carol(site: Site, tmp_path_factory: pytest.TempPathFactory) -> User:
    user = User(tmp_path_factory.mktemp("carol"))
    user.login(site.url, site.token)
    return user


def _warning(err: str) -> str:
    """The one `warning:` line (a table's "No reservation." may be on stderr too), no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", [["nodes"], ["status"], ["nodes", "--json"], ["status", "--json"]])
def test_a_list_names_the_agent_that_did_not_answer(carol: User, command: list[str]) -> None:
    ran = carol.run(*command)
    assert ran.code == 0, ran.err
    line = _warning(ran.err)
    assert "rpi-off" in line and "rpi-up" not in line
    assert "again" in line  # what to do next
    if "--json" in command:
        data = ran.json()
        assert isinstance(data, list)
        if command[0] == "nodes":
            assert {n["agent"] for n in data} == {"rpi-up"}
    elif command[0] == "nodes":
        assert "pi-1" in ran.out


def test_booking_on_the_silent_agent_is_one_line_naming_it(carol: User) -> None:
    ran = carol.run("reserve", "--nodes", "rpi-off/pi-1", "--hours", "1")
    assert ran.code == 1
    line = one_error_line(ran)
    assert "rpi-off" in line and "503" in line
    assert "again" in line
    assert carol.run("status", "--json").json() == []  # nothing was booked


def test_the_client_warns_a_script(site: Site) -> None:
    from piseduce.client import AgentsUnavailable, Client

    with Client(site.url, site.token) as api:
        with pytest.warns(AgentsUnavailable) as caught:
            found = api.nodes()
        assert {n.agent for n in found} == {"rpi-up"}
        # Only the client's warnings: a ResourceWarning of an earlier test's garbage may land here.
        ours = [w.message for w in caught if isinstance(w.message, AgentsUnavailable)]
        assert "rpi-off" in ours[0].agents
        with pytest.warns(AgentsUnavailable):
            assert api.reservations() == []
