"""How long the raspberry agent's SNMP client may take for one request, retries included: the agent
uses these numbers, and the web UI waits that long for an answer that needs the switch (a port
table, a power switch) instead of its usual deadline for agent calls."""

from __future__ import annotations

REQUEST_TIMEOUT_S = 1.0  # per datagram sent
RETRIES = 3  # datagrams sent again after a silence
MARGIN_S = 1.0  # the agent's own work and the HTTP round trip


def answer_budget_s(requests: int = 1) -> float:
    """Seconds for `requests` SNMP requests in a row, each retried as configured, to answer or fail."""
    return requests * REQUEST_TIMEOUT_S * (RETRIES + 1) + MARGIN_S
