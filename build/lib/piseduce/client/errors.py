"""The client's exceptions: one class for every refusal of the API (its status and `detail`), and
the few things that go wrong on this side (no answer, a deployment that failed, a wait too long)."""

from __future__ import annotations

from typing import Any


class PiseduceError(Exception):
    """Anything the client reports; `str()` is one sentence that says what to do next."""


class ApiError(PiseduceError):
    """The API refused a call: `status` (4xx, 5xx) and its `detail`, as the server wrote it."""

    def __init__(self, status: int, detail: Any, *, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        super().__init__(self.sentence())

    def sentence(self) -> str:
        return f"{describe_detail(self.detail)} (HTTP {self.status} on {self.method} {self.path})".strip()


class AgentsUnavailable(UserWarning):
    """A list gathered from several agents lacks the part of those that did not answer (the API
    names them in its X-Piseduce-Unavailable header): issued as a warning, the list is still returned.
    `agents` is the API's text, `<agent>: <what went wrong>` joined by '; '."""

    def __init__(self, agents: str, path: str = "") -> None:
        self.agents = agents
        self.path = path
        super().__init__(
            f"this list lacks what these agents hold, as they did not answer ({path or 'a list'}): "
            f"{agents}; run it again shortly, and tell an administrator if the agent stays down"
        )


class BadValues(PiseduceError):
    """Values that cannot be sent as they are (a field the form has not, a required one missing)."""


class Unreachable(PiseduceError):
    """No answer from the web UI (refused, timed out, not HTTP)."""


class DeploymentFailed(PiseduceError):
    """Some nodes of a wait ended failed (or were destroyed): `failed` names them."""

    def __init__(self, failed: list[Any], done: list[Any]) -> None:
        self.failed = failed
        self.done = done
        words = ", ".join(f"{r.node} ({r.agent}): {r.error or r.status}" for r in failed)
        super().__init__(f"{len(failed)} node(s) failed: {words}")


class WaitTimeout(PiseduceError):
    """A wait reached its timeout: `pending` are the reservations still under way."""

    def __init__(
        self, what: str, timeout: float, pending: list[Any], silent: list[str] | None = None
    ) -> None:
        self.pending = pending
        self.silent = silent or []
        names = ", ".join([*(f"{r.node} ({r.agent}, {r.status})" for r in pending), *self.silent])
        super().__init__(f"{what} not over after {timeout:g} s: {names}")


def describe_detail(detail: Any) -> str:
    """FastAPI's list of validation errors (or any detail) as one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                where = ".".join(str(x) for x in item.get("loc", ()) if x not in ("body", "query", "path"))
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return "; ".join(parts) or "the request was refused"
    if detail is None:
        return "the request was refused"
    return str(detail)
