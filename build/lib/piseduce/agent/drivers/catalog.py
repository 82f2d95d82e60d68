"""Each driver's processes and their steps, as the drivers declare them: for people reading the
code (docs/architecture.md) and for the test that keeps that page true.

    python -m piseduce.agent.drivers.catalog          # every node type
    python -m piseduce.agent.drivers.catalog g5k      # one

A driver is built the way the agent builds it, against a throwaway SQLite database in a temporary
folder (the raspberry driver reads its switches at start), so nothing of a real agent is touched.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from piseduce.agent.drivers import DRIVERS, load_driver
from piseduce.config import AgentConfig


def processes_of(node_type: str) -> dict[str, list[str]]:
    """Process name → its steps' names, in order, for one node type."""
    from piseduce.db import make_engine, session_factory, upgrade

    with tempfile.TemporaryDirectory(prefix="piseduce-catalog-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'agent.db'}"
        upgrade("agent", url)
        engine = make_engine(url)
        try:
            config = AgentConfig(auth_token=["catalog-token-unused"], node_type=node_type)  # type: ignore[arg-type]
            driver = load_driver(config, session_factory(engine))
            return {name: [s.name for s in p.steps] for name, p in driver.processes().items()}
        finally:
            engine.dispose()


def main(argv: list[str]) -> None:
    for node_type in argv or list(DRIVERS):
        for process, steps in processes_of(node_type).items():
            print(f"{node_type:9} {process:12} {' → '.join(steps)}")


if __name__ == "__main__":
    main(sys.argv[1:])
