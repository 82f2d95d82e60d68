"""What the raspberry admin routes share (admin_switches.py, admin_environments.py): their
request and answer models, the driver as a dependency, and the create-or-update rule of a row.

The SNMP community and v3 pass phrases are write-only: passwords of the switch, sealed with the
agent's key file (switch_secrets), never echoed back.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, HTTPException
from fastapi import Path as PathParam
from pydantic import Field, field_validator, model_validator
from sqlalchemy.orm import Session

from piseduce.agent.api.deps import StateDep
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.snmp import valid_oid
from piseduce.agent.drivers.raspberry.switch_secrets import SwitchKeyring, SwitchSecrets
from piseduce.agent.models import Environment, Switch
from piseduce.agent.schemas import Strict
from piseduce.agent.worded import Words
from piseduce.numbers import StrictInt
from piseduce.protocol import EnvironmentOut
from piseduce.protocol_rpi import SwitchOut

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
Name = Annotated[str, Words(NAME_RE, "is not a valid name: letters, digits and . _ - only (at most 128), "
                                    "starting with a letter or digit")]
NameParam = Annotated[str, PathParam(pattern=NAME_RE)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong agent token"},
    403: {"description": "Administrators only"},
    404: {"description": "Not found"},
    409: {"description": "Not possible; the detail says why"},
    502: {"description": "The switch did not answer"},
}


class SwitchIn(Strict):
    name: Name
    ip: str = Field(max_length=253)
    snmp_port: StrictInt = Field(default=161, ge=1, le=65535)
    community: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="The write community; omitted: 'private' for a new switch, unchanged on an update",
    )
    poe_oid: str = Field(default="1.3.6.1.2.1.105.1.1.1.3.1", max_length=255)
    oid_offset: StrictInt = Field(default=0, ge=0, le=100_000)
    port_count: StrictInt = Field(default=8, ge=1, le=1024)
    power_oid: str = Field(default="", max_length=255)
    power_oid_offset: StrictInt = Field(default=0, ge=0, le=100_000)
    master_port: StrictInt = Field(default=0, ge=0, le=1024)
    snmp_version: Literal["v1", "v2c", "v3"] = "v2c"
    v3_user: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._@-]*$")
    v3_auth_protocol: Literal["SHA", "SHA-256"] = "SHA"
    v3_auth_key: str | None = Field(
        default=None, min_length=8, max_length=128,
        description="v3 authentication pass phrase; omitted on an update: unchanged",
    )
    v3_priv_protocol: Literal["AES", "none"] = "AES"
    v3_priv_key: str | None = Field(
        default=None, min_length=8, max_length=128,
        description="v3 privacy pass phrase (AES); omitted on an update: unchanged",
    )

    @field_validator("ip")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            if HOST_RE.match(v):
                return v
        raise ValueError("must be an IP address or a host name")

    @field_validator("community", "v3_auth_key", "v3_priv_key")
    @classmethod
    def _community(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("printable characters only")
        return v

    @field_validator("poe_oid")
    @classmethod
    def _poe_oid(cls, v: str) -> str:
        if not valid_oid(v):
            raise ValueError("must be a numeric OID such as 1.3.6.1.2.1.105.1.1.1.3.1")
        return v.strip(".")

    @field_validator("power_oid")
    @classmethod
    def _power_oid(cls, v: str) -> str:
        if v and not valid_oid(v):
            raise ValueError("must be empty or a numeric OID")
        return v.strip(".")

    @model_validator(mode="after")
    def _master(self) -> SwitchIn:
        if self.master_port > self.port_count:
            raise ValueError(f"master_port {self.master_port} is beyond port_count {self.port_count}")
        if self.snmp_version == "v3" and not self.v3_user:
            raise ValueError("v3_user: SNMPv3 needs the switch's USM user name")
        return self


class EnvironmentIn(Strict):
    name: Name
    image: str = Field(min_length=1, max_length=512)
    size: StrictInt = Field(default=0, ge=0)
    sector_start: StrictInt = Field(default=0, ge=0)
    ssh_user: Annotated[str, Words(r"^[a-z_][a-z0-9_-]{0,31}$",
                                   "is not a Linux user name: lowercase letters, digits, _ and -, "
                                   "at most 32, starting with a letter")] = "root"
    web: bool = False
    checksum: Annotated[str, Words(r"^([0-9a-fA-F]{64})?$",
                                   "is not a sha256: 64 hexadecimal digits, or empty to compute it")] = ""
    description: str = Field(default="", max_length=2000)
    state: Literal["available", "disabled"] = "available"
    owner: str = Field(default="", max_length=320)


def switch_out(row: Switch) -> SwitchOut:
    return SwitchOut(
        name=row.name, ip=row.ip, snmp_port=row.snmp_port, poe_oid=row.poe_oid, oid_offset=row.oid_offset,
        port_count=row.port_count, power_oid=row.power_oid, power_oid_offset=row.power_oid_offset,
        master_port=row.master_port,
        community_set=bool(row.community or row.secrets),
        snmp_version=row.snmp_version, v3_user=row.v3_user, v3_auth_protocol=row.v3_auth_protocol,
        v3_priv_protocol=row.v3_priv_protocol, v3_keys_set=bool(row.secrets and row.v3_user),
    )


def env_out(row: Environment, preselected: str | None = None) -> EnvironmentOut:
    return EnvironmentOut(
        name=row.name, image=row.image, size=row.size, sector_start=row.sector_start, ssh_user=row.ssh_user,
        web=row.web, checksum=row.checksum, description=row.description, state=row.state, owner=row.owner,
        default=row.is_default, preselected=row.name == preselected,
    )


def merged_secrets(keyring: SwitchKeyring, row: Switch, body: SwitchIn) -> SwitchSecrets:
    """Secrets the pages never show: an edit that does not retype one keeps the stored one."""
    old = keyring.open(row) if row.secrets or row.community else SwitchSecrets(community="private")
    new = SwitchSecrets(
        community=body.community if body.community is not None else (old.community or "private"),
        auth_key=body.v3_auth_key if body.v3_auth_key is not None else old.auth_key,
        priv_key=body.v3_priv_key if body.v3_priv_key is not None else old.priv_key,
    )
    if body.snmp_version == "v3":
        wanted = (("v3_auth_key", new.auth_key, True),
                  ("v3_priv_key", new.priv_key, body.v3_priv_protocol != "none"))
        missing = [what for what, value, needed in wanted if needed and not value]
        if missing:
            raise HTTPException(422, f"SNMPv3 switch: {' and '.join(missing)} needed (8 to 128 characters)")
    return new


SavedRow = TypeVar("SavedRow", Switch, Environment)


def row_to_save(
    s: Session, model: type[SavedRow], what: str, new_name: str, create: bool, path_name: str | None
) -> SavedRow:
    """The row a POST creates (409 if the name is taken) or a PUT changes (404 if missing; no renaming)."""
    key = new_name if create else (path_name or new_name)
    row = s.get(model, key)
    if create and row is not None:
        raise HTTPException(409, f"{what} {new_name} already exists")
    if not create:
        if row is None:
            raise HTTPException(404, f"{what} {key} not found")
        if new_name != key:
            raise HTTPException(422, "the name in the body must match the path (no renaming)")
    if row is None:
        row = model(name=new_name)
        s.add(row)
    return row


def _driver(state: StateDep) -> RaspberryDriver:
    driver = state.driver
    if not isinstance(driver, RaspberryDriver):  # the routes are mounted by this driver only
        raise HTTPException(404, "not a raspberry agent")
    return driver


# The raspberry driver of the agent serving the request.
Rpi = Annotated[RaspberryDriver, Depends(_driver)]
