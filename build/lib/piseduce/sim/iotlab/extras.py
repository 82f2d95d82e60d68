"""What iotlabcli asks of a site beyond experiments and node commands: architecture filters as the
testbed reads them, the experiment description kept in an archive (what `iotlab-experiment load`
submits again), site associations and the scripts run on the site's SSH frontend, and the robots
(turtlebots carrying M3 nodes) with their circuits on the sites that have them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# The keys of a submitted description (iotlabcli's _Experiment.from_dict accepts these only).
DESCRIPTION_KEYS = (
    "name", "duration", "reservation", "type", "nodes", "firmwareassociations",
    "profileassociations", "associations", "siteassociations", "profiles", "mobilities",
)
# Site association types whose value names a file of the submission (iotlabcli's
# SITE_ASSOCIATIONS_FILE_ASSOCS), and the other ones the testbed knows.
SITE_FILE_ASSOCS = ("script", "scriptconfig")
SITE_ASSOCS = (*SITE_FILE_ASSOCS, "ipv6")


class AssociationError(ValueError):
    """A site association or script request the testbed refuses (HTTP 400)."""


def archi_matches(archi: str, wanted: str) -> bool:
    """`m3` selects `m3:at86rf231` (the board before the radio), as the testbed's filter does;
    a full `m3:at86rf231` selects only itself; `m` selects nothing."""
    return archi == wanted or archi.split(":", 1)[0] == wanted


def description_of(desc: dict[str, Any]) -> dict[str, Any]:
    """The experiment's description as submitted, every key iotlabcli writes and no other."""
    return {k: desc.get(k) for k in DESCRIPTION_KEYS}


def site_host(site: str) -> str:
    """iotlabcli names sites in associations and script requests by their frontend's name."""
    return f"{site}.iot-lab.info"


def check_site_associations(assocs: Any, site: str, files: dict[str, bytes]) -> list[str]:
    """Validate `siteassociations` ({"script": [{"scriptname", "sites"}], ...}); return the names
    of the files they need (kept with the experiment)."""
    if assocs is None:
        return []
    if not isinstance(assocs, dict):
        raise AssociationError("Invalid siteassociations: expected an object of association types")
    needed: list[str] = []
    for kind, entries in assocs.items():
        if kind not in SITE_ASSOCS or not isinstance(entries, list):
            raise AssociationError(f"Invalid site association {kind!r} (one of {', '.join(SITE_ASSOCS)})")
        for entry in entries:
            name = entry.get(f"{kind}name") if isinstance(entry, dict) else None
            sites = entry.get("sites") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not isinstance(sites, list) or not sites:
                raise AssociationError(f"Invalid {kind} association: {kind}name and sites are needed")
            unknown = sorted(str(s) for s in sites if s not in (site, site_host(site)))
            if unknown:
                raise AssociationError(f"Invalid sites for {kind} {name!r}: {', '.join(unknown)}")
            if kind in SITE_FILE_ASSOCS:
                if name not in files:
                    raise AssociationError(f"File {name!r} of the {kind} association is missing")
                needed.append(name)
    return needed


@dataclass
class Scripts:
    """The scripts of one experiment on the site's frontend: which sites run one now."""

    site: str
    running: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)  # site → script file name

    def start_from(self, assocs: dict[str, Any] | None) -> None:
        """An experiment that starts runs the scripts associated at submission."""
        # check_site_associations let only this site in: its one frontend runs the script.
        for entry in (assocs or {}).get("script") or []:
            if entry.get("sites"):
                self.names[site_host(self.site)] = entry["scriptname"]
                self.running.add(site_host(self.site))

    def _sites(self, sites: Any) -> list[str]:
        if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
            raise AssociationError("Expected a JSON list of sites")
        host = site_host(self.site)
        wanted = sites or [host]
        outside = sorted(set(wanted) - {self.site, host})
        if outside:
            raise AssociationError(f"Sites not in the experiment: {', '.join(outside)}")
        return [host]

    def run(self, parts: dict[str, bytes]) -> dict[str, list[str]]:
        raw = parts.pop("script.json", None)
        if raw is None:
            raise AssociationError("Missing the script associations script.json")
        try:
            assocs = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AssociationError("script.json is not valid JSON") from None
        check_site_associations(assocs, self.site, parts)
        if not (assocs or {}).get("script"):
            raise AssociationError("No script to run")
        self.start_from(assocs)
        return {"0": [site_host(self.site)]}

    def status(self, sites: Any) -> dict[str, list[str]]:
        wanted = self._sites(sites)
        return _split(wanted, self.running)

    def kill(self, sites: Any) -> dict[str, list[str]]:
        wanted = self._sites(sites)
        result = _split(wanted, self.running)
        self.running -= set(wanted)
        return result


def _split(sites: list[str], ok: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in sites:
        out.setdefault("0" if s in ok else "1", []).append(s)
    return out


# ---------------------------------------------------------------- robots

CIRCUIT_POINTS = {"square": [(1, 1), (4, 1), (4, 4), (1, 4)], "line": [(1, 2), (6, 2)]}


def circuits(site: str, has_robots: bool, **selections: str) -> list[dict[str, Any]]:
    if not has_robots:
        return []
    out = []
    for name, points in CIRCUIT_POINTS.items():
        item = {
            "name": name, "site": site, "type": "predefined", "loop": True,
            "points": [f"p{i}" for i in range(len(points))],
            "coordinates": {f"p{i}": {"x": x, "y": y, "theta": 0.0} for i, (x, y) in enumerate(points)},
        }
        if all(str(item.get(k)) == v for k, v in selections.items()):
            out.append(item)
    return out


@dataclass
class Robot:
    """A turtlebot carrying one node: docked until a mobility moves it."""

    node: str
    dock: tuple[float, float]
    mobility: str = ""
    battery: int = 100

    def status(self) -> dict[str, Any]:
        x, y = self.dock
        return {
            "network_address": self.node, "state": "Moving" if self.mobility else "Docked",
            "battery": self.battery, "mobility": self.mobility or None,
            "position": {"x": x, "y": y, "theta": 0.0},
        }
