"""The scheduling pass's lookups read only what is due (migration 0010): on an idle agent with a
thousand live reservations they ran every poll interval over every live row."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Select

from piseduce.agent.engine.schedule import DUE, EXPIRED
from piseduce.db import make_engine, upgrade


def plan(url: str, query: Select[tuple[int]]) -> str:
    engine = make_engine(url)
    try:
        compiled = query.compile(engine)
        # The IN lists expanded, as the driver gets them; the time's value does not change the plan.
        state = compiled.construct_expanded_state({"now": "2026-01-01 00:00:00.000000"})
        with engine.connect() as conn:
            values = tuple(state.parameters[name] for name in state.positiontup or ())
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {state.statement}", values).all()
        return " | ".join(str(r[-1]) for r in rows)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("query", "index", "condition"),
    [(EXPIRED, "ix_reservations_status_end", "end<"), (DUE, "ix_reservations_status_start", "start<")],
)
def test_lookup_searches_by_status_and_time(
    tmp_path: Path, query: Select[tuple[int]], index: str, condition: str
) -> None:
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    upgrade("agent", url)
    found = plan(url, query)
    # A SEARCH bounded by the time, not every row of the status (nor a SCAN of the table).
    assert index in found and condition in found, found
