"""`piseduce demo`: the whole testbed on loopback, in one folder.

It starts the three simulators (a PoE switch with Raspberry Pi boards, a Grid'5000 site, an
IoT-LAB site), one agent of each type (API + executor) and the web UI with the three agents
already added, then prints the URL and the logins. Ctrl-C stops everything. Every process is a
child in its own session, logging to `<data>/logs/`, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from piseduce import crypto

console = Console(stderr=True)

DEMO_USER = "demo@piseduce.local"
G5K_LOGIN = "demo"
IOT_LOGIN = "demo"
SITE_G5K = "nancy"
SITE_IOT = "strasbourg"


class DemoError(Exception):
    """A problem the demo explains in one line and stops on."""


@dataclass
class Ports:
    webui: int
    base: int

    @property
    def rpi_agent(self) -> int:
        return self.base + 1

    @property
    def g5k_agent(self) -> int:
        return self.base + 2

    @property
    def iot_agent(self) -> int:
        return self.base + 3

    @property
    def g5k_sim(self) -> int:
        return self.base + 10

    @property
    def iot_sim(self) -> int:
        return self.base + 11

    @property
    def snmp(self) -> int:
        return self.base + 20

    def tcp(self) -> dict[str, int]:
        return {
            "web UI": self.webui,
            "raspberry agent": self.rpi_agent,
            "g5k agent": self.g5k_agent,
            "iot-lab agent": self.iot_agent,
            "Grid'5000 emulator": self.g5k_sim,
            "IoT-LAB emulator": self.iot_sim,
        }


def check_ports(ports: Ports) -> None:
    for what, port in ports.tcp().items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise DemoError(
                    f"port {port} (for the {what}) is taken: is another demo running? Stop it, or choose "
                    f"other ports with --webui-port / --base-port"
                ) from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", ports.snmp))
        except OSError:
            raise DemoError(
                f"UDP port {ports.snmp} (the simulated switch) is taken: choose another --base-port"
            ) from None


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Supervisor:
    logs: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
                env={**os.environ, **(env or {})},
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop(self, timeout: float = 15.0) -> None:
        # Reverse order: the web UI first, the simulators last.
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(5)
            # Anything the child left in its session goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)


def piseduce_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "piseduce.cli", *args]


def write_json(path: Path, data: Any, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.replace(path)


def wait_until(check: Any, what: str, sup: Supervisor, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = sup.dead()
        if dead is not None:
            raise DemoError(f"the {dead.name} stopped while starting; see {dead.log}")
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise DemoError(f"{what} did not come up within {timeout:.0f} s; see the logs in {sup.logs}")


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def demo_firmwares(folder: Path) -> None:
    """Two tiny firmwares with an ELF32 ARM header: enough for the emulator, which does not run them."""
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    for label in ("tutorial_m3", "blink_m3"):
        path = folder / f"{label}.elf"
        if not path.exists():
            ident = b"\x7fELF\x01\x01\x01" + b"\0" * 9
            header = struct.pack(
                "<HHIIIIIHHHHHH", 2, 40, 1, 0x08000000, 52, 0, 0x05000000, 52, 32, 0, 40, 0, 0
            )
            path.write_bytes(ident + header + label.encode())


def ssh_keypair(path: Path, comment: str) -> str:
    """An ed25519 key pair (private 0600); returns the public key line."""
    import asyncssh

    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
        key.write_private_key(str(path))
        os.chmod(path, 0o600)
        key.write_public_key(str(path) + ".pub")
    return Path(str(path) + ".pub").read_text().strip()


@dataclass
class Secrets:
    """Generated once per data folder and kept there (mode 0600), so a restart keeps the logins."""

    path: Path
    values: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, length: int = 20) -> str:
        if not self.values and self.path.exists():
            self.values = json.loads(self.path.read_text())
        if key not in self.values:
            self.values[key] = crypto.generate_password(length)
            write_json(self.path, self.values)
        return self.values[key]


def build_environments(env_dir: Path) -> list[str]:
    from piseduce.sim.images import build_environment

    env_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for flavor in ("raspios", "ubuntu"):
        sidecars = [p for p in env_dir.glob("*.json") if json.loads(p.read_text()).get("flavor") == flavor]
        if sidecars:
            names.append(json.loads(sidecars[0].read_text())["name"])
            continue
        env = build_environment(env_dir, flavor, size_mb=64, compress="gz")
        env["flavor"] = flavor
        (env_dir / f"{env['image']}.json").write_text(json.dumps(env, indent=2))
        names.append(env["name"])
    return names


def agent_config(data: Path, name: str, node_type: str, port: int, token: str, **extra: Any) -> Path:
    folder = data / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "auth_token": [token],
        "port_number": port,
        "node_type": node_type,
        "g5k_site": SITE_G5K,
        "iot_site": SITE_IOT,
        "key_file": str(data / "secret.key"),
        "db_url": "sqlite:///agent.db",
        "env_path": str(data / "environments") + "/",
        "name": name,
        "host": "127.0.0.1",
        **extra,
    }
    path = folder / "config_agent.json"
    write_json(path, cfg)
    return path


def register_raspberry(base: str, token: str, inventory: dict[str, Any]) -> int:
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Piseduce-User": "demo-setup@piseduce.local",
        "X-Piseduce-Role": "admin",
    }
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        sw = inventory["switch"]
        r = client.post("/api/admin/switches", json=sw)
        if r.status_code == 409:
            r = client.put(f"/api/admin/switches/{sw['name']}", json=sw)
        r.raise_for_status()
        for b in inventory["boards"]:
            body = {k: b[k] for k in ("name", "ip", "switch", "port", "ssh_port", "model", "serial", "mac")}
            body["host_key"] = b["nfs_host_key"]
            r = client.post("/api/admin/nodes", json=body)
            if r.status_code == 409:
                patch = {k: v for k, v in body.items() if k != "name"}
                r = client.patch(f"/api/admin/nodes/{b['name']}", json=patch)
            r.raise_for_status()
        client.post("/api/admin/environments/scan").raise_for_status()
        return len(inventory["boards"])


def setup_webui(data: Path, cfg_path: Path, agents: list[dict[str, Any]], user_pub: str, sec: Secrets) -> str:
    """Database, the first admin, a demo user with testbed logins and SSH key, the three agents."""
    from sqlalchemy import select

    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory, upgrade
    from piseduce.webui.auth import set_admin
    from piseduce.webui.models import Agent, User

    cfg = load_webui_config(cfg_path)
    upgrade("webui", cfg.database_url)
    engine = make_engine(cfg.database_url)
    factory = session_factory(engine)
    fernet = crypto.load_fernet(cfg.key_path)
    admin_email = "admin@piseduce.local"
    set_admin(factory, admin_email, sec.get("admin_password"))
    with factory() as db, db.begin():
        user = db.scalar(select(User).where(User.email == DEMO_USER))
        if user is None:
            user = User(email=DEMO_USER, role="user", state="active", ssh_keys=[user_pub])
            user.password_hash = crypto.hash_password(sec.get("demo_password"))
            db.add(user)
        user.g5k_user = G5K_LOGIN
        user.g5k_password = crypto.encrypt_str(fernet, sec.get("g5k_password"))
        user.iotlab_user = IOT_LOGIN
        user.iotlab_password = crypto.encrypt_str(fernet, sec.get("iot_password"))
        for a in agents:
            row = db.scalar(select(Agent).where(Agent.name == a["name"]))
            if row is None:
                row = Agent(name=a["name"], host="127.0.0.1", port=a["port"], token="")
                db.add(row)
            row.port = a["port"]
            row.token = crypto.encrypt_str(fernet, a["token"])
            row.node_type = a["node_type"]
            row.site = a["site"]
            row.status = "unreachable"
    engine.dispose()
    return admin_email


def run_demo(
    data: Path, fresh: bool, ports: Ports, boards: int, time_scale: float, ready_file: Path | None
) -> None:
    if fresh and data.exists():
        shutil.rmtree(data)
    check_ports(ports)
    for sub in ("logs", "environments", "firmwares", "rpi/tftpboot", "rpi/nfs", "rpi/state"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    sup = Supervisor(data / "logs")
    sec = Secrets(data / "credentials.json")
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        steps = progress.add_task("Starting the demo testbed", total=9)

        def step(text: str) -> None:
            progress.update(steps, description=text)

        def done() -> None:
            progress.advance(steps)

        try:
            step("Keys and accounts")
            crypto.generate_key_file(data / "secret.key")
            agent_pub = ssh_keypair(data / "agent_ssh_key", "piseduce-demo-agent")
            user_pub = ssh_keypair(data / "demo_user_key", DEMO_USER)
            (data / "agent_pubkey").write_text(agent_pub + "\n")
            write_json(data / "g5k-users.json", {G5K_LOGIN: sec.get("g5k_password")})
            write_json(data / "iotlab-users.json", {IOT_LOGIN: sec.get("iot_password")})
            demo_firmwares(data / "firmwares")
            done()

            step("Building the OS images (Raspberry Pi OS-like and Ubuntu-like)")
            build_environments(data / "environments")
            done()

            step("Starting the simulators")
            inventory_file = data / "rpi" / "inventory.json"
            inventory_file.unlink(missing_ok=True)
            sup.start(
                "sim-rpi",
                piseduce_cmd(
                    "sim",
                    "rpi",
                    "--boards",
                    str(boards),
                    "--state-dir",
                    str(data / "rpi/state"),
                    "--tftp-root",
                    str(data / "rpi/tftpboot"),
                    "--nfs-root",
                    str(data / "rpi/nfs"),
                    "--snmp-port",
                    str(ports.snmp),
                    "--time-scale",
                    str(time_scale),
                    "--seed",
                    "7",
                    "--inventory-file",
                    str(inventory_file),
                    "--agent-pubkey",
                    str(data / "agent_pubkey"),
                ),
            )
            sup.start(
                "sim-g5k",
                piseduce_cmd(
                    "sim",
                    "g5k",
                    "--site",
                    SITE_G5K,
                    "--port",
                    str(ports.g5k_sim),
                    "--users-file",
                    str(data / "g5k-users.json"),
                    "--time-scale",
                    str(time_scale * 3),
                    "--clusters",
                    "grisou:4,gros:4",
                ),
            )
            sup.start(
                "sim-iotlab",
                piseduce_cmd(
                    "sim",
                    "iotlab",
                    "--site",
                    SITE_IOT,
                    "--port",
                    str(ports.iot_sim),
                    "--users-file",
                    str(data / "iotlab-users.json"),
                    "--time-scale",
                    str(time_scale * 3),
                ),
            )
            inventory = wait_until(
                lambda: inventory_file.exists() and json.loads(inventory_file.read_text()),
                "the Pi simulator",
                sup,
            )
            wait_until(lambda: tcp_open(ports.g5k_sim), "the Grid'5000 emulator", sup)
            wait_until(lambda: tcp_open(ports.iot_sim), "the IoT-LAB emulator", sup)
            done()

            step("Configuring the agents")
            tokens = {n: sec.get(f"token_{n}", 32) for n in ("pi", "g5k", "iot")}
            scale = max(0.05, min(1.0, 2.0 / time_scale))
            agents: list[dict[str, Any]] = [
                {
                    "name": "rpi-lab",
                    "node_type": "raspberry",
                    "site": "local",
                    "port": ports.rpi_agent,
                    "token": tokens["pi"],
                    "config": agent_config(
                        data,
                        "rpi-lab",
                        "raspberry",
                        ports.rpi_agent,
                        tokens["pi"],
                        tftp_root=str(data / "rpi/tftpboot"),
                        nfs_root=str(data / "rpi/nfs"),
                        ssh_key_file=str(data / "agent_ssh_key"),
                        timeout_scale=scale,
                        poll_interval=0.5,
                        monitor_period_seconds=5,
                    ),
                },
                {
                    "name": "g5k-nancy",
                    "node_type": "g5k",
                    "site": SITE_G5K,
                    "port": ports.g5k_agent,
                    "token": tokens["g5k"],
                    "config": agent_config(
                        data,
                        "g5k-nancy",
                        "g5k",
                        ports.g5k_agent,
                        tokens["g5k"],
                        g5k_api_url=f"http://127.0.0.1:{ports.g5k_sim}/stable",
                        timeout_scale=scale,
                        poll_interval=0.5,
                        inventory_refresh_seconds=30,
                    ),
                },
                {
                    "name": "iotlab-strasbourg",
                    "node_type": "iot-lab",
                    "site": SITE_IOT,
                    "port": ports.iot_agent,
                    "token": tokens["iot"],
                    "config": agent_config(
                        data,
                        "iotlab-strasbourg",
                        "iot-lab",
                        ports.iot_agent,
                        tokens["iot"],
                        iotlab_api_url=f"http://127.0.0.1:{ports.iot_sim}/api/",
                        firmware_path=str(data / "firmwares") + "/",
                        timeout_scale=scale,
                        poll_interval=0.5,
                        inventory_refresh_seconds=30,
                    ),
                },
            ]
            from piseduce.config import load_agent_config
            from piseduce.db import upgrade

            for a in agents:
                upgrade("agent", load_agent_config(a["config"]).database_url)
            done()

            step("Starting the agents (API and executor)")
            for a in agents:
                sup.start(f"agent-{a['name']}-api", piseduce_cmd("agent", "api", str(a["config"])))
                sup.start(f"agent-{a['name']}-exec", piseduce_cmd("agent", "exec", str(a["config"])))
                if a["node_type"] == "raspberry":
                    monitor = piseduce_cmd("agent", "monitor", str(a["config"]))
                    sup.start(f"agent-{a['name']}-monitor", monitor)
            for a in agents:
                url = f"http://127.0.0.1:{a['port']}/api/health"
                wait_until(lambda url=url: http_ok(url), f"the {a['name']} agent", sup)
            done()

            step(f"Registering the switch, {boards} boards and the OS images")
            register_raspberry(f"http://127.0.0.1:{ports.rpi_agent}", tokens["pi"], inventory)
            done()

            step("Preparing the web UI")
            webui_cfg = data / "webui" / "config_webui.json"
            write_json(
                webui_cfg,
                {
                    "port_number": ports.webui,
                    "host": "127.0.0.1",
                    "db_url": "sqlite:///webui.db",
                    "key_file": str(data / "secret.key"),
                    "secret_file": "session.secret",
                    "health_check_seconds": 2,
                },
            )
            admin_email = setup_webui(data, webui_cfg, agents, user_pub, sec)
            done()

            step("Starting the web UI")
            sup.start("webui", piseduce_cmd("webui", "serve", str(webui_cfg)))
            web_url = f"http://127.0.0.1:{ports.webui}/"
            wait_until(lambda: http_ok(web_url + "login"), "the web UI", sup)
            done()
            step("Ready")
            done()
        except BaseException:
            progress.stop()
            sup.stop()
            raise

    info: dict[str, Any] = {
        "url": web_url,
        "admin": {"email": admin_email, "password": sec.get("admin_password")},
        "user": {
            "email": DEMO_USER,
            "password": sec.get("demo_password"),
            "ssh_key": str(data / "demo_user_key"),
        },
        "agents": [{k: a[k] for k in ("name", "node_type", "port")} for a in agents],
        "pids": [c.proc.pid for c in sup.children],
        "data": str(data),
    }
    console.print(f"\n[bold green]PiSeduce demo is up:[/] {web_url}")
    console.print(f"  admin      {admin_email}  /  {info['admin']['password']}")
    console.print(
        f"  demo user  {DEMO_USER}  /  {info['user']['password']}   (SSH key: {data / 'demo_user_key'})"
    )
    console.print(f"  agents     {', '.join(a['name'] for a in agents)}; logs in {data / 'logs'}")
    console.print(
        "[dim]Hint: log in as the demo user, Reserve two Pis, Deploy, then on Manage copy the ssh command "
        f"(add -i {data / 'demo_user_key'}). Ctrl-C stops everything.[/]"
    )
    if ready_file is not None:
        write_json(ready_file, info)

    stop = {"now": False}

    def _stop(_sig: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop["now"]:
            dead = sup.dead()
            if dead is not None:
                console.print(
                    f"[red]The {dead.name} stopped unexpectedly; see {dead.log}. Stopping the demo.[/]"
                )
                break
            time.sleep(0.5)
    finally:
        console.print("Stopping the demo…")
        sup.stop()
        console.print("Stopped.")


def demo(
    data: Path = typer.Option(Path("demo-data"), "--data", help="Folder holding all the demo's state."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete the data folder first and start over."),
    webui_port: int = typer.Option(9000, "--webui-port", min=1, max=65535),
    base_port: int = typer.Option(
        8090,
        "--base-port",
        min=1,
        max=65000,
        help="Agents on base+1..3, emulators on base+10/11, the switch on UDP base+20.",
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
