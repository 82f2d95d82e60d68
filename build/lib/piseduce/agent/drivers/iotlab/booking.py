"""Booking on IoT-LAB: a booking only lands in PiSeduce's calendar, after checking the user's
credentials and that no other user's experiment holds the node; the experiment itself is submitted
when the reservation deploys (steps.py). Cancelling stops it if there is one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from iotlabcli import experiment as iotlab_experiment

from piseduce.agent.drivers.base import ActionRefused, BookingRefused, CredentialsRequired, ReservationView
from piseduce.agent.drivers.iotlab.client import Client, RemoteError
from piseduce.agent.drivers.iotlab.experiments import LIVE
from piseduce.agent.drivers.iotlab.firmware import FirmwareStore
from piseduce.agent.drivers.iotlab.inventory import IotlabInventory
from piseduce.agent.lifecycle import DEPLOYED, DEPLOYING


class IotlabBooking:
    def __init__(self, client: Client, inventory: IotlabInventory, firmwares: FirmwareStore) -> None:
        self.client = client
        self.inventory = inventory
        self.firmwares = firmwares

    async def check_credentials(self, credentials: Mapping[str, str] | None) -> None:
        if not await self.client.call(credentials, lambda api: api.check_credential()):
            raise CredentialsRequired("refused by the IoT-LAB API")

    async def check_login(self, credentials: Mapping[str, str]) -> str:
        """The account query of the API (GET /user), not retried: the user waits on Settings. A
        testbed that cannot be reached raises TransientError (a DriverError: 502)."""
        ok = await self.client.call(credentials, lambda api: api.check_credential(), retry=False)
        if not ok:
            raise CredentialsRequired(f"IoT-LAB refused the login {credentials.get('user', '')!r}")
        return f"IoT-LAB accepted the login {credentials.get('user', '')}"

    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]:
        if not reservations:
            return {}
        await self.check_credentials(credentials)
        assert credentials is not None
        start = min(r.start for r in reservations)
        end = max(r.end for r in reservations)
        busy = await self.inventory.busy(start, end, credentials)
        for r in reservations:
            for b in busy:
                if b.node == r.node.name and b.start < r.end and r.start < b.end:
                    raise BookingRefused(
                        f"{r.node.name} is busy on IoT-LAB until {b.end:%Y-%m-%d %H:%M} UTC ({b.reason})"
                    )
        return {r.id: {"experiments": []} for r in reservations}

    async def on_extend(
        self, reservation: ReservationView, new_end: dt.datetime, credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        if reservation.driver_state.get("experiment_id") and reservation.status in (DEPLOYING, DEPLOYED):
            raise ActionRefused(
                "IoT-LAB cannot extend a submitted experiment: extend before deploying, or redeploy after"
            )
        return {}

    async def on_cancel(self, reservation: ReservationView, credentials: Mapping[str, str] | None) -> None:
        exp_id = reservation.driver_state.get("experiment_id")
        self.firmwares.remove_uploads(reservation.id)
        if exp_id and credentials:
            try:
                info = await self.client.call(
                    credentials, lambda api: iotlab_experiment.get_experiment(api, exp_id)
                )
                if info.get("state") in LIVE:
                    await self.client.call(
                        credentials, lambda api: iotlab_experiment.stop_experiment(api, exp_id)
                    )
            except RemoteError:
                pass  # already gone
