"""`piseduce sim iotlab`: serve an emulated FIT IoT-LAB site on loopback."""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from piseduce.cli_files import FileOptionError, read_text
from piseduce.sim.iotlab.extras import Robot
from piseduce.sim.iotlab.frontend import Frontend
from piseduce.sim.iotlab.model import Site
from piseduce.sim.iotlab.records import FINAL, Experiment, Node, User, make_nodes, parse_counts


def load_users(path: Path) -> list[User]:
    """A JSON object: {"login": "password"} or {"login": {"password": "...", "profiles": [...]}}."""
    try:
        data = json.loads(read_text(path, "--users-file"))
    except ValueError as exc:
        raise FileOptionError(f"--users-file {path}: malformed JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object of login → password")
    users: list[User] = []
    for login, value in data.items():
        entry: dict[str, Any] = {"password": value} if isinstance(value, str) else value
        if not isinstance(entry, dict) or not isinstance(entry.get("password"), str) or not entry["password"]:
            raise ValueError(f"{path}: user {login!r} needs a non-empty password")
        profiles = entry.get("profiles") or []
        users.append(
            User(
                login=str(login),
                password=entry["password"],
                profiles={
                    p["profilename"]: dict(p) for p in profiles if isinstance(p, dict) and "profilename" in p
                },
            )
        )
    return users


def build_site(
    site: str = "strasbourg",
    users: list[User] | None = None,
    nodes: str = "m3=12,a8=4,wsn430=4",
    time_scale: float = 1.0,
    error_rate: float = 0.0,
    busy: int = 0,
    dead: int = 0,
    seed: int | None = None,
    robots: str = "",
) -> Site:
    """A site with `busy` nodes held by another user's long experiment, `dead` nodes out of service
    and `robots` ("m3=2": the first two M3 nodes ride turtlebots)."""
    node_list: list[Node] = make_nodes(site, parse_counts(nodes), seed or 0)
    emulated = Site(site, node_list, users or [], time_scale=time_scale, seed=seed)
    for short, count in (parse_counts(robots) if robots else {}).items():
        riders = [n for n in node_list if n.address.startswith(f"{short}-")][:count]
        for i, node in enumerate(riders):
            node.mobile = True
            emulated.robots[node.address] = Robot(node.address, dock=(0.5 + i, 0.5))
    emulated.faults.error_rate = error_rate
    for node in node_list[len(node_list) - dead :] if dead > 0 else []:
        node.state = "Dead"
    alive = [n.address for n in node_list if n.state == "Alive"]
    if busy > 0:
        emulated.users.setdefault("someone-else", User(login="someone-else", password=secrets.token_hex(16)))
        emulated.submit(
            "someone-else",
            {"type": "physical", "name": "long_run", "duration": 24 * 60, "nodes": alive[-busy:]},
            {},
        )
    return emulated


def _counts(exps: dict[int, Experiment]) -> str:
    active = sum(1 for e in exps.values() if e.state not in FINAL)
    return f"{active} active experiment(s)"


def command(
    site: Annotated[
        str, typer.Option(help="Site name (node addresses are <archi>-<n>.<site>.iot-lab.info).")
    ] = ("strasbourg"),
    port: Annotated[int, typer.Option(help="TCP port on the loopback interface.")] = 8095,
    host: Annotated[str, typer.Option(help="Address to bind (keep it on loopback).")] = "127.0.0.1",
    users_file: Annotated[
        Path | None,
        typer.Option(help='JSON {"login": "password"}; without it one user is created and printed.'),
    ] = None,
    nodes: Annotated[
        str, typer.Option(help="Nodes per architecture, e.g. m3=12,a8=4.")
    ] = "m3=12,a8=4,wsn430=4",
    time_scale: Annotated[
        float, typer.Option(help="Speed-up of launches and stops (not of durations).")
    ] = 1.0,
    error_rate: Annotated[float, typer.Option(help="Share of requests answered 503.", min=0, max=1)] = 0.0,
    busy: Annotated[int, typer.Option(help="Nodes held by another user's experiment at start.", min=0)] = 2,
    dead: Annotated[int, typer.Option(help="Nodes out of service (state Dead).", min=0)] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault generator.")] = None,
    robots: Annotated[
        str, typer.Option(help="Nodes carried by robots, e.g. m3=2 (the site's first two M3 nodes).")
    ] = "m3=2",
    frontend_port: Annotated[
        int, typer.Option(help="SSH (SFTP) port of the site's frontend (the consumption files); 0: none.",
                          min=0, max=65535)
    ] = 0,
    frontend_known_hosts: Annotated[
        Path | None, typer.Option(help="File to write the frontend's known_hosts line to (for agents).")
    ] = None,
) -> None:
    """Serve the IoT-LAB REST API subset iotlabcli speaks, for one emulated site."""
    import uvicorn

    from piseduce.sim.iotlab.app import create_app

    if time_scale <= 0:
        raise typer.BadParameter("must be positive", param_hint="--time-scale")
    try:
        users = load_users(users_file) if users_file else []
        emulated = build_site(site, users, nodes, time_scale, error_rate, busy, dead, seed, robots)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not users:
        password = secrets.token_urlsafe(12)
        emulated.users["demo"] = User(login="demo", password=password)
        typer.echo(f"IoT-LAB emulator user: demo / {password}")
    base = f"http://{host}:{port}/api/"
    typer.echo(
        f"IoT-LAB emulator for site {site} on {base} ({len(emulated.nodes)} nodes, "
        f'{_counts(emulated.experiments)}, time scale {time_scale}); set "iotlab_api_url": "{base}"'
    )
    frontend = Frontend(emulated, host, frontend_port).start() if frontend_port else None
    if frontend is not None:
        line = frontend.known_hosts_line
        typer.echo(f"IoT-LAB frontend (SFTP) on {host}:{frontend.port}; its host key: {line}", nl=False)
        if frontend_known_hosts is not None:
            frontend_known_hosts.write_text(frontend.known_hosts_line)
    sys.stdout.flush()
    started = time.monotonic()
    try:
        uvicorn.run(create_app(emulated), host=host, port=port, log_level="warning")
    finally:
        if frontend is not None:
            frontend.stop()
    typer.echo(f"IoT-LAB emulator stopped after {time.monotonic() - started:.0f} s")
