"""No API token is written to a log: a token sent in a query string (`?access_token=pst_…`, which
the API refuses) was kept whole in the web UI's access log lines. Both log formats redact it, in
the message and in its arguments (uvicorn's access logger formats the URL from its arguments)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator

import pytest

from piseduce.logs import configure


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The root logger as configure() leaves it, and uvicorn's access logger as `webui serve` has
    it (propagating, no level of its own), whatever an earlier test's in-process server made of it."""
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    handlers, level = root.handlers[:], root.level
    saved = (access.handlers[:], access.level, access.propagate, access.disabled)
    access.handlers[:], access.propagate, access.disabled = [], True, False
    access.setLevel(logging.NOTSET)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    access.handlers[:], _, access.propagate, access.disabled = saved
    access.setLevel(saved[1])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_token_in_an_access_log_line_is_redacted(
    fmt: str, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    token = "pst_" + secrets.token_urlsafe(32)
    configure(level="INFO", fmt=fmt)
    access = logging.getLogger("uvicorn.access")
    url = f"/api/v1/me?access_token={token}"
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", url, "1.1", 401)
    logging.getLogger("piseduce.test").warning("refused %s", token)
    err = capsys.readouterr().err
    assert token not in err and token[:20] not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2
    if fmt == "json":
        assert all(json.loads(line) for line in lines)
    assert "/api/v1/me?access_token=pst_" in err and "[redacted]" in err, err
