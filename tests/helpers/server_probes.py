"""Probes of a running web UI process (real uvicorn): how long `/healthz` takes while something
else happens, a second process holding the SQLite write lock, and browsers speaking HTTP to it."""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from helpers.webui_fixtures import Browser


@dataclass
class Latencies:
    """What a `HealthProbe` measured: every `/healthz` round trip, in seconds."""

    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.samples, default=float("inf"))

    def slower_than(self, seconds: float) -> int:
        return sum(1 for x in self.samples if x > seconds)

    def responsive(self, bound: float, stall: float = 1.0) -> bool:
        """Answered every probe, none slower than `stall`, and 95 % (all but one of a short run)
        within `bound`. The machine running the suite is shared: even an idle web UI's worst probe
        reaches ~150 ms when other test processes take the cores, while a frozen loop is seconds."""
        if not self.samples or self.failures or self.worst >= stall:
            return False
        return self.slower_than(bound) <= max(1, len(self.samples) // 20)

    def summary(self) -> str:
        if not self.samples:
            return f"no answer at all ({self.failures[:3]})"
        return (
            f"{len(self.samples)} probes, median {statistics.median(self.samples) * 1000:.0f} ms, "
            f"worst {self.worst * 1000:.0f} ms, {len(self.failures)} failed {self.failures[:3]}"
        )


# The probe runs in a process of its own, so that what the test process does (threads sending
# requests, holding its GIL) never counts in the latencies measured. It warms its connection up,
# says "ready", probes until its stdin closes, then prints what it measured.
_PROBE = """
import json, sys, threading, time
import httpx
url, interval, timeout = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
samples, failures = [], []
with httpx.Client(timeout=timeout) as client:
    client.get(url)
    print("ready", flush=True)
    while not stop.is_set() or not (samples or failures):
        t0 = time.perf_counter()
        try:
            r = client.get(url)
            (samples.append(time.perf_counter() - t0) if r.status_code == 200
             else failures.append(f"HTTP {r.status_code}"))
        except httpx.HTTPError as exc:
            failures.append(type(exc).__name__)
        stop.wait(interval)
print(json.dumps({"samples": samples, "failures": failures}), flush=True)
"""


class HealthProbe:
    """Asks `/healthz` every `interval` seconds from another process, timing each answer, from
    the moment this enters until it exits."""

    def __init__(self, url: str, interval: float = 0.05, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/") + "/healthz"
        self.interval = interval
        self.timeout = timeout
        self.result = Latencies()
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthProbe:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE, self.url, str(self.interval), str(self.timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._proc.stdout is not None and self._proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *_exc: Any) -> None:
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        out = self._proc.stdout.read()
        self._proc.wait(self.timeout + 10)
        data = json.loads(out.strip().splitlines()[-1])
        self.result = Latencies(data["samples"], data["failures"])


# A second process taking SQLite's write lock (BEGIN IMMEDIATE) and keeping it `seconds`.
_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""


@contextlib.contextmanager
def write_lock_held(db_file: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the database's write lock for `seconds` from the moment this enters."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db_file), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def http_browser(base_url: str, timeout: float = 90.0) -> Browser:
    """A `Browser` (cookies, CSRF tokens) speaking real HTTP to a web UI process."""
    return Browser(httpx.Client(base_url=base_url, timeout=timeout))


@dataclass
class Outcome:
    status: int = 0
    seconds: float = 0.0
    error: str = ""


def in_threads(calls: list[Callable[[], httpx.Response]]) -> list[Outcome]:
    """Run every call at once, each in its own thread; their status codes and durations."""
    outcomes = [Outcome() for _ in calls]

    def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            outcomes[i].status = calls[i]().status_code
        except Exception as exc:  # the outcome says what went wrong; the test asserts on it
            outcomes[i].error = repr(exc)
        outcomes[i].seconds = time.perf_counter() - t0

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return outcomes
