"""The closing table of `./run bench`: every figure the benchmarks recorded (bench/results.py), one
row each — benchmark, size, figure, target, ratio, OK/OVER — then the benchmarks that failed.

    python bench/table.py RESULTS_FILE [FAILED_BENCH...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Result, load  # noqa: E402


def _num(value: float, unit: str) -> str:
    return f"{value:.3g} {unit}".strip()


def table(rows: list[Result]) -> str:
    head = ("benchmark", "size", "figure", "target", "ratio", "")
    cells = [
        (
            r.bench,
            r.size,
            _num(r.figure, r.unit),
            "-" if r.target is None else ("<= " if r.lower else ">= ") + _num(r.target, r.unit),
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *cells]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *cells]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    path, failed = sys.argv[1], sys.argv[2:]
    rows = load(path) if Path(path).exists() else []
    print(table(rows))
    over = sum(1 for r in rows if r.verdict == "OVER")
    print(f"\n{len(rows)} figures, {over} over their target")
    for name in failed:
        print(f"FAILED: {name} did not finish (see its output above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
