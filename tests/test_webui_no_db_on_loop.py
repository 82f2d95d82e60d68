"""No database call on the web UI's event loop (issue 11, defect 1), checked three ways: no async
route or dependency takes a SQLAlchemy session, no async function of the web UI's code calls the
database itself (it hands a function to `Database.read`/`write`, run in a thread), and the engine's
guard catches a statement run on the loop anyway (every test runs with it raising)."""

from __future__ import annotations

import ast
import inspect
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

import piseduce.webui
from helpers.webui_fixtures import write_webui_config
from piseduce.config import load_webui_config
from piseduce.webui.app import create_app

WEBUI = Path(piseduce.webui.__file__).parent
# What only a database session does (on an object of ours, whatever its name).
SESSION_METHODS = {"scalar", "scalars", "execute", "commit", "rollback", "flush", "refresh", "add_all",
                   "begin_nested", "connection"}
DB_FUNCTIONS = {"write_session", "session_factory", "make_engine"}
FORBIDDEN_TYPES = (Session, sessionmaker, Engine)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return create_app(load_webui_config(write_webui_config(tmp_path_factory.mktemp("webui"))),
                      health_checks=False)


def calls(dependant: Dependant) -> Iterator[Any]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from calls(sub)


def is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def database_parameters(fn: Any) -> list[str]:
    hints = typing.get_type_hints(fn)
    return [name for name, hint in hints.items()
            if name != "return" and isinstance(hint, type) and issubclass(hint, FORBIDDEN_TYPES)]


def test_no_async_route_or_dependency_takes_a_session(app: Any) -> None:
    routes = [rc.original_route for rc in iter_route_contexts(app.routes)
              if isinstance(rc.original_route, APIRoute)]
    assert len(routes) > 40  # the enumeration sees every page
    offenders = []
    for route in routes:
        for fn in calls(route.dependant):
            if is_async(fn) and database_parameters(fn):
                offenders.append(f"{route.path}: {fn.__module__}.{fn.__qualname__}{database_parameters(fn)}")
    assert offenders == []


def async_bodies(tree: ast.AST) -> Iterator[ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef):
            yield node


def direct_database_calls(fn: ast.AsyncFunctionDef) -> Iterator[tuple[int, str]]:
    """Calls in the async function's own body; the functions and lambdas it defines are handed to
    the database's threads and are not looked into."""
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in SESSION_METHODS:
                yield node.lineno, func.attr
            if isinstance(func, ast.Name) and func.id in DB_FUNCTIONS:
                yield node.lineno, func.id
        todo.extend(ast.iter_child_nodes(node))


def test_no_async_function_of_the_web_ui_calls_the_database_itself() -> None:
    offenders = []
    modules = sorted(WEBUI.rglob("*.py"))
    assert len(modules) > 15
    for module in modules:
        tree = ast.parse(module.read_text(), str(module))
        for fn in async_bodies(tree):
            for line, what in direct_database_calls(fn):
                offenders.append(f"{module.relative_to(WEBUI)}:{line} {fn.name} calls {what}")
    assert offenders == []


def test_the_guard_catches_a_statement_on_the_event_loop(tmp_path: Path) -> None:
    """A route that would run a statement on the loop fails (the tests), instead of freezing
    every request in production for as long as the statement waits."""
    from starlette.testclient import TestClient

    from piseduce.webui.database import DbOnEventLoop

    cfg = load_webui_config(write_webui_config(tmp_path / "webui"))
    web = create_app(cfg, health_checks=False, loop_guard="raise")

    @web.get("/bad")
    async def bad(request: Request) -> dict[str, int]:
        with request.app.state.database.factory() as s:
            return {"one": int(s.execute(text("SELECT 1")).scalar_one())}

    @web.get("/good")
    async def good(request: Request) -> dict[str, int]:
        one = await request.app.state.database.read(lambda s: s.execute(text("SELECT 1")).scalar_one())
        return {"one": int(one)}

    with TestClient(web) as client:
        assert client.get("/good").json() == {"one": 1}
        with pytest.raises(DbOnEventLoop):
            client.get("/bad")
