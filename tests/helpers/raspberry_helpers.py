"""Helpers of the raspberry driver tests: an agent config and database in a temporary folder, a
small in-memory StepContext, and user key pairs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import asyncssh
from sqlalchemy.orm import Session, sessionmaker

from helpers.agent_helpers import headers
from helpers.constants import TOKEN
from piseduce.agent.drivers.base import NodeView, ReservationView, StepContext
from piseduce.agent.models import Environment, Node, Switch
from piseduce.config import AgentConfig, load_agent_config
from piseduce.db import make_engine, session_factory, upgrade, write_session

USER = headers()  # alice, not an admin


def agent_config(folder: Path, **extra: Any) -> AgentConfig:
    """A raspberry agent config in `folder` (tftp/, nfs/, environments/ made), database migrated."""
    for sub in ("tftpboot", "nfs", "environments"):
        (folder / sub).mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "auth_token": [TOKEN],
        "node_type": "raspberry",
        "db_url": "sqlite:///agent.db",
        "tftp_root": "tftpboot",
        "nfs_root": "nfs",
        "env_path": "environments/",
        "timeout_scale": 0.02,
        "poll_interval": 0.05,
        "turnaround_minutes": 0,
    }
    data.update(extra)
    path = folder / "config_agent.json"
    path.write_text(json.dumps(data, indent=2))
    config = load_agent_config(path)
    upgrade("agent", config.database_url)
    return config


def sessions_for(config: AgentConfig) -> sessionmaker[Session]:
    return session_factory(make_engine(config.database_url))


def register(
    sessions: sessionmaker[Session], inventory: dict[str, Any], *, with_host_keys: bool = True
) -> None:
    """Store the simulator's switch and boards as an admin would (the API does the same)."""
    sw = inventory["switch"]
    with write_session(sessions) as s:
        s.merge(
            Switch(
                **{
                    k: sw[k]
                    for k in (
                        "name",
                        "ip",
                        "snmp_port",
                        "community",
                        "poe_oid",
                        "oid_offset",
                        "port_count",
                        "power_oid",
                        "power_oid_offset",
                        "master_port",
                    )
                }
            )
        )
        for b in inventory["boards"]:
            attrs = {
                "switch": b["switch"],
                "port": b["port"],
                "serial": b["serial"],
                "ssh_port": b["ssh_port"],
                "mac": b["mac"],
            }
            if with_host_keys:
                attrs["host_key"] = b["nfs_host_key"]
            s.merge(Node(name=b["name"], ip=b["ip"], properties={"model": b["model"]}, attrs=attrs))


def add_environment(sessions: sessionmaker[Session], env: dict[str, Any]) -> None:
    with write_session(sessions) as s:
        s.merge(
            Environment(
                name=env["name"],
                image=env["image"],
                size=env["size"],
                sector_start=env["sector_start"],
                ssh_user=env["ssh_user"],
                checksum=env["checksum"],
            )
        )


class Ctx(StepContext):
    """A StepContext kept in memory: events and progress are recorded in lists."""

    def __init__(
        self,
        config: AgentConfig,
        node: NodeView,
        params: dict[str, Any] | None = None,
        process: str = "deploy",
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        self.reservation = ReservationView(
            id=1,
            node=node,
            owner="alice@example.org",
            bin="",
            start=now,
            end=now + dt.timedelta(hours=1),
            status="deploying",
            params=dict(params or {}),
        )
        self.config = config
        self.process = process
        self.args = {}
        self.credentials = None
        self.events: list[tuple[str, str]] = []
        self.percents: list[int] = []
        self.saved: dict[str, Any] = {}

    async def progress(self, percent: int, message: str | None = None) -> None:
        self.percents.append(percent)

    async def log(self, message: str, level: str = "info") -> None:
        self.events.append((level, message))

    async def save_node_attrs(self, **attrs: Any) -> None:
        self.saved.update(attrs)
        self.node.attrs.update(attrs)


def user_key(folder: Path, name: str = "id_user") -> tuple[Path, str]:
    """An ed25519 key pair for a test user, written like ssh-keygen does (OpenSSH format, 0600)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{name}@test")
    path = folder / name
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    pub = key.export_public_key().decode().strip()
    (folder / f"{name}.pub").write_text(pub + "\n")
    return path, pub
