"""The emulator's own `/_sim/...` routes, for tests and demos: its health, the fault knobs, jobs
made outside the API (oarsub on a frontend) and nodes' hardware states."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from piseduce.sim.g5k.records import SimError
from piseduce.sim.g5k.web import read_payload, sim_of


async def sim_faults(request: Request) -> Response:
    sim = sim_of(request)
    if request.method == "POST":
        data = await read_payload(request)
        with sim.lock:
            try:
                sim.faults.update(data)
            except (TypeError, ValueError) as exc:
                raise SimError(400, f"bad fault value: {exc}") from None
    return JSONResponse(sim.faults.as_dict())


async def sim_foreign_job(request: Request) -> Response:
    """A job made outside the API (oarsub on the frontend) by any user: `{user, hosts, start?, walltime}`."""
    sim = sim_of(request)
    data = await read_payload(request)
    try:
        hosts = [str(h) for h in data["hosts"]]
        job = sim.add_foreign_job(
            str(data.get("user", "someone")),
            hosts,
            float(data["start"]) if data.get("start") is not None else None,
            int(data.get("walltime", 3600)),
            str(data.get("name", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SimError(400, f"bad foreign job: {exc}") from None
    with sim.lock:
        return JSONResponse(sim.job_item(job, details=True), status_code=201)


async def sim_node(request: Request) -> Response:
    data = await read_payload(request)
    sim_of(request).set_node_hard(request.path_params["node"], str(data.get("hard", "alive")))
    return JSONResponse({"ok": True})


async def sim_health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "site": sim_of(request).site})
