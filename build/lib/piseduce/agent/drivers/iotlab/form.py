"""The iot-lab deploy form: a firmware of the agent's folder or an uploaded one, and one of the
user's monitoring profiles."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from piseduce.agent.drivers.base import FormField, InvalidParams, ReservationView
from piseduce.agent.drivers.iotlab.client import Client, RemoteError, TransientError
from piseduce.agent.drivers.iotlab.energy import IotlabEnergy
from piseduce.agent.drivers.iotlab.firmware import FirmwareStore, check_name

PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class IotlabForm:
    def __init__(self, client: Client, firmwares: FirmwareStore, energy: IotlabEnergy) -> None:
        self.client = client
        self.firmwares = firmwares
        self.energy = energy

    def _model(self, reservation: ReservationView) -> str:
        return str(reservation.node.properties.get("model") or "")

    async def _profiles(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[str]:
        answer = await self.client.call(credentials, lambda api: api.get_profiles())
        model = self._model(reservation)
        names = []
        for p in answer or []:
            is_profile = isinstance(p, dict) and isinstance(p.get("profilename"), str)
            if is_profile and (not model or p.get("nodearch") in (None, model)):
                names.append(p["profilename"])
        return sorted(names)

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        try:
            profiles = await self._profiles(reservation, credentials)
            profile_help = "One of your IoT-LAB monitoring profiles (power, radio); empty for none."
        except (TransientError, RemoteError) as exc:
            profiles, profile_help = (
                [],
                f"Your monitoring profiles could not be read ({exc}); empty for none.",
            )
        return [
            FormField(
                name="firmware",
                label="Firmware",
                kind="select",
                choices=["", *self.firmwares.names()],
                help="A firmware of the agent's folder; empty keeps the node's default firmware.",
                default="",
            ),
            FormField(
                name="firmware_file",
                label="Or upload your firmware",
                kind="file",
                help="Your own .elf, .bin or .hex file, chosen as it is, used instead of the list "
                "(through the API, send its content base64-encoded).",
            ),
            FormField(
                name="firmware_file_name",
                label="Uploaded firmware file name",
                kind="text",
                help="The name of the uploaded file, e.g. my_app.elf.",
            ),
            FormField(
                name="profile",
                label="Monitoring profile",
                kind="select",
                choices=["", *profiles],
                help=profile_help,
                default="",
            ),
            FormField(
                name="energy",
                label="Measure energy",
                kind="checkbox",
                help="Wh, mean and peak W of the node, shown on Manage when the reservation ends. "
                "The agent adds its SSH key to your IoT-LAB keys to read the measures on the site's "
                "frontend and, without a profile of yours that measures power, puts its own on the node.",
                default=False,
            ),
        ]

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        firmware = params.get("firmware") or ""
        upload = params.get("firmware_file") or ""
        upload_name = params.get("firmware_file_name") or ""
        profile = params.get("profile") or ""
        for key, value in (("firmware", firmware), ("firmware_file", upload), ("profile", profile)):
            if not isinstance(value, str):
                raise InvalidParams(key, "expected a string")
        if firmware and upload:
            raise InvalidParams("firmware_file", "choose a firmware from the list or upload one, not both")
        out: dict[str, Any] = {"firmware": "", "firmware_source": "", "profile": ""}
        if firmware:
            self.firmwares.path(firmware)  # raises InvalidParams for a bad or unknown name
            out.update(firmware=firmware, firmware_source="folder")
        elif upload:
            if not isinstance(upload_name, str) or not upload_name:
                raise InvalidParams("firmware_file_name", "give the uploaded firmware's file name")
            check_name("firmware_file_name", upload_name)
            self.firmwares.save_upload(reservation.id, upload_name, upload)
            out.update(firmware=upload_name, firmware_source="upload")
        if profile:
            if not PROFILE_NAME.fullmatch(profile):
                raise InvalidParams("profile", "a profile name is made of letters, digits, '_' and '-'")
            try:
                known = await self._profiles(reservation, credentials)
            except TransientError as exc:
                raise InvalidParams("profile", f"your profiles could not be checked now ({exc})") from None
            if profile not in known:
                raise InvalidParams(
                    "profile", f"no monitoring profile named {profile!r} for this node in your account"
                )
            out["profile"] = profile
        wants_energy = params.get("energy", False)
        if not isinstance(wants_energy, bool):
            raise InvalidParams("energy", "expected true or false")
        if wants_energy:  # kept only when asked: a deployment without it stores what it did before
            await self.energy.check(self._model(reservation), out["profile"], credentials)
            out["energy"] = True
        if not firmware and not upload:
            self.firmwares.remove_uploads(reservation.id)
        return out
