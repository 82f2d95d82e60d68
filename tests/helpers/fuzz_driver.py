"""The fake driver with a deploy form of every field kind, for the web UI's form fuzzer (the
Configure page then posts numbers, checkboxes, files, passwords and texts to fuzz)."""

from __future__ import annotations

from collections.abc import Mapping

from helpers.fake_driver import FakeDriver
from piseduce.agent.drivers.base import FormField, ReservationView


class FuzzDriver(FakeDriver):
    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        return [
            *await super().deploy_form(reservation, credentials),
            FormField(name="duration", label="Duration (minutes)", kind="number", default=30),
            FormField(name="wipe", label="Wipe first", kind="checkbox", default=True),
            FormField(name="firmware", label="Firmware", kind="file"),
            FormField(name="os_password", label="Password", kind="password"),
            FormField(name="notes", label="Notes", kind="textarea"),
            FormField(name="part_size", label="Partition", kind="text", default="8gb"),
        ]
