"""Deeply nested JSON sent to the agent (with its token: a web UI of another version, or one a
bug made send garbage) is a 4xx in words, never a 500 (RecursionError in the decoder or in the
checks that walk the body)."""

from __future__ import annotations

import httpx
import pytest

from helpers.agent_helpers import headers

ALICE = headers()


@pytest.mark.parametrize("levels", [50, 900, 5000, 100_000])
@pytest.mark.parametrize("path", ["/api/reservations", "/api/reservations/1/deploy",
                                  "/api/reservations/1/extend"])
async def test_deep_bodies_are_4xx(client: httpx.AsyncClient, levels: int, path: str) -> None:
    body = b'{"filters": ' + b"[" * levels + b"]" * levels + b"}"
    r = await client.post(path, content=body, headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code in (400, 404, 422), (r.status_code, r.text[:200])
    assert "detail" in r.json()
