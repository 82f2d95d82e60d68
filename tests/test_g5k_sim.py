"""The Grid'5000 API emulator: OAR syntax, job and deployment state progressions (with a fake
clock), and the HTTP surface (auth, media types, collections, faults), including python-grid5000
used unchanged against it and the `piseduce sim g5k` command."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.g5k_fixtures import USERS, Emulator
from piseduce.sim.g5k import oar
from piseduce.sim.g5k.model import G5kSim
from piseduce.sim.g5k.records import Faults, SimError

ALICE = ("alice", USERS["alice"])
G1 = "grisou-1.nancy.grid5000.fr"
G2 = "grisou-2.nancy.grid5000.fr"


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def make_sim(clock: Clock, **kw: object) -> G5kSim:
    return G5kSim("nancy", [("grisou", 3), ("gros", 2)], dict(USERS), clock=clock, dead=["gros-2"], **kw)  # type: ignore[arg-type]


def job_payload(host: str = G1, **extra: object) -> dict[str, Any]:
    return {
        "name": "t",
        "resources": "nodes=1,walltime=1:00",
        "types": ["deploy"],
        "properties": f"host in ('{host}')",
        "command": "sleep infinity",
        **extra,
    }


# ---------------------------------------------------------------- OAR syntax


def test_oar_walltimes_and_resources() -> None:
    assert oar.parse_walltime("2") == 7200
    assert oar.parse_walltime("1:30") == 5400
    assert oar.parse_walltime("30:00:05") == 108005
    for bad in ("", "1:75", "abc", "0:00"):
        with pytest.raises(oar.OarSyntaxError):
            oar.parse_walltime(bad)
    assert oar.parse_walltime_delta("+1:30") == ("+", 5400)
    assert oar.parse_walltime_delta("-0:10") == ("-", 600)
    req = oar.parse_resources("{cluster='grisou'}/nodes=2,walltime=2:00")
    assert (req.nodes, req.walltime, req.filter) == (2, 7200, "cluster='grisou'")
    assert oar.parse_resources("nodes=ALL").nodes is None
    assert oar.parse_resources(None).walltime == oar.DEFAULT_WALLTIME
    with pytest.raises(oar.OarSyntaxError):
        oar.parse_resources("cores=banana")


def test_oar_properties_subset_of_sql() -> None:
    known = {"host", "cluster", "memnode"}
    p = oar.parse_properties("host in ('a.x', 'b.x') and not cluster = 'gros'", known)
    assert p({"host": "a.x", "cluster": "grisou"})
    assert not p({"host": "a.x", "cluster": "gros"})
    assert not p({"host": "c.x", "cluster": "grisou"})
    q = oar.parse_properties("(cluster='gros' OR memnode >= 100000) AND host LIKE 'gr%'", known)
    assert q({"cluster": "grisou", "memnode": 131072.0, "host": "grisou-1"})
    assert not q({"cluster": "grisou", "memnode": 1024.0, "host": "grisou-1"})
    assert oar.parse_properties("host = 'it''s'", known)({"host": "it's"})
    for bad in ("host in ('a'", "bogus = 1", "host = ", "host in ('a') junk"):
        with pytest.raises(oar.OarSyntaxError):
            oar.parse_properties(bad, known)


def test_reservation_dates_are_paris_local_time() -> None:
    # 14:00 in Paris in July is 12:00 UTC (CEST), in January 13:00 UTC (CET).
    summer = oar.parse_reservation("2024-07-01 14:00:00", now=0)
    winter = oar.parse_reservation("2024-01-15 14:00", now=0)
    assert dt.datetime.fromtimestamp(summer, dt.UTC) == dt.datetime(2024, 7, 1, 12, 0, tzinfo=dt.UTC)
    assert dt.datetime.fromtimestamp(winter, dt.UTC) == dt.datetime(2024, 1, 15, 13, 0, tzinfo=dt.UTC)
    assert oar.parse_reservation("now", now=42.0) == 42.0
    with pytest.raises(oar.OarSyntaxError):
        oar.parse_reservation("tomorrow", now=0)


# ---------------------------------------------------------------- the model, on a fake clock


def test_job_progression_waiting_launching_running_terminated() -> None:
    clock = Clock()
    sim = make_sim(clock)
    job = sim.submit_job("alice", job_payload(reservation=_paris(clock.t + 600)))
    assert job.hosts == [G1] and job.reservation and job.walltime == 3600
    assert sim.job_state(job) == "waiting"
    clock.t += 600
    assert sim.job_state(job) == "launching"
    clock.t += 10
    assert sim.job_state(job) == "running"
    item = sim.job_item(job, details=True)
    assert item["assigned_nodes"] == [G1] and item["started_at"] > 0
    clock.t += 3600
    assert sim.job_state(job) == "terminated"
    assert "stopped_at" in sim.job_item(job, details=False)


def test_advance_reservation_refused_when_hosts_are_taken() -> None:
    clock = Clock()
    sim = make_sim(clock)
    sim.add_foreign_job("bob", ["grisou-1"], clock.t + 1000, 7200, "bob's")
    with pytest.raises(SimError) as err:
        sim.submit_job("alice", job_payload(reservation=_paris(clock.t + 1800)))
    assert err.value.status == 400 and "REJECTED" in err.value.message
    # An immediate job of the same host is queued behind bob's job, not refused.
    job = sim.submit_job("alice", job_payload(resources="nodes=1,walltime=0:10"))
    assert sim.job_state(job) == "launching"  # it fits before bob's reservation
    later = sim.submit_job("alice", job_payload(resources="nodes=1,walltime=2:00"))
    assert sim.job_state(later) == "waiting" and later.start_at > clock.t + 1000


def test_job_admission_errors() -> None:
    sim = make_sim(Clock())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"resources": "nodes=1"}, "you must give a :command"),
        (job_payload(properties="host in ('nowhere.nancy.grid5000.fr')"), "not enough resources"),
        (job_payload(properties="color = 'red'"), "unknown resource property"),
        (job_payload(host="gros-2.nancy.grid5000.fr"), "not enough resources"),  # dead
        (job_payload(resources="nodes=4,walltime=1"), "not enough resources"),
        (job_payload(reservation="2001-01-01 10:00:00"), "in the past"),
    ]
    for payload, text in cases:
        with pytest.raises(SimError) as err:
            sim.submit_job("alice", payload)
        assert err.value.status == 400 and text in err.value.message, payload


def test_delete_then_error_and_already_killed() -> None:
    clock = Clock()
    sim = make_sim(clock)
    job = sim.submit_job("alice", job_payload())
    with pytest.raises(SimError) as err:
        sim.delete_job("bob", job.uid)
    assert err.value.status == 403
    sim.delete_job("alice", job.uid)
    clock.t += 5
    assert sim.job_state(job) == "error"
    with pytest.raises(SimError) as err:
        sim.delete_job("alice", job.uid)
    assert "already killed" in err.value.message
    # The host is free again.
    again = sim.submit_job("alice", job_payload())
    assert again.start_at == clock.t


def test_walltime_change_rules() -> None:
    clock = Clock()
    sim = make_sim(clock)
    job = sim.submit_job("alice", job_payload(reservation=_paris(clock.t + 600)))
    with pytest.raises(SimError) as err:
        sim.change_walltime("alice", job.uid, {"walltime": "+1:00"})
    assert err.value.status == 403 and "not running" in err.value.message
    clock.t += 700
    # Alice's job ends 3508 s from now; Bob's starts 5000 s from now.
    bob = sim.add_foreign_job("bob", ["grisou-1"], clock.t + 5000, 3600, "next")
    answer = sim.change_walltime("alice", job.uid, {"walltime": "+0:10"})
    assert answer["status"] == "Accepted" and job.walltime == 4200
    assert sim.walltime_item(job.uid)["granted"] == "+0:10:0"
    # Two more hours would run into Bob's job: OAR accepts the request and keeps it pending.
    answer = sim.change_walltime("alice", job.uid, {"walltime": "+2:00"})
    assert answer["status"] == "Accepted" and answer["walltime"] == "+2:0:0" and job.walltime == 4200
    item = sim.walltime_item(job.uid)
    assert (item["pending"], item["granted"], item["walltime"]) == ("+2:0:0", "+0:10:0", "1:10:0")
    clock.t += 600
    assert sim.walltime_item(job.uid)["pending"] == "+2:0:0"  # still blocked
    # Bob deletes his job: the pending increase is granted at OAR's next pass.
    sim.delete_job("bob", bob.uid)
    item = sim.walltime_item(job.uid)
    assert (item["pending"], item["granted"], job.walltime) == ("+0:0:0", "+2:10:0", 4200 + 7200)
    # A shortening is always granted at once.
    sim.change_walltime("alice", job.uid, {"walltime": "-1:00"})
    assert job.walltime == 4200 + 3600 and sim.walltime_item(job.uid)["pending"] == "+0:0:0"


def test_kadeploy_progression_rights_and_faults() -> None:
    clock = Clock()
    sim = make_sim(clock, faults=Faults(ko_nodes={"grisou-2"}))
    j1 = sim.submit_job("alice", job_payload(G1))
    with pytest.raises(SimError) as err:
        sim.submit_deployment("alice", {"nodes": [G1], "environment": "debian12-min"}, "http://x/files")
    assert err.value.status == 500 and "deployment rights" in err.value.message
    clock.t += 20
    assert sim.job_state(j1) == "running"
    with pytest.raises(SimError) as err:
        sim.submit_deployment("alice", {"nodes": [G1], "environment": "windows95"}, "http://x/files")
    assert "does not exist" in err.value.message
    with pytest.raises(SimError) as err:
        sim.submit_deployment("bob", {"nodes": [G1], "environment": "debian12-min"}, "http://x/files")
    assert "deployment rights" in err.value.message
    sim.submit_job("alice", job_payload(G2))
    clock.t += 20
    dep = sim.submit_deployment(
        "alice",
        {"nodes": [G1, G2], "environment": "debian12-x64-min", "key": "ssh-ed25519 AAAA me"},
        "http://x/f",
    )
    assert sim.deployment_status(dep) == "waiting"
    assert sim.deployment_item(dep)["key"].startswith("http://x/f/alice-key-")
    clock.t += 10
    assert sim.deployment_status(dep) == "processing"
    clock.t += 300
    item = sim.deployment_item(dep)
    assert item["status"] == "terminated"
    assert item["result"][G1]["state"] == "OK" and item["result"][G2]["state"] == "KO"
    sim.faults.deploy_error = "disk failure"
    dep2 = sim.submit_deployment("alice", {"nodes": [G1], "environment": "debian12-min"}, "http://x/f")
    clock.t += 400
    item = sim.deployment_item(dep2)
    assert item["status"] == "error" and "disk failure" in item["output"]


def _paris(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, oar.SITE_TZ).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- HTTP


def test_http_basic_auth(g5k_emulator: Emulator) -> None:
    url = f"{g5k_emulator.url}/sites"
    assert httpx.get(url).status_code == 401
    r = httpx.get(url, auth=("alice", "wrong"))
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    assert httpx.get(url, auth=("mallory", "x")).status_code == 401
    assert httpx.get(url, auth=ALICE).status_code == 200


def test_media_types_and_collection_shape(g5k_emulator: Emulator) -> None:
    base = f"{g5k_emulator.url}/sites/nancy"
    r = httpx.get(
        f"{base}/clusters", auth=ALICE, headers={"Accept": "application/vnd.grid5000.collection+json"}
    )
    assert r.headers["content-type"].startswith("application/vnd.grid5000.collection+json")
    body = r.json()
    assert set(body) == {"total", "offset", "items", "links"} and body["total"] == 2
    assert body["links"][0] == {
        "rel": "self",
        "href": "/stable/sites/nancy/clusters",
        "type": "application/vnd.grid5000.collection+json",
    }
    r = httpx.get(
        f"{base}/clusters/grisou/nodes/grisou-1", auth=ALICE, headers={"Accept": "application/json"}
    )
    assert r.headers["content-type"].startswith("application/json")
    node = r.json()
    assert node["architecture"]["nb_threads"] == 32 and node["main_memory"]["ram_size"] == 128 * 1024**3
    assert node["chassis"]["name"] == "PowerEdge R630" and "default" in node["supported_job_types"]["queues"]
    assert node["network_adapters"][0]["network_address"] == G1
    assert httpx.get(f"{base}/clusters/nope", auth=ALICE).status_code == 404
    assert httpx.get(f"{g5k_emulator.url}/sites/rennes", auth=ALICE).status_code == 404


def test_jobs_over_http_with_filters_pagination_and_status(g5k_emulator: Emulator) -> None:
    base = f"{g5k_emulator.url}/sites/nancy"
    r = httpx.post(f"{base}/jobs", auth=ALICE, json=job_payload(G2))
    assert r.status_code == 201 and r.headers["location"].endswith(f"/jobs/{r.json()['uid']}")
    uid = r.json()["uid"]
    bob = g5k_emulator.foreign_job("bob", ["grisou-3"])
    bad = httpx.post(f"{base}/jobs", auth=ALICE, json=job_payload(properties="host in ('x')"))
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/plain")
    assert "not enough resources" in bad.text
    time.sleep(0.1)
    mine = httpx.get(f"{base}/jobs", auth=ALICE, params={"user": "alice", "state": "running"}).json()
    assert [j["uid"] for j in mine["items"]] == [uid] and "assigned_nodes" not in mine["items"][0]
    page = httpx.get(f"{base}/jobs", auth=ALICE, params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 2 and page["offset"] == 1 and len(page["items"]) == 1
    one = httpx.get(f"{base}/jobs/{uid}", auth=ALICE).json()
    assert one["assigned_nodes"] == [G2] and one["types"] == ["deploy"]
    status = httpx.get(f"{base}/status", auth=ALICE).json()
    g3 = status["nodes"]["grisou-3.nancy.grid5000.fr"]
    assert g3["soft"] == "busy" and g3["reservations"][0]["uid"] == bob
    assert g3["reservations"][0]["user_uid"] == "bob" and "scheduled_at" in g3["reservations"][0]
    assert status["nodes"]["gros-2.nancy.grid5000.fr"]["hard"] == "dead"
    assert status["nodes"]["grisou-4.nancy.grid5000.fr"] == {
        "hard": "alive",
        "soft": "free",
        "comment": "",
        "free_slots": 16,
        "freeable_slots": 0,
        "busy_slots": 0,
        "reservations": [],
    }
    # Another user cannot delete it; the owner can, and the job ends in error.
    assert httpx.delete(f"{base}/jobs/{uid}", auth=("bob", USERS["bob"])).status_code == 403
    r = httpx.delete(f"{base}/jobs/{uid}", auth=ALICE)
    assert r.status_code == 202 and "X-Oar-Info" in r.headers
    time.sleep(0.1)
    assert httpx.get(f"{base}/jobs/{uid}", auth=ALICE).json()["state"] == "error"
    assert httpx.delete(f"{base}/jobs/{uid}", auth=ALICE).status_code == 400
    assert httpx.get(f"{base}/jobs/999", auth=ALICE).status_code == 404


def test_fault_knobs(g5k_emulator: Emulator) -> None:
    url = f"{g5k_emulator.url}/sites/nancy"
    g5k_emulator.faults(fail_next=2)
    codes = [httpx.get(url, auth=ALICE).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    g5k_emulator.faults(latency=0.2)
    t0 = time.monotonic()
    httpx.get(url, auth=ALICE)
    assert time.monotonic() - t0 >= 0.2
    g5k_emulator.faults(latency=0, error_rate=1.0)
    assert httpx.get(url, auth=ALICE).status_code == 503
    assert httpx.post(f"{g5k_emulator.root}/_sim/faults", json={"error_rate": 7}).status_code == 400
    assert httpx.post(f"{g5k_emulator.root}/_sim/faults", json={"bogus": 1}).status_code == 400


def test_python_grid5000_unchanged_against_the_emulator(g5k_emulator: Emulator) -> None:
    """The official client lists sites, clusters, nodes, status and jobs, submits a deploy job,
    deploys, extends and deletes it — against the emulator, without any patch."""
    from grid5000 import Grid5000, Grid5000AuthenticationError

    gk = Grid5000(uri=g5k_emulator.url, username="alice", password=USERS["alice"])
    assert [s.uid for s in gk.sites.list()] == ["nancy"]
    site = gk.sites["nancy"]
    assert sorted(c.uid for c in site.clusters.list()) == ["grisou", "gros"]
    nodes = site.clusters["grisou"].nodes.list()
    assert [n.uid for n in nodes] == ["grisou-1", "grisou-2", "grisou-3", "grisou-4"]
    assert nodes[0].architecture["nb_threads"] == 32
    status = site.status.list()
    assert status.nodes[G1]["hard"] == "alive"
    assert "debian12-min" in {e.name for e in site.environments.list()}
    job = site.jobs.create(job_payload(G1, name="from-python-grid5000"))
    assert job.uid and job.assigned_nodes == [G1]
    deadline = time.monotonic() + 5
    while job.state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
        job.refresh()
    assert [j.uid for j in site.jobs.list(state="running", user="alice")] == [job.uid]
    dep = site.deployments.create({"nodes": job.assigned_nodes, "environment": "debian12-min"})
    deadline = time.monotonic() + 10
    while dep.status in ("waiting", "processing"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
        dep.refresh()
    assert dep.status == "terminated" and dep.result[G1]["state"] == "OK"
    job.walltime_change.create({"walltime": "+0:30"})
    assert job.walltime_change.get().walltime == "1:30:0"
    job.delete()
    time.sleep(0.1)
    job.refresh()
    assert job.state == "error"
    with pytest.raises(Grid5000AuthenticationError):
        Grid5000(uri=g5k_emulator.url, username="alice", password="nope").sites.list()


def test_sim_command_serves_the_api(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# login:password\nalice:pw-of-alice\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from piseduce.cli import main; main()",
            "sim",
            "g5k",
            "--site",
            "lyon",
            "--port",
            "0",
            "--users-file",
            str(users),
            "--time-scale",
            "50",
            "--clusters",
            "nova:2",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/stable)", line)
        assert m, line
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.get(f"{m.group(1)}/sites/lyon/clusters/nova/nodes", auth=("alice", "pw-of-alice"))
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200 and [n["uid"] for n in r.json()["items"]] == ["nova-1", "nova-2"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
