"""One naming rule for steps across drivers (drivers/base.py, `Step`): snake_case, a verb first,
`wait_<what>` for a step that only waits (and so has a done() poll)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from piseduce.agent.drivers.base import Step
from piseduce.agent.drivers.g5k.driver import G5kDriver
from piseduce.agent.drivers.iotlab.driver import IotlabDriver
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.config import AgentConfig

# The verbs the drivers' steps start with; a new step either uses one or adds its own here, as a
# verb (the rule is read by people choosing a name, this list only catches a noun slipping in).
VERBS = {
    "boot", "power", "wait", "write", "verify", "partition", "configure", "reboot", "check", "wipe",
    "remove", "read", "register", "prepare", "run", "connect", "delete", "release", "submit", "reload",
    "reset", "clean",
}


@pytest.mark.parametrize(
    ("node_type", "cls"), [("raspberry", RaspberryDriver), ("g5k", G5kDriver), ("iot-lab", IotlabDriver)]
)
def test_every_step_of_every_driver_follows_the_rule(
    make_agent_config: Callable[..., AgentConfig], node_type: str, cls: Any
) -> None:
    config = make_agent_config(node_type=node_type, driver="")
    from piseduce.db import make_engine, session_factory

    engine = make_engine(config.database_url)
    try:
        driver = cls(config, session_factory(engine))
        steps = {s.name: s for p in driver.processes().values() for s in p.steps}
    finally:
        engine.dispose()
    assert steps
    for name, step in steps.items():
        assert name.split("_")[0] in VERBS, name
        assert step.done is not None or not name.startswith("wait_"), name


async def _run(ctx: Any) -> None:
    return None


def test_a_step_breaking_the_rule_is_refused_where_it_is_declared() -> None:
    with pytest.raises(ValueError, match="snake_case"):
        Step("Write-Image", _run)
    with pytest.raises(ValueError, match="snake_case"):
        Step("a" * 65, _run)
    with pytest.raises(ValueError, match="needs a done"):
        Step("wait_boot", _run)
