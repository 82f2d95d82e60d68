"""The wire between the web UI and a raspberry agent's admin collections: its PoE switches and
their ports, the boot network's configuration and node detection (the rest is in protocol)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from piseduce.protocol import Label, NodeName, ShortText, Wire


class SwitchOut(Wire):
    name: NodeName
    ip: Label
    snmp_port: int
    poe_oid: Label
    oid_offset: int
    port_count: int
    power_oid: Label
    power_oid_offset: int
    master_port: int
    community_set: bool
    snmp_version: Label
    v3_user: Label
    v3_auth_protocol: Label
    v3_priv_protocol: Label
    v3_keys_set: bool


class PortOut(Wire):
    port: int
    status: Literal["on", "off", "unknown"]
    master: bool = False
    node: NodeName | None = None
    power_w: float | None = None


class NetworkConfigOut(Wire):
    """A raspberry agent's boards' network configuration (`GET /api/admin/network-config`)."""

    dnsmasq: str  # the dnsmasq file, the NFS export line in its last comment
    exports: str  # that /etc/exports line
    skipped: list[str] = Field(default_factory=list)  # the nodes left without a lease, and why


class DetectPortOut(Wire):
    """One port of a node detection: its step (waiting, powering, booting, reading, registering,
    then registered or failed with its reason) and what the board said of itself."""

    port: int
    name: NodeName
    step: Label
    reason: ShortText = ""
    ip: Label = ""
    serial: Label = ""
    model: Label = ""
    mac: Label = ""
    card_size: int = 0
    updated: bool = False  # a known board (same serial): its row was updated


class DetectionOut(Wire):
    """A raspberry agent's node detection job (`/api/admin/detect`)."""

    id: Label
    switch: NodeName
    done: bool
    started: float
    ports: list[DetectPortOut] = Field(max_length=4096)
