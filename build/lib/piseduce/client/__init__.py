"""The Python client of PiSeduce's user API (`/api/v1` of the web UI) and, in `piseduce.client.cli`,
the user command `pisctl`. It needs httpx and pydantic only (typer and rich for the command), never
the server's parts, so researchers install it on their laptop or in a notebook.

    from piseduce.client import Client
    with Client("https://piseduce.example.org", token) as api:
        booked = api.reserve(count=2, filters=["type=raspberry"], hours=2, bin="exp1")
        for r in booked:
            api.deploy(r, {"environment": "raspios_bookworm"})
        api.wait_deployed(booked, timeout=1800)

`AsyncClient` has the same methods, awaited (Jupyter: `await api.wait_deployed(...)`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Errors and models import nothing of this package: loaded with it. The clients, whose modules
# import their siblings (and so this package first), are loaded on first use (PEP 562), which keeps
# the package free of import cycles (tests/test_import_cycles.py).
from piseduce.client.errors import (
    AgentsUnavailable,
    ApiError,
    DeploymentFailed,
    PiseduceError,
    Unreachable,
    WaitTimeout,
)
from piseduce.client.models import (
    Agent,
    Connection,
    Environment,
    Event,
    FormField,
    Me,
    NextSlot,
    Node,
    Reservation,
    ScheduleRow,
    Slot,
)

if TYPE_CHECKING:
    from piseduce.client.aio import AsyncClient
    from piseduce.client.sync import Client

_LAZY = {"AsyncClient": "piseduce.client.aio", "Client": "piseduce.client.sync"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "Agent",
    "AgentsUnavailable",
    "ApiError",
    "AsyncClient",
    "Client",
    "Connection",
    "DeploymentFailed",
    "Environment",
    "Event",
    "FormField",
    "Me",
    "NextSlot",
    "Node",
    "PiseduceError",
    "Reservation",
    "ScheduleRow",
    "Slot",
    "Unreachable",
    "WaitTimeout",
]
