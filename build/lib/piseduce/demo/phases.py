"""The demo's start as named phases (keys, images, simulators, agents, web UI) sharing one
`DemoRun`, run in turn under one progress bar."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from piseduce import crypto
from piseduce.demo.configure import (
    DEMO_USER,
    G5K_LOGIN,
    IOT_LOGIN,
    SITE_G5K,
    SITE_IOT,
    agent_config,
    board_network_keys,
    register_raspberry,
    setup_webui,
)
from piseduce.demo.folder import Secrets, build_environments, demo_firmwares, ssh_keypair, write_json
from piseduce.demo.ports import Ports
from piseduce.demo.supervisor import Supervisor, console, http_ok, piseduce_cmd, tcp_open, wait_until


@dataclass
class DemoRun:
    """What the phases of a demo start share and fill in, phase after phase."""

    data: Path
    ports: Ports
    boards: int
    time_scale: float
    sup: Supervisor
    sec: Secrets
    user_pub: str = ""
    inventory: Any = None
    tokens: dict[str, str] = field(default_factory=dict)
    agents: list[dict[str, Any]] = field(default_factory=list)
    webui_cfg: Path | None = None
    admin_email: str = ""
    web_url: str = ""


def keys_and_accounts(run: DemoRun) -> None:
    data, sec = run.data, run.sec
    crypto.generate_key_file(data / "secret.key")
    agent_pub = ssh_keypair(data / "agent_ssh_key", "piseduce-demo-agent")
    run.user_pub = ssh_keypair(data / "demo_user_key", DEMO_USER)
    (data / "agent_pubkey").write_text(agent_pub + "\n")
    write_json(data / "g5k-users.json", {G5K_LOGIN: sec.get("g5k_password")})
    write_json(data / "iotlab-users.json", {IOT_LOGIN: sec.get("iot_password")})
    demo_firmwares(data / "firmwares")


def os_images(run: DemoRun) -> None:
    build_environments(run.data / "environments")


def simulators(run: DemoRun) -> None:
    inventory_file = run.data / "rpi" / "inventory.json"
    inventory_file.unlink(missing_ok=True)
    run.sup.start(
        "sim-rpi",
        piseduce_cmd(
            "sim",
            "rpi",
            "--boards",
            str(run.boards),
            "--state-dir",
            str(run.data / "rpi/state"),
            "--tftp-root",
            str(run.data / "rpi/tftpboot"),
            "--nfs-root",
            str(run.data / "rpi/nfs"),
            "--snmp-port",
            str(run.ports.snmp),
            "--time-scale",
            str(run.time_scale),
            "--seed",
            "7",
            # Cards as slow as real ones: a deployment shows its write and read-back moving.
            "--card-speed",
            "realistic",
            "--inventory-file",
            str(inventory_file),
            "--agent-pubkey",
            str(run.data / "agent_pubkey"),
        ),
    )
    run.sup.start(
        "sim-g5k",
        piseduce_cmd(
            "sim",
            "g5k",
            "--site",
            SITE_G5K,
            "--port",
            str(run.ports.g5k_sim),
            "--users-file",
            str(run.data / "g5k-users.json"),
            "--time-scale",
            str(run.time_scale * 3),
            "--clusters",
            "grisou:4,gros:4",
        ),
    )
    run.sup.start(
        "sim-iotlab",
        piseduce_cmd(
            "sim",
            "iotlab",
            "--site",
            SITE_IOT,
            "--port",
            str(run.ports.iot_sim),
            "--users-file",
            str(run.data / "iotlab-users.json"),
            "--time-scale",
            str(run.time_scale * 3),
            # The site's SFTP frontend: the consumption files an energy measure reads.
            "--frontend-port",
            str(run.ports.iot_frontend),
            "--frontend-known-hosts",
            str(run.data / "iotlab_known_hosts"),
        ),
    )
    run.inventory = wait_until(
        lambda: inventory_file.exists() and json.loads(inventory_file.read_text()),
        "the Pi simulator",
        run.sup,
    )
    wait_until(lambda: tcp_open(run.ports.g5k_sim), "the Grid'5000 emulator", run.sup)
    wait_until(lambda: tcp_open(run.ports.iot_sim), "the IoT-LAB emulator", run.sup)


def agent_configs(run: DemoRun) -> None:
    from piseduce.config import load_agent_config
    from piseduce.db import upgrade

    tokens = run.tokens = {n: run.sec.get(f"token_{n}", 32) for n in ("pi", "g5k", "iot")}
    scale = max(0.05, min(1.0, 2.0 / run.time_scale))
    run.agents = [
        {
            "name": "rpi-lab",
            "node_type": "raspberry",
            "site": "local",
            "port": run.ports.rpi_agent,
            "token": tokens["pi"],
            "config": agent_config(
                run.data,
                "rpi-lab",
                "raspberry",
                run.ports.rpi_agent,
                tokens["pi"],
                tftp_root=str(run.data / "rpi/tftpboot"),
                nfs_root=str(run.data / "rpi/nfs"),
                ssh_key_file=str(run.data / "agent_ssh_key"),
                timeout_scale=scale,
                poll_interval=0.5,
                monitor_period_seconds=5,
                # The way in from "outside the lab": Manage shows the ssh -J line and the block.
                gateway_public_host="127.0.0.1",
                gateway_port=run.ports.gateway,
                **board_network_keys(run.inventory or {}),
            ),
        },
        {
            "name": "g5k-nancy",
            "node_type": "g5k",
            "site": SITE_G5K,
            "port": run.ports.g5k_agent,
            "token": tokens["g5k"],
            "config": agent_config(
                run.data,
                "g5k-nancy",
                "g5k",
                run.ports.g5k_agent,
                tokens["g5k"],
                g5k_api_url=f"http://127.0.0.1:{run.ports.g5k_sim}/stable",
                timeout_scale=scale,
                poll_interval=0.5,
                inventory_refresh_seconds=30,
            ),
        },
        {
            "name": "iotlab-strasbourg",
            "node_type": "iot-lab",
            "site": SITE_IOT,
            "port": run.ports.iot_agent,
            "token": tokens["iot"],
            "config": agent_config(
                run.data,
                "iotlab-strasbourg",
                "iot-lab",
                run.ports.iot_agent,
                tokens["iot"],
                iotlab_api_url=f"http://127.0.0.1:{run.ports.iot_sim}/api/",
                iotlab_frontend=f"127.0.0.1:{run.ports.iot_frontend}",
                iotlab_frontend_known_hosts=str(run.data / "iotlab_known_hosts"),
                firmware_path=str(run.data / "firmwares") + "/",
                timeout_scale=scale,
                poll_interval=0.5,
                inventory_refresh_seconds=30,
            ),
        },
    ]
    for a in run.agents:
        upgrade("agent", load_agent_config(a["config"]).database_url)


def agent_processes(run: DemoRun) -> None:
    for a in run.agents:
        run.sup.start(f"agent-{a['name']}-api", piseduce_cmd("agent", "api", str(a["config"])))
        run.sup.start(f"agent-{a['name']}-exec", piseduce_cmd("agent", "exec", str(a["config"])))
        if a["node_type"] in ("raspberry", "iot-lab"):  # PoE ports; IoT-LAB's energy measures
            monitor = piseduce_cmd("agent", "monitor", str(a["config"]))
            run.sup.start(f"agent-{a['name']}-monitor", monitor)
        if a["node_type"] == "raspberry":
            gateway = piseduce_cmd("agent", "gateway", str(a["config"]))
            run.sup.start(f"agent-{a['name']}-gateway", gateway)
    for a in run.agents:
        url = f"http://127.0.0.1:{a['port']}/api/health"
        wait_until(lambda url=url: http_ok(url), f"the {a['name']} agent", run.sup)
    wait_until(lambda: tcp_open(run.ports.gateway), "the SSH gateway", run.sup)


def raspberry_inventory(run: DemoRun) -> None:
    register_raspberry(f"http://127.0.0.1:{run.ports.rpi_agent}", run.tokens["pi"], run.inventory)


def webui_config(run: DemoRun) -> None:
    run.webui_cfg = run.data / "webui" / "config_webui.json"
    write_json(
        run.webui_cfg,
        {
            "port_number": run.ports.webui,
            "host": "127.0.0.1",
            "db_url": "sqlite:///webui.db",
            "key_file": str(run.data / "secret.key"),
            "secret_file": "session.secret",
            "health_check_seconds": 2,
        },
    )
    run.admin_email = setup_webui(run.data, run.webui_cfg, run.agents, run.user_pub, run.sec)


def webui_process(run: DemoRun) -> None:
    run.sup.start("webui", piseduce_cmd("webui", "serve", str(run.webui_cfg)))
    run.web_url = f"http://127.0.0.1:{run.ports.webui}/"
    wait_until(lambda: http_ok(run.web_url + "login"), "the web UI", run.sup)


# The demo's start, as data: what the progress bar says, and the phase that does it.
PHASES: tuple[tuple[str, Callable[[DemoRun], None]], ...] = (
    ("Keys and accounts", keys_and_accounts),
    ("Building the OS images (Raspberry Pi OS-like and Ubuntu-like)", os_images),
    ("Starting the simulators", simulators),
    ("Configuring the agents", agent_configs),
    ("Starting the agents (API, executor, monitor, SSH gateway)", agent_processes),
    ("Registering the switch, {boards} boards and the OS images", raspberry_inventory),
    ("Preparing the web UI", webui_config),
    ("Starting the web UI", webui_process),
)


def start(run: DemoRun) -> None:
    """Every phase in turn under one progress bar; what was started is stopped if one fails."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        bar = progress.add_task("Starting the demo testbed", total=len(PHASES) + 1)
        try:
            for text, phase in PHASES:
                progress.update(bar, description=text.format(boards=run.boards))
                phase(run)
                progress.advance(bar)
            progress.update(bar, description="Ready")
            progress.advance(bar)
        except BaseException:
            progress.stop()
            run.sup.stop()
            raise
