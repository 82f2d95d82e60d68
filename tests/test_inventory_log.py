"""The agent's node inventory refresh: an expected refusal of the testbed (no login forwarded, a
login refused) is one log line with its reason, never a traceback; an unexpected error keeps its
traceback for the operator."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest

from piseduce.agent.drivers.base import CredentialsRequired
from piseduce.agent.inventory import Inventory


class _Driver:
    """Only what Inventory.refresh uses of a driver: `inventory` and `sync_nodes`."""

    inventory = object()

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def sync_nodes(self, credentials: Mapping[str, str] | None) -> Any:
        raise self.exc


async def refresh_failing(exc: Exception, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    inv = Inventory(_Driver(exc), sessions=None, period=0)  # type: ignore[arg-type]
    inv.synced_at = 0.0  # synced once before: the last known nodes are served
    with caplog.at_level(logging.WARNING, logger="piseduce.agent.inventory"):
        assert await inv.refresh() is False
    (record,) = [r for r in caplog.records if r.name == "piseduce.agent.inventory"]
    return record


async def test_an_expected_refusal_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    record = await refresh_failing(
        CredentialsRequired("no Grid'5000 login was forwarded to read the node list"), caplog)
    assert not record.exc_info  # no traceback
    assert "no Grid'5000 login was forwarded to read the node list" in record.getMessage()
    assert "serving the last known nodes" in record.getMessage()


async def test_an_unexpected_error_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    record = await refresh_failing(RuntimeError("bug"), caplog)
    assert record.exc_info and record.exc_info[0] is RuntimeError
