"""The `iot-lab` driver: sensors of one FIT IoT-LAB site, driven through iotlabcli's Python API.
A thin driver over its parts: client.py (the API from async code), inventory.py (nodes, outside
experiments), booking.py, form.py, steps.py (the processes), firmware.py, routes.py (data).

A booking only lands in PiSeduce's calendar (after checking the user's credentials and that no other
user's experiment holds the node). Deploying submits one experiment per reservation, on the reserved
node only, for what remains of the reservation, with the chosen firmware and monitoring profile, and
follows its states to Running; destroying stops that experiment; redeploying reloads it. Each
reservation knows its own experiment id, so no action ever touches another reservation's experiment.

`driver_state` keys: `experiment_id` (the current experiment or None), `previous_id` (the one just
released, which a redeploy reloads), `experiments` (every id, oldest first), `exp_state` (last seen),
`energy` (what the node used, read from IoT-LAB's consumption files at destroy: energy.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from piseduce.agent.drivers.base import ActionRefused, ReservationView
from piseduce.agent.drivers.iotlab.booking import IotlabBooking
from piseduce.agent.drivers.iotlab.client import Client, RemoteError
from piseduce.agent.drivers.iotlab.energy import IotlabEnergy
from piseduce.agent.drivers.iotlab.firmware import FirmwareStore
from piseduce.agent.drivers.iotlab.form import IotlabForm
from piseduce.agent.drivers.iotlab.inventory import IotlabInventory
from piseduce.agent.drivers.iotlab.steps import IotlabSteps
from piseduce.agent.drivers.parts import PartsDriver
from piseduce.protocol import Feature

if TYPE_CHECKING:
    from fastapi import APIRouter
    from sqlalchemy.orm import Session, sessionmaker

    from piseduce.config import AgentConfig


class IotlabDriver(PartsDriver):
    node_type = "iot-lab"
    needs_credentials = True
    credential_kind = "iotlab"
    labels = {"nodes": "IoT-LAB sensor", "testbed": "FIT IoT-LAB"}
    # An experiment's duration is fixed at submission: IoT-LAB cannot extend one that runs, so
    # PiSeduce offers no extension at all (one rule for users, not one before and one after start).
    declared_features = frozenset({Feature.FIRMWARE})
    booking: IotlabBooking

    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session]) -> None:
        super().__init__(config, sessions)
        self.site = config.iot_site
        self.client = Client(config.iotlab_api_url)
        self.firmwares = FirmwareStore(config.firmware_dir)
        site = IotlabInventory(config, self.client)
        self.inventory = site
        self.booking = IotlabBooking(self.client, site, self.firmwares)
        self.energy = IotlabEnergy(config, self.client)
        self.form = IotlabForm(self.client, self.firmwares, self.energy)
        self.steps = IotlabSteps(config, self.client, self.firmwares, self.energy)

    async def sample(self) -> list[tuple[str, str, float]]:
        """The power of the nodes whose reservations measure energy, from IoT-LAB's own measures
        (energy.py): the monitor stores it as for a Raspberry Pi's PoE port."""
        return await self.energy.live(self.sessions, self.config.monitor_period_seconds)

    async def check_credentials(self, credentials: Mapping[str, str]) -> str:
        return await self.booking.check_login(credentials)

    def user_router(self) -> APIRouter | None:
        # Imported here: the executor loads this driver too and needs none of the API.
        from piseduce.agent.drivers.iotlab.routes import router

        return router

    async def download_data(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> bytes:
        """The experiment's archive (tar.gz: description and firmwares), fetched with the owner's
        credentials. The caller checks that the requester owns the reservation."""
        exp_id = reservation.driver_state.get("experiment_id") or reservation.driver_state.get("previous_id")
        if not exp_id:
            raise ActionRefused("no IoT-LAB experiment was submitted for this reservation")
        try:
            # Not experiment.get_experiment(..., "data"): that one writes the archive to the cwd.
            data = await self.client.call(credentials, lambda api: api.get_experiment_info(exp_id, "data"))
        except RemoteError as exc:
            raise ActionRefused(f"IoT-LAB refused the data of experiment {exp_id}: {exc.message}") from None
        return bytes(data)
