"""The Grid'5000 emulator against the field's own clients: python-grid5000 (every reference
collection it exposes, and OAR's syntax through it), curl on the documented routes, and EnOSlib's
G5k provider, which gets through job submission, waiting, the node descriptions and Kadeploy and
stops only where it needs SSH to a frontend that does not exist here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.constants import TESTS
from helpers.g5k_fixtures import USERS, Emulator

ALICE = ("alice", USERS["alice"])
NODE_KEYS = {"architecture", "bios", "bmc_version", "chassis", "exotic", "kavlan", "main_memory",
             "memory_devices", "network_adapters", "operating_system", "performance", "processor",
             "software", "storage_devices", "supported_job_types", "type", "uid"}


def client(emu: Emulator) -> Any:
    from grid5000 import Grid5000

    return Grid5000(uri=emu.url, username="alice", password=USERS["alice"])


def wait(obj: Any, attr: str, until: set[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while getattr(obj, attr) not in until:
        assert time.monotonic() < deadline, f"{attr} still {getattr(obj, attr)}"
        time.sleep(0.05)
        obj.refresh()


def test_node_descriptions_are_the_reference_repositorys(g5k_emulator: Emulator) -> None:
    site = client(g5k_emulator).sites["nancy"]
    one, two = (site.clusters["grisou"].nodes[f"grisou-{i}"] for i in (1, 2))
    for node in (one, two):
        data = node.to_dict() if hasattr(node, "to_dict") else node.__dict__["_attrs"]
        assert set(data) >= NODE_KEYS, NODE_KEYS - set(data)
        assert {"clock_speed", "microarchitecture", "version", "model", "vendor"} <= set(node.processor)
        assert node.pdu and node.performance["node_flops"] > 0 and node.storage_devices[0]["size"] > 0
        for nic in node.network_adapters:
            assert {"device", "enabled", "interface", "kavlan", "management", "mountable"} <= set(nic), nic
            if nic["mountable"]:
                assert {"name", "ip", "mac", "switch", "switch_port", "network_address"} <= set(nic), nic
    # every node is its own: addresses, MACs, serials, switch and PDU ports differ
    assert one.network_adapters[0]["network_address"] == "grisou-1.nancy.grid5000.fr"
    assert two.network_adapters[0]["network_address"] == "grisou-2.nancy.grid5000.fr"
    assert one.chassis["serial"] != two.chassis["serial"]
    for a, b in zip(one.network_adapters, two.network_adapters, strict=True):
        assert a.get("mac") != b.get("mac") and (a.get("ip") is None or a["ip"] != b["ip"])
    assert one.pdu[0]["port"] != two.pdu[0]["port"] and one.kavlan["eth0"] != two.kavlan["eth0"]
    # what EnOSlib reads to pick the interfaces of a cluster
    nics = sorted((n["device"], n["name"]) for n in one.network_adapters
                  if n["mountable"] and n["interface"] == "Ethernet" and not n["management"])
    assert nics[0] == ("eth0", "eno1") and len(nics) == 5
    gros = site.clusters["gros"]
    assert gros.model == "Dell PowerEdge R640" and gros.exotic is False
    assert gros.queues == ["admin", "default"]
    assert gros.nodes["gros-1"].architecture["nb_threads"] == 36


def test_python_grid5000_reference_collections(g5k_emulator: Emulator) -> None:
    gk = client(g5k_emulator)
    site = gk.sites["nancy"]
    assert site.g5ksubnet["gateway"] and "default" in site.kavlans and site.ipv6["site_global_kavlan"] == 14
    servers = {s.uid for s in site.servers.list()}
    assert {"fnancy", "dns", "kadeploy"} <= servers
    assert site.servers["dns"].network_adapters["default"]["ip"].startswith("172.16.")
    pdus = {p.uid: p for p in site.pdus.list()}
    assert pdus["grisou-pdu1"].ports["1"] == "grisou-1" and pdus["grisou-pdu1"].ports["4"] == "grisou-4"
    equipments = {e.uid for e in site.network_equipments.list()}
    assert {"gw", "sgrisou1", "sgros1", "sgros2"} <= equipments
    gw = site.network_equipments["gw"]
    assert gw.kind == "router" and any(p["uid"] == "grisou-3" for p in gw.linecards[0]["ports"])
    assert {e.uid for e in gk.network_equipments.list()} == equipments
    vlans = {v.uid: v for v in site.vlans.list()}
    assert set(vlans) == {str(i) for i in range(1, 10)} | {"14"}
    assert (vlans["1"].type, vlans["4"].type, vlans["14"].type) == ("kavlan-local", "kavlan", "kavlan-global")
    assert site.vlans["4"].network == "10.16.0.0/18"
    for versions in (gk.root.get().versions, site.versions, site.clusters["grisou"].versions,
                     site.clusters["grisou"].nodes["grisou-1"].versions):
        (version,) = versions.list()
        assert len(version.uid) == 40 and version.message
    assert httpx.get(f"{g5k_emulator.url}/sites/nancy/pdus/nope", auth=ALICE).status_code == 404


def test_oar_syntax_through_python_grid5000(g5k_emulator: Emulator) -> None:
    site = client(g5k_emulator).sites["nancy"]
    both = site.jobs.create({"resources": "{cluster='gros'}/nodes=1+{cluster='grisou'}/nodes=1,walltime=1",
                             "command": "sleep 3600", "types": ["deploy"], "name": "two clusters"})
    assert sorted(h.split("-")[0] for h in both.assigned_nodes) == ["grisou", "gros"]
    cores = site.jobs.create({"resources": "/nodes=1/core=2,walltime=0:30", "command": "sleep 60"})
    assert len(cores.resources_by_type["cores"]) == 2 and len(cores.assigned_nodes) == 1
    be = site.jobs.create({"resources": "{cluster='grisou'}/nodes=BEST,walltime=4", "command": "sleep 1",
                           "queue": "besteffort"})
    wait(be, "state", {"running"})
    assert be.queue == "besteffort" and len(be.assigned_nodes) == 2  # grisou-1 and -2 are taken
    need = site.jobs.create({"resources": f"{{host='{be.assigned_nodes[0]}'}}/nodes=1,walltime=1",
                             "command": "sleep 60", "types": ["deploy"]})
    wait(need, "state", {"running"})
    be.refresh()
    assert be.state == "error" and be.events[-1]["type"] == "BESTEFFORT_KILL"
    # walltime: an increase the next job blocks stays pending
    g5k_emulator.foreign_job("bob", [need.assigned_nodes[0].split(".")[0]], walltime=3600,
                             start=time.time() + 3700)
    need.walltime_change.create({"walltime": "+1:00"})
    change = need.walltime_change.get()
    assert change.pending == "+1:0:0" and change.granted == "+0:0:0"
    bad = httpx.post(f"{g5k_emulator.url}/sites/nancy/jobs", auth=ALICE,
                     json={"resources": "/core=2/nodes=1", "command": "x"})
    assert bad.status_code == 400 and "largest resource to the smallest" in bad.text


def test_python_grid5000_shell(g5k_emulator: Emulator, tmp_path: Path) -> None:
    """`grid5000`, python-grid5000's own shell (IPython with a `gk` client from
    ~/.python-grid5000.yaml), driven through its standard input."""
    conf = tmp_path / ".python-grid5000.yaml"
    conf.write_text(f"uri: {g5k_emulator.url}\nusername: alice\npassword: {USERS['alice']}\n")
    conf.chmod(0o600)
    script = "\n".join([
        'print("SITES", [s.uid for s in gk.sites.list()])',
        'n = gk.sites["nancy"].clusters["grisou"].nodes["grisou-3"]',
        'print("NODE", n.bios["vendor"], n.processor["microarchitecture"], n.network_adapters[0]["name"])',
        'j = gk.sites["nancy"].jobs.create({"resources": "nodes=1,walltime=1", "command": "sleep 9"})',
        'print("JOB", j.uid, len(j.assigned_nodes))',
        'print("PDUS", [p.uid for p in gk.sites["nancy"].pdus.list()])',
        "exit",
    ]) + "\n"
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "dumb"}
    shell = Path(sys.executable).parent / "grid5000"
    out = subprocess.run([str(shell)], input=script, capture_output=True, text=True, timeout=120, env=env)
    lines = {m.group(1): m.group(0) for m in re.finditer(r"\b(SITES|NODE|JOB|PDUS) [^\n]*", out.stdout)}
    assert lines.get("SITES") == "SITES ['nancy']", out.stdout + out.stderr
    assert lines["NODE"] == "NODE Dell Inc. Haswell eno1"
    job_uid = int(lines["JOB"].split()[1])
    assert g5k_emulator.sim.get_job(job_uid).user == "alice" and lines["JOB"].endswith(" 1")
    assert "'grisou-pdu1'" in lines["PDUS"]


def _curl(emu: Emulator, path: str, *args: str) -> tuple[int, str]:
    # the credentials go on stdin (curl -K -), never on the command line
    out = subprocess.run(
        ["curl", "-sS", "-K", "-", "-H", "Accept: application/json", "-w", "\n%{http_code}", *args,
         f"{emu.url}{path}"],
        input=f'user = "alice:{USERS["alice"]}"\n', capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


ROUTES = [
    "/", "/sites", "/sites/nancy", "/sites/nancy/clusters", "/sites/nancy/clusters/grisou",
    "/sites/nancy/clusters/grisou/nodes", "/sites/nancy/clusters/grisou/nodes/grisou-1",
    "/sites/nancy/status", "/sites/nancy/clusters/grisou/status", "/sites/nancy/servers",
    "/sites/nancy/servers/dns", "/sites/nancy/pdus", "/sites/nancy/network_equipments",
    "/sites/nancy/network_equipments/gw", "/sites/nancy/vlans", "/sites/nancy/vlans/4",
    "/sites/nancy/versions", "/sites/nancy/environments", "/sites/nancy/jobs",
    "/sites/nancy/deployments", "/network_equipments", "/versions",
]


@pytest.mark.skipif(subprocess.run(["which", "curl"], capture_output=True).returncode != 0,
                    reason="curl is not installed")
def test_curl_on_the_documented_routes(g5k_emulator: Emulator) -> None:
    for path in ROUTES:
        code, body = _curl(g5k_emulator, path)
        assert code == 200, (path, body)
        data = json.loads(body)
        assert "links" in data and ("items" in data) == (data.get("total") is not None), path
    # a job as the API tutorial submits it (form fields), then its walltime, then its deletion
    code, body = _curl(g5k_emulator, "/sites/nancy/jobs", "-X", "POST", "-d", "resources=nodes=1,walltime=1",
                       "-d", "command=sleep 3600", "-d", "types[]=deploy")
    assert code == 201, body
    job = json.loads(body)
    assert job["types"] == ["deploy"] and len(job["assigned_nodes"]) == 1
    time.sleep(0.1)
    code, body = _curl(g5k_emulator, f"/sites/nancy/jobs/{job['uid']}/walltime", "-X", "POST",
                       "-H", "Content-Type: application/json", "-d", '{"walltime": "+0:30"}')
    assert code == 202 and json.loads(body)["status"] == "Accepted"
    code, body = _curl(g5k_emulator, "/sites/nancy/deployments", "-X", "POST", "-H",
                       "Content-Type: application/json", "-d",
                       json.dumps({"nodes": job["assigned_nodes"], "environment": "debian12-min",
                                   "key": "ssh-ed25519 AAAAC3Nza curl@lab"}))
    assert code == 201, body
    key_uri = json.loads(body)["key"]
    assert key_uri.startswith(f"{g5k_emulator.url}/sites/nancy/files/")
    # the key file a deployment returns is readable at its URI (by its owner only)
    code, body = _curl(g5k_emulator, key_uri.removeprefix(g5k_emulator.url))
    assert (code, body) == (200, "ssh-ed25519 AAAAC3Nza curl@lab")
    assert httpx.get(key_uri, auth=("bob", USERS["bob"])).status_code == 403
    code, _ = _curl(g5k_emulator, f"/sites/nancy/jobs/{job['uid']}", "-X", "DELETE")
    assert code == 202


def _enoslib_python() -> Path | None:
    default = TESTS.parent / ".venv-enoslib" / "bin" / "python"
    path = Path(os.environ.get("PISEDUCE_ENOSLIB_PYTHON") or default)
    if not path.exists():
        return None
    probe = subprocess.run([str(path), "-c", "import enoslib"], capture_output=True, timeout=120)
    return path if probe.returncode == 0 else None


@pytest.mark.slow
def test_enoslib_g5k_provider_until_ssh(g5k_emulator: Emulator, tmp_path: Path) -> None:
    python = _enoslib_python()
    if python is None:
        message = "EnOSlib's environment (.venv-enoslib, made by ./run test) is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path / "home"
    home.mkdir()
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE", "PYTHON", "VIRTUAL_ENV"))}
    # SSH goes to a closed loopback port: there is no frontend nor node to reach here.
    env.update(HOME=str(home), ANSIBLE_SSH_ARGS="-o HostName=127.0.0.1 -o Port=9 -o ConnectTimeout=2",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible"), NO_COLOR="1")
    proc = subprocess.run(
        [str(python), str(TESTS / "clients" / "enoslib_g5k.py"), g5k_emulator.url, "alice", "enos-exp",
         str(report)],
        input=USERS["alice"] + "\n", capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0 and report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    # it stopped at SSH, having reserved, waited, read the nodes and deployed them
    assert result.get("error") == "EnosSSHNotReady", result
    assert "wait_nodes" in result["traceback"]
    hosts = result["hosts"]
    assert len(hosts) == 2 and sorted(h.split("-")[0] for h in hosts) == ["grisou", "gros"]
    assert result["deployed"] == hosts and result["undeployed"] == []
    (job,) = result["jobs"]
    assert job["name"] == "enos-exp" and job["state"] == "running"
    sim = g5k_emulator.sim
    oar_job = sim.get_job(job["uid"])
    assert "deploy" in oar_job.types and oar_job.hosts == hosts
    (dep,) = [d for d in sim.deployments.values() if d.user == "alice"]
    item = sim.deployment_item(dep)
    assert item["status"] == "terminated" and item["environment"] == "debian12-min"
    assert all(item["result"][h]["state"] == "OK" for h in hosts)
    assert sim.file("alice", item["key"].rsplit("/", 1)[1]).startswith("ssh-ed25519 ")
