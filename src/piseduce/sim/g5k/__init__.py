"""Grid'5000 REST API emulator (`piseduce sim g5k`): the subset of protocols.md §A that the g5k
driver and python-grid5000 use, served for one site with OAR and Kadeploy state progressions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from piseduce.sim.g5k.cli import command
from piseduce.sim.g5k.model import Faults, G5kSim, SimError

if TYPE_CHECKING:
    from starlette.types import ASGIApp

__all__ = ["Faults", "G5kSim", "SimError", "command", "create_app"]


def create_app(sim: G5kSim) -> ASGIApp:
    """The ASGI app serving `sim` (imported lazily: the CLI hub loads this package at start)."""
    from piseduce.sim.g5k.app import create_app as _create

    return _create(sim)
