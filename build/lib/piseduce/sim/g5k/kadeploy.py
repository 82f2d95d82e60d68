"""Kadeploy on the emulated site: a deployment is accepted only on nodes the user holds through a
running job of type `deploy`, is `waiting`, then `processing`, then `terminated` with a per-node
OK/KO result (the fault knobs decide which nodes end KO), or `error`. The caller (`G5kSim`) holds
the site's lock."""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

from piseduce.sim.g5k.records import (
    KADEPLOY_SECONDS,
    KADEPLOY_WAIT_SECONDS,
    KO_STEP,
    SimDeployment,
    SimError,
)

if TYPE_CHECKING:
    from piseduce.sim.g5k.model import G5kSim

INVALID = "The deployment you are trying to submit is not valid: "
REFUSED = "Cannot launch deployment: Kadeploy error "


def find_environment(sim: G5kSim, name: str) -> dict[str, Any] | None:
    base = name.split("@")[0]
    for env in sim.environments:
        if base in (env["name"], env["alias"], env["uid"]):
            return env
    return None


def _check_request(sim: G5kSim, payload: dict[str, Any]) -> tuple[list[str], str]:
    """The nodes and environment of a submission, or the API's refusal."""
    nodes = payload.get("nodes")
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise SimError(400, INVALID + "nodes must be a non-empty list of node FQDN")
    environment = payload.get("environment")
    if not isinstance(environment, str) or not environment:
        raise SimError(400, INVALID + "environment can't be blank")
    unknown = [n for n in nodes if n not in sim.nodes]
    if unknown:
        raise SimError(500, REFUSED + f"#4: unknown node(s) {', '.join(unknown)}")
    if not environment.startswith(("http://", "https://")) and find_environment(sim, environment) is None:
        raise SimError(500, REFUSED + f"#21: the environment '{environment}' does not exist")
    return nodes, environment


def _check_rights(sim: G5kSim, user: str, nodes: list[str], payload: dict[str, Any], now: float) -> None:
    """A running deploy job of the user on every node, and no deployment of theirs still on one."""
    allowed: set[str] = set()
    for job in sim.jobs.values():
        if (
            job.user == user
            and "deploy" in job.types
            and sim.job_state(job, now) == "running"
            and job.killed_at() is None
        ):
            allowed.update(job.hosts)
    denied = [n for n in nodes if n not in allowed]
    if denied:
        raise SimError(
            500,
            REFUSED + f"#6: you do not have the deployment rights on {', '.join(denied)} "
            "(a running job of type deploy is required)",
        )
    if payload.get("ignore_nodes_deploying"):
        return
    for d in sim.deployments.values():
        if d.user == user and status(sim, d, now) in ("waiting", "processing"):
            clash = set(d.nodes) & set(nodes)
            if clash:
                names = ", ".join(sorted(clash))
                raise SimError(500, REFUSED + f"#9: {names} already being deployed by {d.uid}")


def submit(sim: G5kSim, user: str, payload: dict[str, Any], files_uri: str) -> SimDeployment:
    now = sim.now()
    nodes, environment = _check_request(sim, payload)
    _check_rights(sim, user, nodes, payload, now)
    key = payload.get("key")
    if isinstance(key, str) and key and not key.startswith(("http://", "https://")):
        # The real API stores key blobs as files and gives their URI back.
        name = f"{user}-key-{hashlib.sha1(key.encode()).hexdigest()}"  # noqa: S324 (a name)
        sim.files[name] = (user, key)
        key = f"{files_uri}/{name}"
    faults = sim.faults
    ko = {
        n
        for n in nodes
        if n in faults.ko_nodes
        or sim.nodes[n].uid in faults.ko_nodes
        or (faults.ko_rate > 0 and sim.random.random() < faults.ko_rate)
    }
    dep = SimDeployment(
        uid=f"D-{uuid.uuid4()}",
        user=user,
        nodes=list(nodes),
        environment=environment,
        key=key if isinstance(key, str) else None,
        created_at=now,
        ko=ko,
        error=faults.deploy_error,
        params={k: payload[k] for k in ("version", "arch", "vlan") if k in payload},
    )
    sim.deployments[dep.uid] = dep
    return dep


def stored_file(sim: G5kSim, user: str, name: str) -> str:
    """A blob stored for a deployment (its SSH key), readable by its owner at its URI."""
    owner, content = sim.files.get(name, ("", ""))
    if not owner:
        raise SimError(404, f"Couldn't find file {name}")
    if owner != user:
        raise SimError(403, "You are not authorized to access this resource")
    return content


def status(sim: G5kSim, dep: SimDeployment, now: float) -> str:
    if dep.canceled_at is not None:
        return "canceled"
    wait = KADEPLOY_WAIT_SECONDS / sim.time_scale
    if now < dep.created_at + wait:
        return "waiting"
    if now < dep.created_at + wait + KADEPLOY_SECONDS / sim.time_scale:
        return "processing"
    return "error" if dep.error else "terminated"


def get(sim: G5kSim, uid: str) -> SimDeployment:
    dep = sim.deployments.get(uid)
    if dep is None:
        raise SimError(404, f"Couldn't find Grid5000::Deployment with ID={uid}")
    return dep


def cancel(sim: G5kSim, user: str, uid: str) -> None:
    dep = get(sim, uid)
    if dep.user != user:
        raise SimError(403, "You are not authorized to access this resource")
    if status(sim, dep, sim.now()) in ("waiting", "processing"):
        dep.canceled_at = sim.now()


def item(sim: G5kSim, dep: SimDeployment) -> dict[str, Any]:
    now = sim.now()
    state = status(sim, dep, now)
    result: dict[str, Any] = {}
    if state == "terminated":
        for n in dep.nodes:
            result[n] = dict(KO_STEP) if n in dep.ko else {"macro": None, "micro": None, "state": "OK"}
    elif state == "error":
        result = {n: dict(KO_STEP) for n in dep.nodes}
    updated = (
        now
        if state in ("waiting", "processing")
        else (dep.canceled_at or dep.created_at + (KADEPLOY_WAIT_SECONDS + KADEPLOY_SECONDS) / sim.time_scale)
    )
    out: dict[str, Any] = {
        "uid": dep.uid,
        "site_uid": sim.site,
        "user_uid": dep.user,
        "environment": dep.environment,
        "status": state,
        "nodes": list(dep.nodes),
        "result": result,
        "created_at": int(dep.created_at),
        "updated_at": int(updated),
        **dep.params,
    }
    if dep.key:
        out["key"] = dep.key
    if state == "error":
        out["output"] = f"Kadeploy error #1: {dep.error}"
    return out


def listing(sim: G5kSim, params: dict[str, str]) -> list[SimDeployment]:
    newest_first = params.get("reverse") != "true"
    deps = sorted(sim.deployments.values(), key=lambda d: d.created_at, reverse=newest_first)
    if params.get("user"):
        deps = [d for d in deps if d.user == params["user"]]
    if params.get("status"):
        now = sim.now()
        deps = [d for d in deps if status(sim, d, now) == params["status"]]
    return deps
