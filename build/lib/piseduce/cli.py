"""The `piseduce` command: agent, webui, simulators and the demo."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from piseduce.cli_files import FileOptionError
from piseduce.config import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="PiSeduce testbed reservation manager.")

# Each part owns its sub-command module; a missing part simply has no command yet.
SUBCOMMANDS = {
    "agent": ("piseduce.agent.cli", "Run an agent: init-db, api, exec, monitor."),
    "webui": ("piseduce.webui.cli", "Run the web UI: gen-key, init-db, serve, create-admin."),
    "sim": ("piseduce.sim.cli", "Simulators of the testbeds: rpi, g5k, iotlab."),
}
for name, (module, help_text) in SUBCOMMANDS.items():
    try:
        sub = importlib.import_module(module).app
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        continue
    app.add_typer(sub, name=name, help=help_text)

try:
    from piseduce.demo.command import demo as _demo

    app.command("demo", help="Start the whole simulated testbed on loopback.")(_demo)
except ModuleNotFoundError as exc:
    if exc.name not in ("piseduce.demo", "piseduce.demo.command"):
        raise


def main() -> None:
    try:
        app()
    except (ConfigError, FileOptionError) as exc:
        # One clear line, never a traceback, for a bad configuration or a file it cannot use.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    from piseduce.logs import configure

    configure(level=level, fmt=fmt)


if __name__ == "__main__":
    logging.basicConfig()
    main()
