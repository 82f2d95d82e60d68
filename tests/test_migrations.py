"""The Alembic migrations build exactly the schema the models declare (both databases, both apps):
a column added to a model without its migration, or the reverse, fails here rather than in
production on the first query."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from piseduce import db
from piseduce.agent.models import Base as AgentBase
from piseduce.webui.models import Base as WebuiBase

APPS = {"agent": AgentBase.metadata, "webui": WebuiBase.metadata}


def _differences(app: str, url: str) -> list[Any]:
    db.upgrade(app, url)
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, APPS[app])
    finally:
        engine.dispose()
    # Objects only the migrations create on purpose (PostgreSQL's exclusion constraint and the
    # extension behind it) are not declared on the models.
    return [d for d in diff if "no_overlap" not in repr(d)]


@pytest.mark.parametrize("app", sorted(APPS))
def test_migrations_match_models_sqlite(tmp_path: Path, app: str) -> None:
    assert _differences(app, f"sqlite:///{tmp_path / 'x.db'}") == []


@pytest.mark.postgres
@pytest.mark.parametrize("app", sorted(APPS))
def test_migrations_match_models_postgres(pg_url: str, app: str) -> None:
    assert _differences(app, pg_url) == []
