"""The soak's testbed on loopback (issue 11's reliability run): the Pi simulator (a PoE switch and
its boards) and the Grid'5000 emulator, a raspberry agent and a g5k agent whose API and executor
are separate processes started the way `piseduce demo` starts them (its Supervisor, its config
and registration helpers), and the kill -9 / restart of one of those processes at any moment.

    site = SoakSite(folder, SiteOptions(boards=20))
    site.start()            # everything up, the boards and the OS image registered
    site.kill_restart("rpi", "exec")
    site.stop()

The boards are the simulator's in-process ones by default (asyncssh servers on loopback ports,
whose `piseduce-node` runs against the card file in the simulator's process): 20 real-mode boards
(a network namespace and Debian's sshd each, a Python `piseduce-node` per deployment) compete
with the four agent processes for the two cores this runs on, and the run would measure the
machine rather than the agents. `board_mode="real"` runs the real ones (root only).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from piseduce import crypto
from piseduce.demo.configure import agent_config, register_raspberry
from piseduce.demo.folder import private_folder, ssh_keypair, write_json
from piseduce.demo.supervisor import Child, Supervisor, http_ok, piseduce_cmd, tcp_open, wait_until

G5K_SITE = "nancy"
ENV_FLAVOR = "raspios"
AGENTS = ("rpi", "g5k")
PARTS = ("api", "exec")


@dataclass
class SiteOptions:
    boards: int = 20
    g5k_clusters: str = "grisou:12,gros:8"
    users: int = 10
    snmp_loss: float = 0.05
    ssh_drop_rate: float = 0.05
    rpi_time_scale: float = 50.0  # a 20 s boot takes 0.4 s
    g5k_time_scale: float = 120.0  # Kadeploy's 240 s take 2 s
    timeout_scale: float = 0.1  # the agents' step bounds (a 150 s netboot bound: 15 s)
    board_mode: str = "in-process"
    image_mb: int = 56
    seed: int = 11
    turnaround_minutes: float = 0.05  # 3 s between two holds of a node
    lease_seconds: float = 4.0  # a killed executor's actions are taken over after this


@dataclass
class User:
    email: str
    g5k_login: str
    g5k_password: str
    ssh_pub: str


@dataclass
class AgentInfo:
    name: str
    node_type: str
    port: int
    token: str
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.config.parent / "agent.db"


def free_ports(count: int) -> list[int]:
    import socket

    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SoakSite:
    folder: Path
    opts: SiteOptions = field(default_factory=SiteOptions)
    sup: Supervisor | None = None
    users: list[User] = field(default_factory=list)
    agents: dict[str, AgentInfo] = field(default_factory=dict)
    inventory: dict[str, Any] = field(default_factory=dict)
    env_name: str = ""
    g5k_url: str = ""
    commands: dict[str, list[str]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------ start

    def start(self) -> None:
        private_folder(self.folder, ours=False)
        for sub in ("logs", "environments", "rpi", "rpi/tftpboot", "rpi/nfs", "rpi/state"):
            private_folder(self.folder / sub)
        self.sup = Supervisor(self.folder / "logs")
        try:
            self._keys_and_users()
            self._image()
            self._simulators()
            self._agents()
            register_raspberry(self.agents["rpi"].url, self.agents["rpi"].token, self.inventory)
        except BaseException:
            self.stop()
            raise

    def _keys_and_users(self) -> None:
        crypto.generate_key_file(self.folder / "secret.key")
        agent_pub = ssh_keypair(self.folder / "agent_ssh_key", "piseduce-soak-agent")
        (self.folder / "agent_pubkey").write_text(agent_pub + "\n")
        keys = private_folder(self.folder / "users")
        self.users = [
            User(
                email=f"user{i}@soak.example.org",
                g5k_login=f"user{i}",
                g5k_password=crypto.generate_password(16),
                ssh_pub=ssh_keypair(keys / f"user{i}", f"user{i}@soak"),
            )
            for i in range(self.opts.users)
        ]
        write_json(self.folder / "g5k-users.json", {u.g5k_login: u.g5k_password for u in self.users})

    def _image(self) -> None:
        from piseduce.sim.images import build_environment

        env_dir = self.folder / "environments"
        env = build_environment(env_dir, ENV_FLAVOR, size_mb=self.opts.image_mb, compress="gz")
        # The sidecar the agent's environment scan registers (as an operator's copy would be).
        (env_dir / f"{env['image']}.json").write_text(json.dumps(env, indent=2))
        self.env_name = env["name"]

    def _start(self, name: str, args: list[str]) -> Child:
        assert self.sup is not None
        self.commands[name] = args
        return self.sup.start(name, args)

    def _simulators(self) -> None:
        o, data = self.opts, self.folder
        inventory_file = data / "rpi" / "inventory.json"
        self._start("sim-rpi", piseduce_cmd(
            "sim", "rpi", "--boards", str(o.boards), "--mode", o.board_mode,
            "--state-dir", str(data / "rpi/state"), "--tftp-root", str(data / "rpi/tftpboot"),
            "--nfs-root", str(data / "rpi/nfs"), "--time-scale", str(o.rpi_time_scale),
            "--seed", str(o.seed), "--snmp-loss", str(o.snmp_loss), "--ssh-drop-rate", str(o.ssh_drop_rate),
            "--inventory-file", str(inventory_file), "--agent-pubkey", str(data / "agent_pubkey"),
        ))
        (g5k_port,) = free_ports(1)
        self._start("sim-g5k", piseduce_cmd(
            "sim", "g5k", "--site", G5K_SITE, "--port", str(g5k_port),
            "--users-file", str(data / "g5k-users.json"), "--time-scale", str(o.g5k_time_scale),
            "--clusters", o.g5k_clusters, "--seed", str(o.seed),
        ))
        assert self.sup is not None
        self.inventory = wait_until(
            lambda: inventory_file.exists() and json.loads(inventory_file.read_text()),
            "the Pi simulator", self.sup, timeout=120,
        )
        wait_until(lambda: tcp_open(g5k_port), "the Grid'5000 emulator", self.sup)
        self.g5k_url = f"http://127.0.0.1:{g5k_port}/stable"

    def _agents(self) -> None:
        from piseduce.config import load_agent_config
        from piseduce.db import upgrade

        o, data = self.opts, self.folder
        common = {
            "timeout_scale": o.timeout_scale, "poll_interval": 0.3, "lease_seconds": o.lease_seconds,
            "turnaround_minutes": o.turnaround_minutes, "g5k_site": G5K_SITE,
        }
        rpi_port, g5k_port = free_ports(2)
        specs = {
            "rpi": ("soak-rpi", "raspberry", rpi_port, {
                "tftp_root": str(data / "rpi/tftpboot"), "nfs_root": str(data / "rpi/nfs"),
                "ssh_key_file": str(data / "agent_ssh_key")}),
            "g5k": ("soak-g5k", "g5k", g5k_port, {
                "g5k_api_url": self.g5k_url, "inventory_refresh_seconds": 5,
                "g5k_status_cache_seconds": 2}),
        }
        for key, (name, node_type, port, extra) in specs.items():
            token = crypto.generate_password(32)
            cfg = agent_config(data, name, node_type, port, token, **common, **extra)
            upgrade("agent", load_agent_config(cfg).database_url)
            self.agents[key] = AgentInfo(name, node_type, port, token, cfg)
        for key, agent in self.agents.items():
            for part in PARTS:
                self._start(f"{key}-{part}", piseduce_cmd("agent", part, str(agent.config)))
        for agent in self.agents.values():
            self.wait_healthy(agent)

    def wait_healthy(self, agent: AgentInfo, timeout: float = 60.0) -> None:
        assert self.sup is not None
        wait_until(lambda: http_ok(f"{agent.url}/api/health"), f"the {agent.name} API", self.sup, timeout)

    # ------------------------------------------------------------ faults

    def child(self, name: str) -> Child:
        assert self.sup is not None
        return next(c for c in reversed(self.sup.children) if c.name == name)

    def kill_restart(self, agent: str, part: str) -> None:
        """kill -9 the agent's API or executor (its whole session), then start it again at once."""
        name = f"{agent}-{part}"
        old = self.child(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.proc.pid, signal.SIGKILL)
        old.proc.wait(10)
        assert self.sup is not None
        self.sup.children.remove(old)
        self._start(name, self.commands[name])
        self.restarts[name] = self.restarts.get(name, 0) + 1

    def dead(self) -> str | None:
        """A process of the site that stopped on its own (none should)."""
        assert self.sup is not None
        child = self.sup.dead()
        return None if child is None else f"{child.name} (exit {child.proc.returncode}, log {child.log})"

    # ------------------------------------------------------------ identities

    def headers(self, agent: str, user: User) -> dict[str, str]:
        info = self.agents[agent]
        h = {"Authorization": f"Bearer {info.token}", "X-Piseduce-User": user.email}
        if info.node_type == "g5k":
            fernet = crypto.load_fernet(self.folder / "secret.key")
            creds = {"user": user.g5k_login, "password": user.g5k_password}
            h["X-Piseduce-Credentials"] = crypto.encrypt_json(fernet, creds)
        return h

    def admin_headers(self, agent: str) -> dict[str, str]:
        info = self.agents[agent]
        return {"Authorization": f"Bearer {info.token}", "X-Piseduce-User": "soak-admin@soak.example.org",
                "X-Piseduce-Role": "admin"}

    def g5k_jobs(self) -> list[dict[str, Any]]:
        """Every job of the emulator still holding (or about to hold) its nodes, all users'."""
        user = self.users[0]
        r = httpx.get(f"{self.g5k_url}/sites/{G5K_SITE}/jobs",
                      params={"state": "waiting,launching,running,hold", "limit": 10000},
                      auth=(user.g5k_login, user.g5k_password), timeout=30)
        r.raise_for_status()
        return list(r.json().get("items", []))

    # ------------------------------------------------------------ stop

    def stop(self) -> None:
        if self.sup is not None:
            self.sup.stop()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_quiet(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
