"""Lists a user sends that must name each thing once: the nodes of a booking or of a next-slot
question, the reservations of a bulk action. A hostile list naming one node a thousand times
would otherwise be carried to the agents whole (and a bulk extend would extend one reservation a
thousand times); it is refused with the repeated item named, before any agent is asked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from piseduce.repeats import first_repeat
from piseduce.webui.agents import AgentRef


def repeated_node(nodes: Mapping[int, Sequence[str]], refs: Mapping[int, AgentRef]) -> str:
    """Why the named nodes (per agent id) cannot be used, in words ('' when each is there once)."""
    for agent_id, names in nodes.items():
        node = first_repeat(names)
        if node is not None:
            agent = refs[agent_id].name if agent_id in refs else str(agent_id)
            return f"Node {agent}/{node[:80]} is listed more than once: list each node once."
    return ""


def repeated_reservation(targets: Sequence[tuple[AgentRef, int]]) -> str:
    """Why a bulk action's selection cannot be used, in words ('' when each is there once)."""
    again = first_repeat((ref.id, rid) for ref, rid in targets)
    if again is None:
        return ""
    name = next(ref.name for ref, _ in targets if ref.id == again[0])
    return f"Reservation {again[1]} on {name} is selected more than once: select each one once."
