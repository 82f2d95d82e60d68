"""The reliability run of issue 11: a soak on loopback, bounded in time.

20 simulated Raspberry Pis (the Pi simulator's in-process boards: see tests/soak_site.py for why)
and a Grid'5000 emulator; a raspberry agent and a g5k agent, API and executor as separate
processes started like `piseduce demo` starts them. 10 users book 200 reservations through the
agents' HTTP API with their own identities (Pis and g5k nodes, one or two at a time, now or a
little later; slots of 70-120 s on Pis, 25-50 s on g5k nodes), send the deploy form, watch them,
give some back early. Meanwhile the executors are killed -9 at 10 random moments and the APIs 5
times (each restarted at once), the switch loses 5 % of SNMP requests and the boards drop 5 % of SSH sessions.

Printed: reservations attempted / deployed / failed with a reason / stuck / lost, orphan remote
jobs, double bookings, the kills. Stuck, lost, orphans and double bookings must be 0 and every
failure must have its reason (the figures say "ok" or "VIOLATED" against those targets; the slow
test tests/test_soak.py asserts them on a shorter run).

    python bench/bench_soak.py [--minutes 10] [--reservations 200] [--keep DIR] [--board-mode real]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.soak_load import LoadOptions  # noqa: E402
from helpers.soak_run import SoakResult, soak  # noqa: E402
from helpers.soak_site import SiteOptions  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from results import emit  # noqa: E402

STARTUP_S = 45.0  # the site's start (image, simulators, agents), within --minutes
SETTLE_S = 180.0  # after the load: the last slots (up to 120 s) end and their destroys run


def verdicts(result: SoakResult) -> list[str]:
    f = result.figures
    checks = {
        "stuck 0": not f.stuck,
        "lost 0": not f.lost,
        "every failure has a reason": not f.failed_without_reason,
        "orphan remote jobs 0": not f.orphan_jobs,
        "double bookings 0": not f.double_bookings,
        "no 5xx": not result.ledger.server_errors,
        "no process stopped on its own": result.dead is None,
    }
    return [f"  {'ok      ' if good else 'VIOLATED'} {what}" for what, good in checks.items()]


def record(result: SoakResult, reservations: int) -> bool:
    """The invariants as figures for the closing table (each target 0); True when all hold."""
    f = result.figures
    size = f"{reservations} reservations"
    counts = {
        "stuck": len(f.stuck),
        "lost": len(f.lost),
        "failures without a reason": len(f.failed_without_reason),
        "orphan remote jobs": len(f.orphan_jobs),
        "double bookings": len(f.double_bookings),
        "5xx answers": len(result.ledger.server_errors),
        "processes stopped on their own": 0 if result.dead is None else 1,
    }
    rows = [emit(f"soak: {what}", size, n, "", 0) for what, n in counts.items()]
    emit("soak: deployed", size, f.deployed, "", None)
    return all(r.verdict == "OK" for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="the whole run's bound (start, load, settle)")
    p.add_argument("--reservations", type=int, default=200)
    p.add_argument("--boards", type=int, default=20)
    p.add_argument("--executor-kills", type=int, default=10)
    p.add_argument("--api-kills", type=int, default=5)
    p.add_argument("--board-mode", choices=["in-process", "real"], default="in-process")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--keep", type=Path, help="keep the run's folder (logs, databases) here")
    a = p.parse_args()
    load_s = max(60.0, a.minutes * 60 - STARTUP_S - SETTLE_S)
    site = SiteOptions(boards=a.boards, board_mode=a.board_mode, seed=a.seed)
    load = LoadOptions(reservations=a.reservations, seconds=load_s, executor_kills=a.executor_kills,
                       api_kills=a.api_kills, seed=a.seed)
    print(f"soak: {a.reservations} reservations by {site.users} users within {load_s:.0f} s of load, "
          f"{a.executor_kills} executor and {a.api_kills} API kills, {site.snmp_loss:.0%} SNMP loss, "
          f"{site.ssh_drop_rate:.0%} SSH drops", flush=True)
    if a.keep:
        a.keep.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(soak(a.keep.resolve(), site, load, SETTLE_S, progress=True))
    else:
        with tempfile.TemporaryDirectory(prefix="piseduce-soak-") as tmp:
            result = asyncio.run(soak(Path(tmp), site, load, SETTLE_S, progress=True))
    for line in result.lines():
        print(line)
    print("invariants:")
    for line in verdicts(result):
        print(line)
    for line in result.details():
        print("  " + line)
    return 0 if record(result, a.reservations) else 1


if __name__ == "__main__":
    sys.exit(main())
