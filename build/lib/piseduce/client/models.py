"""What the web UI's user API (`/api/v1`, docs/api.md) answers, under the client's names.

The classes are the API's own (piseduce.api_models: the web UI's routes answer with them and its
OpenAPI spec is generated from them), so the client and the server cannot disagree on a field.
They keep a field a newer web UI adds (`--json` passes it on). Only pydantic is imported, so the
client installs and imports without the server's dependencies.
"""

from __future__ import annotations

from piseduce.agent.lifecycle import (
    CANCELLED,
    CONFIGURING,
    DEPLOYED,
    DEPLOYING,
    DESTROYING,
    ENDED,
    FAILED,
    SCHEDULED,
)
from piseduce.api_models import (
    AgentOut,
    ApiModel,
    ConnectionOut,
    CredentialsOut,
    EnvironmentOut,
    EventOut,
    FormFieldOut,
    MeOut,
    NextSlotOut,
    NodeOut,
    NodeScheduleOut,
    ReservationDetailOut,
    ReservationOut,
    SlotOut,
    SshKeyOut,
)

__all__ = [
    "CANCELLED", "CONFIGURING", "DEPLOYED", "DEPLOYING", "DESTROYING", "ENDED", "FAILED", "GONE",
    "SCHEDULED", "WAIT_OVER", "Agent", "ApiModel", "Connection", "CredentialsState", "Environment",
    "Event", "FormField", "Me", "NextSlot", "Node", "Reservation", "ReservationDetail", "ScheduleRow", "Slot",
    "SshKey",
]

# A deployment's wait is over on these; the last three mean the node will never be deployed.
WAIT_OVER = (DEPLOYED, FAILED, DESTROYING, ENDED, CANCELLED)
GONE = (DESTROYING, ENDED, CANCELLED)

Me = MeOut
Agent = AgentOut
Node = NodeOut
NextSlot = NextSlotOut  # when a request could next be booked (nothing booked)
Slot = SlotOut
ScheduleRow = NodeScheduleOut
Connection = ConnectionOut
Event = EventOut
# What lists and actions answer; one reservation's GET adds its events (ReservationDetail).
Reservation = ReservationOut
ReservationDetail = ReservationDetailOut
FormField = FormFieldOut
Environment = EnvironmentOut
SshKey = SshKeyOut
CredentialsState = CredentialsOut
