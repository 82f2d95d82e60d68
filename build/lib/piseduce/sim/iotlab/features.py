"""The requests of a running experiment beyond node commands: the scripts on the site's frontend,
the robots and their mobilities, and a monitoring profile loaded from a file (each checks, as
node commands do, that the experiment is the caller's and runs)."""

from __future__ import annotations

import json
from typing import Any

from piseduce.sim.iotlab.extras import Scripts, circuits
from piseduce.sim.iotlab.model import Site
from piseduce.sim.iotlab.records import ApiError


def site_circuits(site: Site, **selections: str) -> list[dict[str, Any]]:
    return circuits(site.name, bool(site.robots), **selections)


def running_scripts(site: Site, login: str, exp_id: int) -> Scripts:
    site.node_command(login, exp_id, "scripts", [])  # owned and running, or the API's error
    return site.scripts.setdefault(exp_id, Scripts(site.name))


def robot_status(site: Site, login: str, exp_id: int, nodes: Any) -> dict[str, Any]:
    targets = site.node_command(login, exp_id, "robots", nodes)["0"]
    robots = [site.robots[n].status() for n in targets if n in site.robots]
    if not robots:
        raise ApiError(400, f"No robot in experiment {exp_id} (site {site.name} robots: "
                            f"{', '.join(sorted(site.robots)) or 'none'})")
    return {"items": robots}


def robot_mobility(site: Site, login: str, exp_id: int, name: str, nodes: Any) -> dict[str, list[str]]:
    targets = site.node_command(login, exp_id, "robots", nodes)["0"]
    if name not in {c["name"] for c in site_circuits(site)}:
        raise ApiError(404, f"Mobility {name!r} not found")
    moved = [n for n in targets if n in site.robots]
    for n in moved:
        site.robots[n].mobility = name
    others = [n for n in targets if n not in site.robots]
    return {"0": moved, **({"1": others} if others else {})}


def profile_load(site: Site, login: str, exp_id: int, parts: dict[str, bytes]) -> dict[str, list[str]]:
    """`iotlab-node --profile-load FILE`: a profile given as a JSON file, for the listed nodes."""
    listing = parts.pop("nodes.json", None)
    if listing is None or len(parts) != 1:
        raise ApiError(400, "Expected one profile JSON file and nodes.json")
    try:
        nodes = json.loads(listing)
        ((_name, raw),) = parts.items()
        profile = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The profile and nodes.json must be JSON") from None
    Site.check_profile(profile)
    return site.set_monitoring(login, exp_id, nodes, profile)
