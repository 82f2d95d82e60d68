"""Issue 11's reliability run, short: the soak of bench/bench_soak.py with smaller numbers (10 Pis,
6 Grid'5000 nodes, 5 users, 40 reservations in about 75 s of load, 4 executor and 2 API kills,
5 % SNMP loss and 5 % SSH drops). Its invariants are correctness, not timing: nothing stuck,
nothing lost, every failure with its reason, no orphan OAR job, no double booking, no 5xx."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helpers.soak_load import LoadOptions
from helpers.soak_run import soak
from helpers.soak_site import SiteOptions

pytestmark = pytest.mark.slow


def test_soak_with_kills_and_lossy_links_loses_nothing(tmp_path: Path) -> None:
    site = SiteOptions(boards=10, g5k_clusters="grisou:4,gros:2", users=5, seed=5)
    load = LoadOptions(reservations=40, seconds=75, pi_slot_s=(30, 50), g5k_slot_s=(15, 30),
                       executor_kills=4, api_kills=2, seed=5)
    result = asyncio.run(soak(tmp_path / "soak", site, load, settle_s=110))
    figures, ledger = result.figures, result.ledger
    report = "\n".join(["", *result.lines(), *result.details()])
    print(report)

    # The run did what it says (a run that booked or killed nothing proves nothing).
    assert figures.accepted >= 30, report
    assert figures.in_databases == figures.accepted, report
    assert figures.deployed >= 10, report
    assert result.kills == {"exec kill -9": 4, "api kill -9": 2}, report
    assert figures.samples >= 20, report
    # The invariants.
    assert figures.stuck == [], report
    assert figures.lost == [], report
    assert figures.failed_without_reason == [], report
    assert ledger.refusal_without_reason == 0, report
    assert figures.orphan_jobs == set(), report
    assert figures.double_bookings == set(), report
    assert ledger.server_errors == [], report
    assert result.dead is None, report
