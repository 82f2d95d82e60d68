"""`piseduce demo`: the whole testbed on loopback, in one folder.

It starts the three simulators (a PoE switch with Raspberry Pi boards, a Grid'5000 site, an
IoT-LAB site), one agent of each type (API + executor) and the web UI with the three agents
already added, then prints the URL and the logins. Ctrl-C stops everything. Every process is a
child in its own session, logging to `<data>/logs/`, so nothing is left behind.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import typer

from piseduce.cli_files import usable_folder
from piseduce.demo.announce import announce
from piseduce.demo.folder import CREDENTIALS_FILE, Secrets, private_folder
from piseduce.demo.phases import DemoRun, start
from piseduce.demo.ports import Ports, check_ports
from piseduce.demo.supervisor import RESTART_BURST, RESTART_WINDOW, DemoError, Supervisor, console


def supervise(sup: Supervisor) -> None:
    """Until SIGTERM/SIGINT, restarting a process that dies (unless it keeps dying), then stop
    everything."""
    stop = {"now": False}

    def _stop(_sig: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop["now"]:
            dead = sup.dead()
            if dead is not None:
                code = dead.proc.returncode
                if not sup.may_restart(dead):
                    console.print(
                        f"[red]The {dead.name} stopped again (exit code {code}) after {RESTART_BURST} "
                        f"restarts within {RESTART_WINDOW:.0f} s; see {dead.log}. Stopping the demo.[/]"
                    )
                    break
                console.print(
                    f"[yellow]The {dead.name} stopped unexpectedly (exit code {code}); restarting it "
                    f"(see {dead.log}).[/]"
                )
                sup.restart(dead)
            time.sleep(0.5)
    finally:
        console.print("Stopping the demo…")
        sup.stop()
        console.print("Stopped.")


def run_demo(
    data: Path, fresh: bool, ports: Ports, boards: int, time_scale: float, ready_file: Path | None
) -> None:
    if fresh and data.is_dir():
        shutil.rmtree(data)
    new = not data.exists()  # a folder this run creates is the demo's: 0700 from the start
    usable_folder(data, "--data")
    check_ports(ports)
    private_folder(data, ours=new)
    # Logs, saved environments (users' cards), uploaded firmwares, the boards' cards and keys;
    # the Pi simulator serves tftpboot and nfs to its boards as this same account.
    for sub in ("logs", "environments", "firmwares", "rpi", "rpi/tftpboot", "rpi/nfs", "rpi/state", "webui"):
        private_folder(data / sub)
    sup, sec = Supervisor(data / "logs"), Secrets(data / CREDENTIALS_FILE)
    run = DemoRun(data, ports, boards, time_scale, sup, sec)
    start(run)
    announce(run, ready_file)
    supervise(run.sup)


def demo(
    data: Path = typer.Option(Path("demo-data"), "--data", help="Folder holding all the demo's state."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete the data folder first and start over."),
    webui_port: int = typer.Option(9000, "--webui-port", min=1, max=65535),
    base_port: int = typer.Option(
        8090,
        "--base-port",
        min=1,
        max=65000,
        help="Agents on base+1..3, the SSH gateway on base+4, emulators on base+10/11, "
        "the switch on UDP base+20.",
    ),
    boards: int = typer.Option(8, "--boards", min=1, max=250, help="Simulated Raspberry Pi boards."),
    time_scale: float = typer.Option(
        10.0,
        "--time-scale",
        min=1.0,
        max=1000.0,
        help="How much faster than real hardware the simulators run.",
    ),
    ready_file: Path | None = typer.Option(None, "--ready-file", hidden=True),
) -> None:
    """Start the whole simulated testbed on loopback and print the URL and logins."""
    try:
        run_demo(data.resolve(), fresh, Ports(webui_port, base_port), boards, time_scale, ready_file)
    except DemoError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
