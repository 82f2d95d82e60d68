"""Following deployments to their end (`deploy --wait`, `redeploy --wait`, `reboot --wait`,
`pisctl wait`): one progress bar per node with its step in words; exit 1 when any node did not
reach `deployed`."""

from __future__ import annotations

import sys
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from piseduce.client import models as m
from piseduce.client.cli import output
from piseduce.client.errors import DeploymentFailed
from piseduce.client.sync import Client
from piseduce.client.waiting import settled


class Bars:
    """One bar per node on a terminal; one line per change elsewhere (a CI log)."""

    def __init__(self, quiet: bool) -> None:
        self.live = not quiet and sys.stderr.isatty()
        self.quiet = quiet
        self.tasks: dict[str, TaskID] = {}
        self.last: dict[str, tuple[str, str, str]] = {}
        self.progress = Progress(
            TextColumn("{task.fields[node]:<24}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[words]}"),
            TimeElapsedColumn(),
            console=output.err,
        )

    def __enter__(self) -> Bars:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *_: Any) -> None:
        if self.live:
            self.progress.stop()

    def update(self, current: list[m.Reservation]) -> None:
        for r in current:
            words = r.status + (f" · {r.step_words}" if r.step_words and r.status == m.DEPLOYING else "")
            if r.status == m.FAILED and r.error:
                words += f": {r.error}"
            done = 100.0 if r.status == m.DEPLOYED and settled(r) else (r.progress or 0) * 100
            if self.live:
                if r.key not in self.tasks:
                    self.tasks[r.key] = self.progress.add_task(
                        "", total=100, node=f"{r.node} ({r.agent})", words=""
                    )
                self.progress.update(self.tasks[r.key], completed=done, words=words)
            elif not self.quiet and self.last.get(r.key) != (r.status, r.step_words, f"{done:.0f}"):
                self.last[r.key] = (r.status, r.step_words, f"{done:.0f}")
                output.say(f"{r.node} ({r.agent}): {words} {done:.0f}%")


def follow(api: Client, keys: list[str], timeout: float, json_out: bool) -> None:
    try:
        with Bars(quiet=json_out) as bars:
            done = api.wait_deployed(keys, timeout=timeout, on_progress=bars.update)
    except DeploymentFailed as exc:
        if json_out:
            output.print_json([*exc.done, *exc.failed])
        raise
    if json_out:
        output.print_json(done)
        return
    for r in done:
        ssh = r.connection.command if r.connection else ""
        output.say(f"deployed: {r.key} ({r.node})" + (f"  {ssh}" if ssh else ""))
