"""The benchmarks' common result format: each figure with its target, printed for people and, when
PISEDUCE_BENCH_RESULTS names a file, appended to it as one JSON line, which `./run bench` gathers
into one closing table (bench/table.py).

A figure meets its target when it is at most the target (`lower` is better: times, ratios) or at
least the target (`lower=False`: rates); its ratio is figure / target either way, with OK/OVER
saying which side of the target it is on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

RESULTS_ENV = "PISEDUCE_BENCH_RESULTS"


@dataclass(frozen=True)
class Result:
    bench: str  # the benchmark and what it measures: "engine sqlite: N nodes / 1 node"
    size: str  # the size it ran at: "1000 nodes"
    figure: float
    unit: str  # "x", "ms", "s", "MB/s"...
    target: float | None  # None: a figure printed for information, with no target
    lower: bool = True

    @property
    def ratio(self) -> float | None:
        if self.target is None or self.target == 0:
            return None
        return self.figure / self.target

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        ok = self.figure <= self.target if self.lower else self.figure >= self.target
        return "OK" if ok else "OVER"


def emit(
    bench: str, size: str, figure: float, unit: str, target: float | None, *, lower: bool = True
) -> Result:
    """Print one figure beside its target, and record it for the closing table."""
    r = Result(bench, size, figure, unit, target, lower)
    ratio = "" if r.ratio is None else f"   ratio {r.ratio:.2f}  {r.verdict}"
    target_text = "" if target is None else f"   target {'<=' if lower else '>='} {target:g} {unit}"
    print(f"  {bench} [{size}]: {figure:.3g} {unit}{target_text}{ratio}", flush=True)
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(r)) + "\n")
    return r


def load(path: str) -> list[Result]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(Result(**json.loads(line)))
    return rows
