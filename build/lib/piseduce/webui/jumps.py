"""A deployed board's way in through its agent's SSH gateway (the agent's /api/info `gateway`
and the reservation's connection), for Manage and the user API alike."""

from __future__ import annotations

from piseduce import sshjump
from piseduce.protocol import DEPLOYED, ReservationOut
from piseduce.webui.agents import AgentRef


def jump_of(agent: AgentRef, r: ReservationOut) -> sshjump.Jump | None:
    """None unless the agent runs a gateway and the board is deployed with a pinned address."""
    gw = agent.about.gateway
    if gw is None or r.status != DEPLOYED:
        return None
    board = sshjump.board_of(r.node, r.connection)
    if board is None:
        return None
    return sshjump.jump(sshjump.Gateway.of(gw), board)
