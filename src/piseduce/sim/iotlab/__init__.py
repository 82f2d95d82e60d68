"""An emulator of the FIT IoT-LAB REST API for one site (`piseduce sim iotlab`)."""

from piseduce.sim.iotlab.app import create_app
from piseduce.sim.iotlab.cli import build_site, command
from piseduce.sim.iotlab.model import Site

__all__ = ["Site", "build_site", "command", "create_app"]
