"""`piseduce sim rpi|g5k|iotlab`: each simulator module provides a Typer-annotated `command`."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)

SIMULATORS = {
    "rpi": ("piseduce.sim.rpi.cli", "A PoE switch (SNMP) and Raspberry Pi boards (SSH; real hosts as root)."),
    "g5k": ("piseduce.sim.g5k.cli", "An emulator of the Grid'5000 REST API for one site."),
    "iotlab": ("piseduce.sim.iotlab.cli", "An emulator of the FIT IoT-LAB REST API for one site."),
}
for _name, (_module, _help) in SIMULATORS.items():
    try:
        _command = importlib.import_module(_module).command
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise
        continue
    app.command(_name, help=_help)(_command)
