"""User routes of an iot-lab agent: `GET /api/reservations/{id}/data`, the experiment's archive.

The same visibility rule as the API's own reservation routes (404 for a reservation the caller may
not see), then owner only: the archive is fetched from IoT-LAB with the caller's own credentials, so
an administrator who does not own the reservation gets 403 rather than someone else's data.

A module-level router: the driver comes as a dependency (what it must offer is `DataSource`), so
these routes need no import of the driver, which imports them only when the API mounts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Protocol, runtime_checkable

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response

from piseduce.agent.api.deps import StateDep, db, driver_errors
from piseduce.agent.auth import Caller, CallerDep
from piseduce.agent.drivers.base import CredentialsRequired, ReservationView
from piseduce.agent.models import Reservation
from piseduce.agent.snapshots import reservation_view
from piseduce.numbers import StrictInt

ReservationId = Annotated[StrictInt, Path(ge=1, le=2**31 - 1, description="The reservation's id")]


@runtime_checkable
class DataSource(Protocol):
    """What these routes need of the driver (the iot-lab driver: its experiment archives)."""

    async def download_data(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> bytes: ...


def _source(state: StateDep) -> DataSource:
    driver = state.driver
    if not isinstance(driver, DataSource):  # mounted by the iot-lab driver only
        raise HTTPException(404, "this agent keeps no experiment data")
    return driver


Source = Annotated[DataSource, Depends(_source)]
router = APIRouter(tags=["iot-lab"])


def _owned(state: StateDep, caller: Caller, rid: int) -> ReservationView:
    with state.sessions() as s:
        r = s.get(Reservation, rid)
        if r is None or not caller.may_see(r.owner):
            raise HTTPException(404, f"reservation {rid} not found")
        if r.owner != caller.user:
            raise HTTPException(403, "only the reservation's owner can download its experiment data")
        return reservation_view(r)


@router.get(
    "/{reservation_id}/data",
    response_class=Response,
    responses={
        200: {"content": {"application/gzip": {}}, "description": "The experiment's tar.gz archive"},
        403: {"description": "Not the owner, or IoT-LAB credentials missing or refused"},
        404: {"description": "No such reservation (or not yours)"},
        409: {"description": "No experiment yet, or IoT-LAB refused"},
        400: {"description": "Missing or malformed X-Piseduce-* header"},
        401: {"description": "Missing or wrong agent token"},
        502: {"description": "The IoT-LAB API failed"},
    },
)
async def experiment_data(
    reservation_id: ReservationId, state: StateDep, caller: CallerDep, source: Source
) -> Response:
    """The IoT-LAB experiment archive (description and firmwares) of one of your reservations."""
    view = await db(_owned, state, caller, reservation_id)
    async with driver_errors(state, "downloading the experiment data"):
        if caller.credentials is None:
            raise CredentialsRequired("none were forwarded with the request")
        data = await source.download_data(view, caller.credentials)
    exp_id = view.driver_state.get("experiment_id") or view.driver_state.get("previous_id")
    return Response(
        data,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="iotlab-{int(exp_id or 0)}.tar.gz"'},
    )
