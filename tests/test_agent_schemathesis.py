"""Schemathesis against the agent's own OpenAPI spec (ASGI, fake driver): no 5xx, and every answer
conforms to the spec (status codes, content types, bodies)."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from helpers.agent_helpers import ADMIN, headers, node_body, write_config
from helpers.constants import TOKEN
from piseduce import db
from piseduce.config import load_agent_config


async def _populate(app: Any) -> None:
    """Nodes and reservations, so generated ids and names sometimes hit real rows."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        for i in range(1, 5):
            await c.post("/api/admin/nodes", json=node_body(f"pi-{i}"), headers=ADMIN)
        for user in ("alice@example.org", "root@example.org"):
            await c.post(
                "/api/reservations", json={"filters": [{"count": 1, "properties": {}}], "duration_hours": 1},
                headers=headers(user),
            )


# Invalid data may also be refused for its size before it is parsed: a string past its maxLength can
# make the body exceed the agent's 1 MiB cap, and 413 is the documented answer to that.
_REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
# The token goes through schemathesis' own auth, so that a case testing a missing Authorization
# header is sent without one (a header forced on every call would undo that mutation).
_CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
        "checks": {"negative_data_rejection": {"expected-statuses": _REJECTIONS}},
    }
)
# The web UI's identity headers, without the token.
IDENTITY = {k: v for k, v in ADMIN.items() if k.lower() != "authorization"}


