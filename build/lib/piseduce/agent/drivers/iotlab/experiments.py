"""What the iot-lab parts share about an experiment: its states, the name that tells ours from the
others' (a resumed executor finds by it an experiment submitted just before a crash), and the
network address of the node it runs on."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from piseduce.agent.drivers.base import ReservationView, StepError

PENDING = ("Waiting", "toLaunch", "Launching")
LIVE = (*PENDING, "Running")  # the experiment holds (or will hold) its nodes
FINAL = ("Terminated", "Stopped", "Error")
ADDRESS = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*-\d+\.[a-z0-9-]+\.iot-lab\.info$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_date(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def experiment_name(site: str, reservation: ReservationView) -> str:
    return f"piseduce_{site}_r{reservation.id}"


def our_prefix(site: str) -> str:
    return f"piseduce_{site}_r"


def node_address(site: str, reservation: ReservationView) -> str:
    attrs = reservation.node.attrs
    found = str(attrs.get("network_address") or f"{reservation.node.name}.{site}.iot-lab.info")
    if not ADDRESS.fullmatch(found):
        raise StepError(f"{reservation.node.name} has no valid IoT-LAB network address ({found!r})")
    return found


def short_name(addr: str) -> str:
    return addr.split(".", 1)[0]
