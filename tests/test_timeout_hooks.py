"""The suite's time limit (pyproject.toml's `timeout`, tests/helpers/timeout_hooks.py): a stuck test fails
with what it was waiting for and the run goes on; a stuck teardown ends the run with its stack."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CONFTEST = """
from helpers import timeout_hooks

pytest_plugins = ["helpers.timeout_hooks"]
timeout_hooks.BACKSTOP_S = 2.0
"""

STUCK = """
import asyncio
import subprocess
import time

import pytest


async def the_awaited_reply():
    await asyncio.Event().wait()


async def test_stuck_in_an_await():
    await the_awaited_reply()


def test_stuck_in_a_subprocess():
    subprocess.run(["sleep", "60"])


def test_after_them():
    pass


@pytest.fixture
def stuck_teardown():
    yield
    time.sleep(60)


def test_stuck_then_stuck_teardown(stuck_teardown):
    time.sleep(60)


def test_never_reached():
    pass
"""


def _run(tmp_path: Path, *selection: str) -> tuple[subprocess.CompletedProcess[str], float]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_stuck.py").write_text(STUCK)
    # the project's settings but a 2 s limit (the suite's own pyproject.toml is not read from here)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        f"timeout = 2\ntimeout_method = signal\npythonpath = {TESTS}\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_stuck.py",
                           *selection], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


@pytest.mark.slow
def test_a_stuck_test_fails_with_what_it_awaited_and_the_run_goes_on(tmp_path: Path) -> None:
    done, took = _run(tmp_path, "-k", "await or subprocess or after")
    assert "2 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("Timeout (>2.0s) from pytest-timeout") >= 2
    # the asyncio task's stack names the coroutine that waited, not only the event loop's select
    assert "Timeout: the asyncio tasks of test_stuck.py::test_stuck_in_an_await" in done.stdout
    assert "in the_awaited_reply" in done.stdout
    assert took < 60  # the subprocess (sleep 60) was cut too


@pytest.mark.slow
def test_a_stuck_teardown_ends_the_run_with_its_stack(tmp_path: Path) -> None:
    done, took = _run(tmp_path, "-k", "stuck_teardown or never_reached")
    assert done.returncode == 1 and took < 50, (took, done.stdout + done.stderr)
    assert "Stack of MainThread" in done.stdout + done.stderr
    assert "in stuck_teardown" in done.stdout + done.stderr
    assert "passed" not in done.stdout  # the run ended there