def _build(**config: Any) -> tuple[Any, Any]:
    from piseduce.agent.app import create_app

    folder = Path(tempfile.mkdtemp(prefix="piseduce-schemathesis-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    cfg = load_agent_config(write_config(folder, **config))
    db.upgrade("agent", cfg.database_url)
    app = create_app(cfg)
    asyncio.run(_populate(app))
    # The spec itself needs the token (unless the config opens it: open_endpoints).
    spec = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=_CONFIG, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    return app, spec


APP, schema = _build()
# The real raspberry driver's agent too, for its admin routes (switches, environments).
RPI_APP, rpi_schema = _build(driver="")


# The suite replays the same examples on every run, so that CI does not fail at random; a longer,
# random hunt: PISEDUCE_FUZZ_EXAMPLES=400 ./run test tests/test_agent_schemathesis.py
FUZZ_EXAMPLES = int(os.environ.get("PISEDUCE_FUZZ_EXAMPLES", "0"))


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES or 25,
    derandomize=not FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_agent_api_conforms(case: Any) -> None:
    # The webui's headers are fixed (an admin, so that admin routes are exercised too); the token
    # check and the header checks themselves are covered by test_agent_api.py.
    # Schema-valid requests may still break rules a schema cannot state (end after start, a start
    # in the future, a free node...): those get a 4xx on purpose, so "positive data acceptance"
    # does not apply; every other check (no 5xx, documented status codes and bodies,
    # negative data rejected) does.
    response = case.call_and_validate(headers=IDENTITY, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500, response.text


# ---------------------------------------------------------------- hostile values, every time

# What JSON parsers read but cannot write back, nor a database store (issue 11 #7): in every number
# and every string of every request body, one at a time. Deterministic: the same cases every run.
HOSTILE = {
    "number": ("NaN", "Infinity", "-Infinity", "1e999"),
    "string": ('"\\ud800"', '"x\\udfff"', '"\\udc00\\ud83d"'),
}
_MARK = "\u2063hostile\u2063"


def _inline(schema: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """The schema with its local references (`#/x-bundled/...`) replaced by what they name."""
    if isinstance(schema, list):
        return [_inline(s, root, depth) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and depth < 8:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return _inline(target, root, depth + 1)
    return {k: _inline(v, root, depth) for k, v in schema.items() if k != "x-bundled"}


def _first(schema: dict[str, Any]) -> dict[str, Any]:
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            return _first(options[0]) if options else {"type": "null"}
    return schema


def _skeleton(schema: dict[str, Any]) -> Any:
    """A small value of this schema (the required fields only), hostile values go into it."""
    s = _first(schema)
    kind = s.get("type")
    if "enum" in s:
        return s["enum"][0]
    if "const" in s:
        return s["const"]
    if kind == "object":
        props = s.get("properties", {})
        names = [k for k in s.get("required", []) if k in props]
        if not names:
            # Nothing required (a filter): its first number, so that the rest is valid.
            names = [k for k, v in props.items() if _first(v).get("type") in ("integer", "number")][:1]
        return {k: _skeleton(props[k]) for k in names}
    if kind == "array":
        return [_skeleton(s.get("items", {}))] if s.get("minItems") else []
    if kind in ("integer", "number"):
        return max(1, s.get("minimum", 1), s.get("exclusiveMinimum", 0) + 1)
    if kind == "boolean":
        return True
    if s.get("format") == "date-time":
        return "2030-01-01T00:00:00Z"
    return "pi-1" if kind == "string" else None


def _leaves(schema: dict[str, Any], path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """Every place of a number or a string in bodies of this schema: (path, "number"|"string")."""
    s = _first(schema)
    kind = s.get("type")
    if kind in ("integer", "number"):
        return [(path, "number")]
    if kind == "string" or (not kind and "enum" in s):
        return [(path, "string")]
    out: list[tuple[tuple[Any, ...], str]] = []
    if kind == "object":
        for name, sub in s.get("properties", {}).items():
            out += _leaves(sub, (*path, name))
        for sub in s.get("patternProperties", {}).values():
            out += _leaves(sub, (*path, "k"))
        extra = s.get("additionalProperties")
        if extra:
            sub = extra if isinstance(extra, dict) else {"type": "string"}
            out += _leaves(sub if sub.get("type") else {"type": "string"}, (*path, "extra_field"))
            out += [((*path, "extra_field"), "number")]
    elif kind == "array":
        out += _leaves(s.get("items", {}), (*path, 0))
    return out


def _place(base: Any, schema: dict[str, Any], path: tuple[Any, ...]) -> Any:
    """`base` with the marker at `path` (containers created on the way from the schema)."""
    if not path:
        return _MARK
    s = _first(schema)
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(base) if isinstance(base, list) and base else [_skeleton(s.get("items", {}))]
        items[0] = _place(items[0], s.get("items", {}), rest)
        return items
    obj = dict(base) if isinstance(base, dict) else {}
    sub = s.get("properties", {}).get(head)
    if sub is None and s.get("patternProperties"):
        sub = next(iter(s["patternProperties"].values()))
    if sub is None:
        extra = s.get("additionalProperties")
        sub = extra if isinstance(extra, dict) else {}
    obj[head] = _place(obj.get(head, _skeleton(sub)), sub, rest)
    return obj


def _hostile_bodies(schema: dict[str, Any]) -> list[str]:
    base = _skeleton(schema)
    texts = []
    for path, kind in _leaves(schema):
        text = json.dumps(_place(base, schema, path))
        texts += [text.replace(json.dumps(_MARK), value) for value in HOSTILE[kind]]
    # A key that is not valid Unicode.
    if isinstance(base, dict):
        texts.append(json.dumps({**base, _MARK: 1}).replace(json.dumps(_MARK), '"\\ud800"'))
    return texts


def _path_values(operation: Any) -> dict[str, Any]:
    values = {}
    for p in operation.path_parameters:
        kind = p.definition.get("schema", {}).get("type")
        values[p.name] = 1 if kind == "integer" else "pi-1"
    return values


_BODY_OPERATIONS = {
    f"{op.method.upper()} {op.path}": op
    for spec in (schema, rpi_schema)
    for op in (r.ok() for r in spec.get_all_operations())
    if any(b.media_type == "application/json" for b in op.body)
}


@pytest.mark.parametrize("label", sorted(_BODY_OPERATIONS))
def test_hostile_numbers_and_strings_get_a_4xx(label: str) -> None:
    operation = _BODY_OPERATIONS[label]
    body = next(b for b in operation.body if b.media_type == "application/json")
    texts = _hostile_bodies(_inline(body.resolved_schema, body.resolved_schema))
    assert texts, "no number or string in this body?"
    auth = {**IDENTITY, "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for text in texts:
        case = operation.Case(path_parameters=_path_values(operation), media_type="application/json")
        response = case.call(headers=auth, data=text.encode())
        assert 400 <= response.status_code < 500, (text, response.status_code, response.text)
        # Documented answer, JSON that strict parsers read (no NaN, valid UTF-8).
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        json.loads(response.content.decode("utf-8"), parse_constant=_refuse)


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in an answer")
