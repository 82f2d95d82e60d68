"""An experiment's submission read the way the real API reads it: duration, reservation date and
name, the nodes (physical addresses, or aliases the site picks free nodes for), the firmware,
profile and site associations, and, for a reservation, that its nodes are free then. Every refusal
is the real API's (`ApiError`); nothing of the site changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from piseduce.sim.iotlab.extras import AssociationError, archi_matches, check_site_associations
from piseduce.sim.iotlab.records import ACTIVE, FILE_NAME, MAX_DURATION_MIN, ApiError

if TYPE_CHECKING:
    from piseduce.sim.iotlab.model import Site


@dataclass(frozen=True)
class Submission:
    type: str
    name: str | None
    nodes: list[str]
    duration: int  # minutes
    reservation: int | None  # epoch seconds
    kept_files: set[str]  # the firmwares and site scripts the experiment keeps


def _times(desc: dict[str, Any], now: float) -> tuple[int, int | None]:
    duration = desc.get("duration")
    if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= MAX_DURATION_MIN:
        raise ApiError(400, f"Invalid duration: {duration!r} (minutes, 1 to {MAX_DURATION_MIN})")
    reservation = desc.get("reservation")
    if reservation is not None and (not isinstance(reservation, int) or isinstance(reservation, bool)):
        raise ApiError(400, f"Invalid reservation date: {reservation!r} (epoch seconds)")
    if reservation is not None and reservation < now - 60:
        raise ApiError(500, "Reservation date is in the past")
    return duration, reservation


def read(site: Site, login: str, desc: dict[str, Any], files: dict[str, bytes], now: float) -> Submission:
    duration, reservation = _times(desc, now)
    name = desc.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 128):
        raise ApiError(400, "Invalid experiment name")
    exp_type = desc.get("type")
    if exp_type == "physical":
        nodes = physical_nodes(site, desc.get("nodes"))
    elif exp_type == "alias":
        nodes = alias_nodes(site, desc.get("nodes"))
    else:
        raise ApiError(400, f"Invalid experiment type: {exp_type!r} (physical or alias)")
    firmwares = associations(desc.get("firmwareassociations"), "firmwarename", nodes, desc)
    for fw in firmwares:
        if fw not in files:
            raise ApiError(400, f"Firmware file {fw!r} is missing from the submission")
        if not files[fw].startswith(b"\x7fELF") and not fw.endswith((".bin", ".hex")):
            raise ApiError(400, f"Firmware {fw!r} is not an ELF file")
    try:
        site_files = check_site_associations(desc.get("siteassociations"), site.name, files)
    except AssociationError as exc:
        raise ApiError(400, str(exc)) from None
    user = site.users[login]
    for profile in associations(desc.get("profileassociations"), "profilename", nodes, desc):
        if profile not in user.profiles:
            raise ApiError(500, f"Unknown monitoring profile: {profile}")
    if reservation is not None:
        check_free(site, nodes, float(reservation), float(reservation) + duration * 60, now)
    return Submission(str(exp_type), name, nodes, duration, reservation, {*firmwares, *site_files})


def physical_nodes(site: Site, nodes: Any) -> list[str]:
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ApiError(400, "Invalid nodes list: expected a non-empty list of network addresses")
    unknown = sorted(n for n in nodes if n not in site.nodes)
    if unknown:
        raise ApiError(500, f"Invalid nodes list : [{', '.join(unknown)}]")
    invalid = sorted(n for n in nodes if site.nodes[n].state not in ("Alive", "Busy"))
    if invalid:
        raise ApiError(500, f"Invalid nodes state : [{', '.join(invalid)}]")
    if len(set(nodes)) != len(nodes):
        raise ApiError(400, "Invalid nodes list: a node is given twice")
    return sorted(nodes, key=lambda a: (a.split("-", 1)[0], site.nodes[a].number))


def alias_nodes(site: Site, aliases: Any) -> list[str]:
    if not isinstance(aliases, list) or not aliases:
        raise ApiError(400, "Invalid nodes list: expected a list of aliases")
    held = site.held_nodes()
    chosen: list[str] = []
    for alias in aliases:
        if not isinstance(alias, dict):
            raise ApiError(400, "Invalid alias")
        props = alias.get("properties") or {}
        count = alias.get("nbnodes")
        if not isinstance(count, int) or count < 1 or not isinstance(props, dict):
            raise ApiError(400, "Invalid alias: nbnodes and properties are required")
        pool = [
            n.address
            for n in site.nodes.values()
            if n.state == "Alive"
            and n.address not in held
            and n.address not in chosen
            and archi_matches(n.archi, str(props.get("archi", n.archi)))
            and props.get("site", n.site) == n.site
        ]
        if len(pool) < count:
            raise ApiError(500, "There are not enough resources for your request")
        chosen.extend(pool[:count])
    return chosen


def associations(assocs: Any, key: str, nodes: list[str], desc: dict[str, Any]) -> list[str]:
    if assocs is None:
        return []
    if not isinstance(assocs, list):
        raise ApiError(400, f"Invalid {key} associations")
    names: list[str] = []
    alias_ids = {str(a.get("alias")) for a in desc.get("nodes") or [] if isinstance(a, dict)}
    for assoc in assocs:
        if not isinstance(assoc, dict) or not isinstance(assoc.get(key), str):
            raise ApiError(400, f"Invalid {key} association")
        targets = assoc.get("nodes")
        if not isinstance(targets, list) or not all(t in nodes or t in alias_ids for t in targets):
            raise ApiError(400, f"{key} {assoc[key]!r} is associated with nodes outside the experiment")
        if not FILE_NAME.fullmatch(assoc[key]):
            raise ApiError(400, f"Invalid {key}: {assoc[key]!r}")
        names.append(assoc[key])
    return names


def check_free(site: Site, nodes: list[str], begin: float, end: float, now: float) -> None:
    for other in site.experiments.values():
        if other.state not in ACTIVE or not set(other.nodes) & set(nodes):
            continue
        o_begin, o_end = other.interval(now)
        if o_begin < end and begin < o_end:
            raise ApiError(500, "There are not enough resources for your request")
