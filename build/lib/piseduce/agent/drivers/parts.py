"""A driver made of parts, as the g5k and iot-lab drivers are: its booking hooks are those of its
`booking` part, its deploy form its `form` part's, its processes its `steps` part's (and its node
list and calendar its `inventory`'s, as for every driver: base.py). Each part is a small class of
its own module; the driver only wires them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Protocol

from piseduce.agent.drivers.base import Driver, FormField, Process, ReservationView


class BookingPart(Protocol):
    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]: ...

    async def on_extend(
        self, reservation: ReservationView, new_end: dt.datetime, credentials: Mapping[str, str] | None
    ) -> dict[str, Any]: ...

    async def on_cancel(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> None: ...


class FormPart(Protocol):
    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]: ...

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]: ...


class StepsPart(Protocol):
    def processes(self) -> dict[str, Process]: ...


class PartsDriver(Driver):
    booking: BookingPart
    form: FormPart
    steps: StepsPart

    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]:
        return await self.booking.on_booked(reservations, credentials)

    async def on_extend(
        self, reservation: ReservationView, new_end: dt.datetime, credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        return await self.booking.on_extend(reservation, new_end, credentials)

    async def on_cancel(self, reservation: ReservationView, credentials: Mapping[str, str] | None) -> None:
        await self.booking.on_cancel(reservation, credentials)

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        return await self.form.deploy_form(reservation, credentials)

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        return await self.form.validate_deploy(reservation, params, credentials)

    def processes(self) -> dict[str, Process]:
        return self.steps.processes()
