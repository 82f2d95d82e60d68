"""Action results name the node they are about: people know their nodes by name, not by the
agents' reservation ids."""

from __future__ import annotations

import re
from typing import Any


def name_the_node(text: str, rid: Any, node: str) -> str:
    """An agent's message about one reservation, naming its node instead of the reservation
    ("reservation 12 is ended; it cannot be extended" -> "pi-3 is ended; it cannot be extended")."""
    if rid is None:
        return text
    return re.sub(rf"\breservation {re.escape(str(rid))}\b", lambda _m: node, text)
