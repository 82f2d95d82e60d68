"""The raspberry driver per switch in SNMP v1, v2c or v3 (authPriv SHA/AES), through the admin
API, against the simulated switch; the community and v3 pass phrases sealed at rest with the
agent's key file, never shown, kept on an edit that does not retype them."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import ADMIN
from helpers.raspberry_helpers import agent_config, sessions_for
from helpers.rpi_fixtures import running_cluster
from piseduce.agent.app import create_app
from piseduce.agent.drivers.raspberry.snmp import SnmpClient, SnmpError, SwitchInfo
from piseduce.agent.drivers.raspberry.switch_secrets import SwitchKeyring, seal_clear_communities

FIELDS = ("name", "ip", "snmp_port", "poe_oid", "port_count", "master_port", "power_oid", "power_oid_offset")


def _switch_row(config: Any) -> dict[str, Any]:
    path = config.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM switches").fetchone())


async def test_driver_powers_ports_in_v3_authpriv_and_v1(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, boards=2) as (cluster, _key):
        inv = cluster.inventory()["switch"]
        client = SnmpClient(timeout=0.5, retries=1)
        try:
            v3 = SwitchInfo(**{**{k: inv[k] for k in SwitchInfo.__dataclass_fields__}, "snmp_version": "v3"})
            await client.set_power(v3, 1, True)
            assert cluster.board("pi-1").powered and await client.port_status(v3, 1) == "on"
            assert (await client.ports_status(v3))[1] == "on"
            v1 = SwitchInfo(**{**{k: inv[k] for k in SwitchInfo.__dataclass_fields__}, "snmp_version": "v1"})
            await client.set_power(v1, 1, False)
            assert not cluster.board("pi-1").powered and await client.port_status(v1, 2) == "off"
            wrong = SwitchInfo(**{**{k: inv[k] for k in SwitchInfo.__dataclass_fields__},
                                  "snmp_version": "v3", "v3_priv_key": "not-the-privacy-key"})
            with pytest.raises(SnmpError, match="sw1"):
                await client.set_power(wrong, 1, True)
            assert not cluster.board("pi-1").powered
        finally:
            client.close()


async def test_admin_api_v3_switch_sealed_at_rest(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, boards=2) as (cluster, _key):
        inv = cluster.inventory()["switch"]
        config = agent_config(tmp_path)
        app = create_app(config)
        body = {**{k: inv[k] for k in FIELDS}, "snmp_version": "v3", "v3_user": inv["v3_user"],
                "v3_auth_protocol": "SHA", "v3_priv_protocol": "AES"}
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
                r = await c.post("/api/admin/switches", json=body, headers=ADMIN)
                assert r.status_code == 422 and "v3_auth_key" in r.text  # pass phrases needed
                assert (await c.post("/api/admin/switches", json={**body, "v3_user": ""},
                                     headers=ADMIN)).status_code == 422
                keys = {"v3_auth_key": inv["v3_auth_key"], "v3_priv_key": inv["v3_priv_key"]}
                r = await c.post("/api/admin/switches", json={**body, **keys}, headers=ADMIN)
                assert r.status_code == 201, r.text
                out = r.json()
                assert out["snmp_version"] == "v3" and out["v3_user"] == "piseduce" and out["v3_keys_set"]
                assert inv["v3_auth_key"] not in r.text and inv["v3_priv_key"] not in r.text
                r = await c.post("/api/admin/switches/sw1/ports/2/on", headers=ADMIN)
                assert r.status_code == 200 and cluster.board("pi-2").powered
                # at rest: no clear secret in the row, and the key file is the owner's only
                row = _switch_row(config)
                assert row["community"] == "" and row["secrets"].startswith("gAAAA")
                assert all(inv[k] not in str(row) for k in ("v3_auth_key", "v3_priv_key", "community"))
                assert stat.S_IMODE(config.key_path.stat().st_mode) == 0o600
                # an edit without the pass phrases keeps them; a wrong one stops the switch answering
                r = await c.put("/api/admin/switches/sw1", json={**body, "port_count": inv["port_count"]},
                                headers=ADMIN)
                assert r.status_code == 200
                assert (await c.get("/api/admin/switches/sw1/ports", headers=ADMIN)).status_code == 200
                # an edit with no v3 field at all (issue 16 testers: it dropped the user and pass
                # phrases) keeps the stored ones, as the admin guide §5 says; the switch still answers
                plain = {k: v for k, v in body.items() if k != "snmp_version" and not k.startswith("v3_")}
                r = await c.put("/api/admin/switches/sw1", json={**plain, "port_count": inv["port_count"]},
                                headers=ADMIN)
                assert r.status_code == 200, r.text
                out = r.json()
                assert out["snmp_version"] == "v3" and out["v3_user"] == "piseduce", out
                assert out["v3_keys_set"] is True, out
                assert (await c.get("/api/admin/switches/sw1/ports", headers=ADMIN)).status_code == 200
                r = await c.put("/api/admin/switches/sw1", json={**body, "v3_priv_key": "wrong-wrong"},
                                headers=ADMIN)
                assert r.status_code == 200
                r = await c.get("/api/admin/switches/sw1/ports", headers=ADMIN)
                assert r.status_code == 502 and "wrong-wrong" not in r.text
                # back to v2c with the community: the v3 keys may stay, the community is used
                r = await c.put("/api/admin/switches/sw1",
                                json={**body, "snmp_version": "v2c", "community": inv["community"]},
                                headers=ADMIN)
                assert r.status_code == 200 and r.json()["snmp_version"] == "v2c"
                ports = (await c.get("/api/admin/switches/sw1/ports", headers=ADMIN)).json()
                assert [p["status"] for p in ports][:2] == ["off", "on"]
        finally:
            await app.state.agent.driver.close()


def test_clear_communities_of_older_rows_are_sealed(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    path = config.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO switches (name, ip, snmp_port, community, poe_oid, oid_offset, port_count,"
                   " power_oid, power_oid_offset, master_port) VALUES"
                   " ('old', '10.0.0.2', 161, 'legacy-community',"
                   " '1.3.6.1.2.1.105.1.1.1.3.1', 0, 8, '', 0, 0)")
    sessions = sessions_for(config)
    keyring = SwitchKeyring(config.key_path)
    assert seal_clear_communities(sessions, keyring) == 1
    row = _switch_row(config)
    assert row["community"] == "" and "legacy-community" not in row["secrets"]
    assert row["snmp_version"] == "v2c"
    with sessions() as s:
        from piseduce.agent.models import Switch

        info = keyring.info(s.get(Switch, "old"))
    assert info.community == "legacy-community" and "legacy-community" not in repr(info)
    assert seal_clear_communities(sessions, keyring) == 0
