"""OAR as users write for it, in the Grid'5000 emulator (on a fake clock): `+`-joined resource
groups, hierarchies down to cores (nodes shared between jobs), the besteffort queue, the day and
night job types, and walltime increases that stay pending while the next job blocks them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from helpers.g5k_fixtures import USERS
from piseduce.sim.g5k import oar, windows
from piseduce.sim.g5k.model import G5kSim
from piseduce.sim.g5k.records import SimError
from piseduce.sim.g5k.resources import ALL, BEST, Level, parse_request

PARIS = oar.SITE_TZ


class Clock:
    def __init__(self, when: dt.datetime) -> None:
        self.t = when.timestamp()

    def __call__(self) -> float:
        return self.t


def tuesday(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 3, 5, hour, minute, tzinfo=PARIS)  # a Tuesday


def make_sim(clock: Clock) -> G5kSim:
    return G5kSim("nancy", [("grisou", 3), ("gros", 2)], dict(USERS), clock=clock)


def job(resources: str, **extra: Any) -> dict[str, Any]:
    return {"resources": resources, "command": "sleep 3600", **extra}


def test_resource_requests_parse_as_oarsub_reads_them() -> None:
    spec = parse_request("{cluster='gros'}/nodes=1+{cluster='grisou'}/nodes=2,walltime=2:30")
    assert spec.walltime == 9000 and [g.filter for g in spec.groups] == ["cluster='gros'", "cluster='grisou'"]
    assert [g.levels for g in spec.groups] == [[Level("host", 1)], [Level("host", 2)]]
    assert parse_request("/cluster=1/nodes=2").groups[0].levels == [Level("cluster", 1), Level("host", 2)]
    assert parse_request("/nodes=1/core=2").groups[0].levels == [Level("host", 1), Level("core", 2)]
    assert parse_request("core=4,walltime=1").groups[0].levels == [Level("core", 4)]
    assert parse_request("/switch=1/nodes=ALL").groups[0].levels == [Level("switch", 1), Level("host", ALL)]
    assert parse_request("host=BEST").groups[0].levels == [Level("host", BEST)]
    # a comma or a plus inside the SQL filter belongs to the filter
    spec = parse_request("{host in ('a','b') and x='1+2'}/nodes=2,walltime=1")
    assert spec.groups[0].filter == "host in ('a','b') and x='1+2'"
    for bad in ("/core=2/nodes=1", "gpus=1", "nodes=0", "{cluster='x'/nodes=1", "nodes=1,walltime=1:99"):
        with pytest.raises(oar.OarSyntaxError):
            parse_request(bad)


def test_plus_joined_groups_and_hierarchies() -> None:
    clock = Clock(tuesday(10))
    sim = make_sim(clock)
    both = sim.submit_job("alice", job("{cluster='gros'}/nodes=1+{cluster='grisou'}/nodes=2,walltime=1"))
    assert [h.split(".")[0] for h in both.hosts] == ["grisou-1", "grisou-2", "gros-1"]
    # one cluster with two free nodes: grisou has one left, gros one: refused for now, queued
    later = sim.submit_job("alice", job("/cluster=1/nodes=2,walltime=1"))
    assert sim.job_state(later) == "waiting" and len({h.split("-")[0] for h in later.hosts}) == 1
    # the whole of one cluster, the cluster's every node
    sim2 = make_sim(Clock(tuesday(10)))
    whole = sim2.submit_job("alice", job("/cluster=1,walltime=1"))
    assert len(whole.hosts) in (2, 3) and len({h.split("-")[0] for h in whole.hosts}) == 1
    with pytest.raises(SimError) as err:
        sim2.submit_job("alice", job("{cluster='nope'}/nodes=1"))
    assert err.value.status == 400 and "not enough resources" in err.value.message


def test_cores_share_a_node_but_deploy_jobs_take_whole_nodes() -> None:
    clock = Clock(tuesday(10))
    sim = make_sim(clock)
    a = sim.submit_job("alice", job("{host='grisou-1.nancy.grid5000.fr'}/nodes=1/core=4,walltime=1"))
    b = sim.submit_job("bob", job("{host='grisou-1.nancy.grid5000.fr'}/core=12,walltime=1"))
    assert a.cores == {"grisou-1.nancy.grid5000.fr": 4} and b.cores == {"grisou-1.nancy.grid5000.fr": 12}
    assert sim.job_state(a) == sim.job_state(b) == "launching"  # both at once: 16 cores
    c = sim.submit_job("bob", job("{host='grisou-1.nancy.grid5000.fr'}/core=1,walltime=1"))
    assert sim.job_state(c) == "waiting"  # the node is full
    item = sim.job_item(a, details=True)
    assert item["resources_by_type"]["cores"] == [f"grisou-1.nancy.grid5000.fr/{i}" for i in range(4)]
    status = sim.status()["nodes"]["grisou-1.nancy.grid5000.fr"]
    clock.t += 60
    status = sim.status()["nodes"]["grisou-1.nancy.grid5000.fr"]
    assert (status["soft"], status["busy_slots"], status["free_slots"]) == ("busy", 16, 0)
    # cores spread over several nodes when one is not enough: 16 free on grisou-2, 4 on grisou-3
    spread = sim.submit_job("alice", job("{cluster='grisou'}/core=20,walltime=1"))
    assert sum(spread.cores.values()) == 20 and len(spread.cores) == 2
    # a deploy job cannot take part of a node, and a whole node waits for the cores to free
    with pytest.raises(SimError) as err:
        sim.submit_job("alice", job("core=2", types=["deploy"]))
    assert "whole nodes" in err.value.message
    dep = sim.submit_job("alice", job("{host='grisou-1.nancy.grid5000.fr'}/nodes=1", types=["deploy"]))
    assert sim.job_state(dep) == "waiting" and dep.start_at >= b.stop_at(sim.launch, sim.kill)


def test_status_counts_cores_with_g5k_apis_soft_states() -> None:
    clock = Clock(tuesday(10))
    sim = make_sim(clock)
    g3 = "{host='grisou-3.nancy.grid5000.fr'}"
    sim.submit_job("alice", job(f"{g3}/core=4,walltime=1"))
    sim.submit_job("bob", job(f"{g3}/core=6,walltime=1", queue="besteffort"))
    sim.submit_job("bob", job("{host='gros-1.nancy.grid5000.fr'}/core=2,walltime=1", queue="besteffort"))
    clock.t += 60
    nodes = sim.status()["nodes"]

    def slots(name: str) -> tuple[str, int, int, int]:
        n = nodes[f"{name}.nancy.grid5000.fr"]
        return n["soft"], n["busy_slots"], n["freeable_slots"], n["free_slots"]

    assert slots("grisou-3") == ("busy_free_besteffort", 4, 6, 6)
    assert slots("gros-1") == ("free_busy_besteffort", 0, 2, 16)
    assert slots("grisou-1") == ("free", 0, 0, 16)
    sim.submit_job("carol", job("{host='grisou-1.nancy.grid5000.fr'}/core=3,walltime=1"))
    clock.t += 60
    assert sim.status()["nodes"]["grisou-1.nancy.grid5000.fr"]["soft"] == "free_busy"


def test_besteffort_jobs_give_way_and_are_killed() -> None:
    clock = Clock(tuesday(10))
    sim = make_sim(clock)
    be = sim.submit_job("bob", job("{cluster='gros'}/nodes=ALL,walltime=10", queue="besteffort"))
    typed = sim.submit_job("bob", job("{cluster='grisou'}/nodes=1,walltime=10", types=["besteffort"]))
    assert be.queue == "besteffort" and typed.queue == "besteffort" and len(be.hosts) == 2
    clock.t += 60
    assert sim.job_state(be) == "running"
    node = sim.status()["nodes"]["gros-1.nancy.grid5000.fr"]
    assert node["soft"] == "busy_besteffort" and node["freeable_slots"] == 18
    # a default job needing gros-1 starts now: the besteffort job is killed for it
    need = sim.submit_job("alice", job("{host='gros-1.nancy.grid5000.fr'}/nodes=1,walltime=1"))
    assert need.start_at == clock.t and sim.job_state(need) == "launching"
    assert be.preempted_by == need.uid
    clock.t += 10
    item = sim.job_item(be, details=False)
    assert item["state"] == "error" and [e["type"] for e in item["events"]] == ["BESTEFFORT_KILL"]
    # a besteffort job never blocks: it waits for free nodes itself, and is no advance reservation
    gros1 = "{host='gros-1.nancy.grid5000.fr'}/nodes=1,walltime=1"
    again = sim.submit_job("bob", job(gros1, queue="besteffort"))
    assert again.start_at >= need.stop_at(sim.launch, sim.kill)
    with pytest.raises(SimError) as err:
        sim.submit_job("bob", job("nodes=1", queue="besteffort", reservation="2024-03-06 10:00:00"))
    assert "besteffort job cannot be an advance reservation" in err.value.message
    # a job that is deleted before it starts kills nobody
    clock2 = Clock(tuesday(10))
    sim2 = make_sim(clock2)
    be2 = sim2.submit_job("bob", job("{cluster='gros'}/nodes=1,walltime=10", queue="besteffort"))
    soon = sim2.submit_job("alice", job("{host='gros-1.nancy.grid5000.fr'}/nodes=1,walltime=1",
                                        reservation="2024-03-05 12:00:00"))
    assert be2.preempted_by == soon.uid
    sim2.delete_job("alice", soon.uid)
    clock2.t += 3 * 3600
    assert be2.preempted_at is None and sim2.job_state(be2) == "running"


def test_day_and_night_jobs_wait_for_their_period() -> None:
    clock = Clock(tuesday(10))
    sim = make_sim(clock)
    night = sim.submit_job("alice", job("nodes=1,walltime=8", types=["night"]))
    start = dt.datetime.fromtimestamp(night.start_at, PARIS)
    assert (start.date(), start.hour) == (tuesday(0).date(), 19) and sim.job_state(night) == "waiting"
    day = sim.submit_job("alice", job("nodes=1,walltime=2", types=["day"]))
    assert day.start_at == clock.t  # 10:00 + 2 h ends before 19:00
    late = sim.submit_job("alice", job("nodes=1,walltime=9:30", types=["day"]))
    when = dt.datetime.fromtimestamp(late.start_at, PARIS)
    assert (when.day, when.hour) == (6, 9)  # does not fit before 19:00: Wednesday 09:00
    # a Friday-evening night job may last the week-end; no period holds more
    weekend = windows.fit("night", dt.datetime(2024, 3, 8, 20, tzinfo=PARIS).timestamp(), 50 * 3600)
    assert weekend == dt.datetime(2024, 3, 8, 20, tzinfo=PARIS).timestamp()
    with pytest.raises(SimError) as err:
        sim.submit_job("alice", job("nodes=1,walltime=11", types=["day"]))
    assert "a day job lasts at most 10 h" in err.value.message
    with pytest.raises(SimError) as err:
        sim.submit_job("alice", job("nodes=1,walltime=1", types=["day", "night"]))
    assert "both types day and night" in err.value.message
    with pytest.raises(SimError) as err:
        sim.submit_job("alice", job("nodes=1,walltime=3", types=["night"],
                                    reservation="2024-03-05 17:00:00"))
    assert "REJECTED" in err.value.message and "night period" in err.value.message
    ok = sim.submit_job("alice", job("nodes=1,walltime=3", types=["night"],
                                     reservation="2024-03-05 20:00:00"))
    assert ok.reservation


def test_walltime_increase_pending_then_granted_or_delaying_next_jobs() -> None:
    clock = Clock(tuesday(10))
    sim = make_sim(clock)
    host = "{host='grisou-1.nancy.grid5000.fr'}/nodes=1"
    mine = sim.submit_job("alice", job(f"{host},walltime=1"))
    nxt = sim.submit_job("bob", job(f"{host},walltime=1"))  # queued right after mine
    clock.t += 60
    assert sim.job_state(nxt) == "waiting"
    sim.change_walltime("alice", mine.uid, {"walltime": "+1:00"})
    item = sim.walltime_item(mine.uid)
    assert (item["pending"], item["granted"], mine.walltime) == ("+1:0:0", "+0:0:0", 3600)
    # with delay_next_jobs, OAR pushes bob's waiting job back and grants the increase at once
    sim.change_walltime("alice", mine.uid, {"walltime": "+1:00", "delay_next_jobs": True})
    item = sim.walltime_item(mine.uid)
    assert (item["pending"], item["granted"], item["delay_next_jobs"]) == ("+0:0:0", "+1:0:0", "YES")
    assert nxt.start_at >= mine.natural_end(sim.launch)
    # an advance reservation keeps its date: the increase stays pending until the job ends
    res = sim.add_foreign_job("carol", ["grisou-1"], mine.natural_end(sim.launch) + 600, 3600, "fixed")
    sim.change_walltime("alice", mine.uid, {"walltime": "+2:00", "delay_next_jobs": True})
    assert sim.walltime_item(mine.uid)["pending"] == "+2:0:0" and res.start_at > mine.natural_end(sim.launch)
    clock.t = mine.natural_end(sim.launch) + 1
    assert sim.job_state(mine) == "terminated" and sim.walltime_item(mine.uid)["pending"] == "+0:0:0"
