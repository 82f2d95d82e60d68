"""The demo's accounts and configurations: each agent's config, the simulated switch and boards
registered on the raspberry agent, the web UI's database with its admin, demo user and agents."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import httpx

from piseduce import crypto
from piseduce.demo.folder import Secrets, private_folder, write_json
from piseduce.demo.supervisor import DemoError
from piseduce.node.board import memory_gb_from_revision
from piseduce.sim.rpi.board import MODELS as BOARD_MODELS

DEMO_USER = "demo@piseduce.local"


G5K_LOGIN = "demo"


IOT_LOGIN = "demo"


SITE_G5K = "nancy"


SITE_IOT = "strasbourg"


def board_network_keys(inventory: dict[str, Any]) -> dict[str, str]:
    """The raspberry agent's board network keys for the simulated cluster (real mode): this host's
    end of the switch's uplink, so that the Boot network file (`network-config`) is the demo's own
    network; {} when the boards are loopback SSH servers (no board network)."""
    uplink, network = inventory.get("uplink"), inventory.get("network")
    if not uplink or not network:
        return {}
    prefix = ipaddress.IPv4Network(network).prefixlen
    return {"board_interface": str(uplink["host_if"]), "board_address": f"{uplink['ip']}/{prefix}"}


def agent_config(data: Path, name: str, node_type: str, port: int, token: str, **extra: Any) -> Path:
    folder = private_folder(data / name)  # its database and config (the token)
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


def _accepted(r: httpx.Response, what: str) -> None:
    if r.is_error:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        raise DemoError(f"the raspberry agent refused {what} ({r.status_code}): {detail}; "
                        "start over with --fresh if the data folder is from another version")


def register_raspberry(base: str, token: str, inventory: dict[str, Any]) -> int:
    """The simulator's switch and boards on the agent, again at every start: what exists is brought
    in line with the simulator (a board's SSH port may move), its status left as an admin set it."""
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
        _accepted(r, f"the switch {sw['name']}")
        for b in inventory["boards"]:
            body = {k: b[k] for k in ("name", "ip", "switch", "port", "ssh_port", "model", "serial", "mac")}
            body["host_key"] = b["nfs_host_key"]
            # What an operator types on Admin -> Nodes for a real board, so that Reserve's and
            # the API's `memory>=4G` find the Pis as the guides show.
            known = BOARD_MODELS.get(b["model"])  # an inventory may name a model the simulator lacks
            memory = memory_gb_from_revision(known[0]) if known else None
            if memory is not None:
                body["properties"] = {"memory_gb": int(memory) if memory.is_integer() else memory}
            r = client.post("/api/admin/nodes", json=body)
            if r.status_code == 409:
                patch = {k: v for k, v in body.items() if k != "name"}
                r = client.patch(f"/api/admin/nodes/{b['name']}", json=patch)
            _accepted(r, f"the board {b['name']}")
        _accepted(client.post("/api/admin/environments/scan"), "the scan of the OS images")
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
