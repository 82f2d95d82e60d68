"""The fake driver with a `register_env` process, for the web UI tests of the environment factory
(the real process, against the simulated boards, is in test_env_factory.py)."""

from __future__ import annotations

from helpers.fake_driver import FakeDriver, simple
from piseduce.agent.drivers.base import Process


class FactoryDriver(FakeDriver):
    def processes(self) -> dict[str, Process]:
        procs = dict(super().processes())
        procs["register_env"] = Process("register_env", (simple("save_card"),))
        return procs
