"""`piseduce sim g5k`: serve the Grid'5000 API emulator for one site on loopback."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Annotated

import typer

from piseduce.cli_files import FileOptionError, read_text
from piseduce.sim.g5k.model import G5kSim
from piseduce.sim.g5k.records import Faults


def load_users(path: Path) -> dict[str, str]:
    """A JSON object {"login": "password"} or `login:password` lines (`#` comments allowed)."""
    text = read_text(path, "--users-file")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise FileOptionError(f"--users-file {path}: malformed JSON: {exc}") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise FileOptionError(f'--users-file {path}: expected {{"login": "password", ...}}')
        return dict(data)
    users: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        login, sep, password = line.partition(":")
        if not sep or not login:
            raise FileOptionError(f"--users-file {path}:{lineno}: expected login:password")
        users[login] = password
    return users


def parse_clusters(text: str) -> list[tuple[str, int]]:
    """`grisou:4,gros:2` → [("grisou", 4), ("gros", 2)]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, count = part.partition(":")
        if not name.isidentifier() or not (count or "1").isdigit() or int(count or "1") < 1:
            raise typer.BadParameter(f"bad cluster {part!r} (expected name:count)")
        out.append((name, int(count or "1")))
    if not out:
        raise typer.BadParameter("at least one cluster is needed")
    return out


def command(
    site: Annotated[str, typer.Option(help="Grid'5000 site name.")] = "nancy",
    port: Annotated[int, typer.Option(help="TCP port (0 = any free port).")] = 8880,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    users_file: Annotated[
        Path | None, typer.Option(help='Users: JSON {"login": "password"} or login:password lines.')
    ] = None,
    time_scale: Annotated[float, typer.Option(help="Speed-up of OAR launch and Kadeploy durations.")] = 1.0,
    ko_rate: Annotated[float, typer.Option(help="Probability that a deployed node ends KO.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Probability that an API request answers 503.")] = 0.0,
    latency: Annotated[float, typer.Option(help="Seconds added to every API request.")] = 0.0,
    clusters: Annotated[
        str, typer.Option(help="Clusters and node counts, e.g. grisou:4,gros:4.")
    ] = "grisou:4,gros:4",
    dead: Annotated[str, typer.Option(help="Comma-separated nodes whose hard state is dead.")] = "",
    seed: Annotated[int | None, typer.Option(help="Seed of the fault randomness.")] = None,
) -> None:
    """Serve the Grid'5000 REST API subset of one site (reference, status, jobs, deployments,
    environments, walltime) with OAR and Kadeploy state progressions and HTTP Basic auth."""
    import socket

    import uvicorn

    from piseduce.sim.g5k.app import create_app

    if time_scale <= 0:
        raise typer.BadParameter("--time-scale must be positive")
    if users_file is not None:
        users = load_users(users_file)
    else:
        password = secrets.token_urlsafe(12)
        users = {"g5kuser": password}
        typer.echo(f"no --users-file: user 'g5kuser' with password {password} (shown once)", err=True)
    faults = Faults(ko_rate=ko_rate, error_rate=error_rate, latency=latency)
    sim = G5kSim(
        site,
        parse_clusters(clusters),
        users,
        time_scale=time_scale,
        faults=faults,
        dead=[d.strip() for d in dead.split(",") if d.strip()],
        seed=seed,
    )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    typer.echo(f"Grid'5000 API emulator for {site}: http://{host}:{bound}/stable", err=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(create_app(sim), log_level="warning", access_log=False))
    server.run(sockets=[sock])
