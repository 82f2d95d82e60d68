"""The `g5k` driver: servers of one Grid'5000 site, reserved and deployed through its REST API.
A thin driver over its parts: access.py (clients, credentials), inventory.py (nodes, outside
jobs), booking.py (OAR jobs), form.py (the deploy form), steps.py (the processes).

Booking: ONE OAR job per PiSeduce reservation (one node each), of type `deploy`, whose
`properties` name exactly that host (`host in ('grisou-1.nancy.grid5000.fr')`), with the
reservation's duration as walltime and an advance `reservation` date for a future start. One job
per reservation (rather than one per booking request) is deliberate: PiSeduce books, extends and
destroys each node on its own, and ending one reservation must never touch another (DESIGN §5.2),
which a shared multi-node job could not guarantee. The jobs of one request are submitted
together; if OAR refuses one, the others are deleted and the whole booking is rolled back with
OAR's message.

Processes: `deploy`/`redeploy` = wait for the job to run (with back-off), submit a Kadeploy run
of the chosen environment with the user's SSH keys, poll it until `terminated` (the node's result
must be `OK`); `destroy` = delete the job (already gone is success). Extension uses the walltime
API. Every step is bounded in time (scaled by `timeout_scale`).

Jobs not created by this agent (their name does not start with its prefix) are only ever read,
to show their nodes as busy: they are never modified or deleted (the seed's NOTE).

Credentials: the user's Grid'5000 login arrives decrypted in memory (`credentials` /
`ctx.credentials`); it goes into the HTTP client's Basic auth and nowhere else — never into a
message, an event, a log line or the driver state.

Optional config keys: `g5k_user` + `g5k_password_file` (an account used to read the node
inventory and the site's status when no user credentials come with the request),
`g5k_http_timeout` (s, default 30), `g5k_api_attempts` (default 4), `g5k_status_cache_seconds`
(default 10).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from piseduce.agent.drivers.g5k.access import G5kAccess
from piseduce.agent.drivers.g5k.booking import G5kBooking
from piseduce.agent.drivers.g5k.form import G5kForm
from piseduce.agent.drivers.g5k.inventory import G5kInventory
from piseduce.agent.drivers.g5k.steps import G5kSteps
from piseduce.agent.drivers.parts import PartsDriver

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from piseduce.config import AgentConfig


class G5kDriver(PartsDriver):
    node_type = "g5k"
    needs_credentials = True
    credential_kind = "g5k"
    labels = {"nodes": "Grid'5000 server", "testbed": "Grid'5000"}
    steps: G5kSteps

    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session]) -> None:
        super().__init__(config, sessions)
        self.access = G5kAccess(config)
        site = G5kInventory(config, self.access)
        self.inventory = site
        booking = G5kBooking(self.access, site)
        self.booking = booking
        self.form = G5kForm(config, self.access)
        self.steps = G5kSteps(config, self.access, site, booking)

    @property
    def site(self) -> str:
        return self.access.site

    def job_name(self, reservation_id: int) -> str:
        return self.access.job_name(reservation_id)

    async def check_credentials(self, credentials: Mapping[str, str]) -> str:
        return await self.access.check(credentials)

    async def close(self) -> None:
        await self.steps.close()
