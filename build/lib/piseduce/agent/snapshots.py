"""Plain copies of node and reservation rows, the only view of them drivers get
(`drivers.base.NodeView`, `ReservationView`): deep copies, so that what a driver changes in them
never reaches a row behind the engine's or the API's back."""

from __future__ import annotations

import copy

from piseduce.agent import sealed
from piseduce.agent.drivers.base import NodeView, ReservationView
from piseduce.agent.models import Node, Reservation


def node_view(n: Node) -> NodeView:
    return NodeView(
        name=n.name,
        ip=n.ip,
        status=n.status,
        properties=copy.deepcopy(n.properties or {}),
        attrs=copy.deepcopy(n.attrs or {}),
    )


def reservation_view(r: Reservation, *, sealed_params: bool = False) -> ReservationView:
    """The reservation as drivers see it. Its params without the deploy form's secrets, unless
    `sealed_params` (the executor's: it keeps the sealed token, to open it in memory only)."""
    return ReservationView(
        id=r.id,
        node=node_view(r.node),
        owner=r.owner,
        bin=r.bin,
        start=r.start,
        end=r.end,
        status=r.status,
        params=copy.deepcopy(r.params or {}) if sealed_params else sealed.public(r.params),
        driver_state=copy.deepcopy(r.driver_state or {}),
        connection=copy.deepcopy(r.connection or {}),
    )
