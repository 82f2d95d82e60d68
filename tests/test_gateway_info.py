"""The agent tells users about its SSH gateway: `/api/info` carries the public host, port, user
and the gateway's host key (the one `piseduce agent gateway` serves), and says nothing of a
gateway when none is configured; a host name that would break an ssh command is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from helpers.agent_helpers import headers, write_config
from piseduce.agent.gateway import host_key
from piseduce.config import ConfigError, load_agent_config
from piseduce.protocol import AgentInfo

ALICE = headers("alice@lab")


async def info_of(cfg: Any) -> dict[str, Any]:
    from piseduce.agent.app import create_app

    app = create_app(cfg)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
            r = await c.get("/api/info", headers=ALICE)
            assert r.status_code == 200, r.text
            return dict(r.json())
    finally:
        app.state.agent.engine.dispose()


async def test_info_says_nothing_of_a_gateway_when_none_is_configured(make_agent_config: Any) -> None:
    cfg = make_agent_config()
    info = await info_of(cfg)
    assert info.get("gateway") is None
    assert AgentInfo.model_validate(info).gateway is None
    assert not cfg.resolve(cfg.gateway_host_key_file).exists()  # no key made for nothing


async def test_info_advertises_the_gateway_and_its_host_key(make_agent_config: Any) -> None:
    cfg = make_agent_config(
        gateway_public_host="gw.lab.example", gateway_port=2222, gateway_public_port=22022
    )
    # The API starts first: it makes the key the gateway will serve (and reads it, later).
    info = await info_of(cfg)
    gw = info["gateway"]
    assert gw["host"] == "gw.lab.example" and gw["port"] == 22022 and gw["user"] == "jump"
    key = host_key(cfg.resolve(cfg.gateway_host_key_file))
    assert gw["host_key"] == " ".join(key.export_public_key().decode().split()[:2])
    assert asyncssh.import_public_key(gw["host_key"]).get_fingerprint() == key.get_fingerprint()
    assert cfg.resolve(cfg.gateway_host_key_file).stat().st_mode & 0o777 == 0o600
    parsed = AgentInfo.model_validate(info).gateway
    assert parsed is not None and parsed.jump == "jump@gw.lab.example:22022"
    assert parsed.known_hosts_name == "[gw.lab.example]:22022"


def test_the_key_made_twice_is_one_key(tmp_path: Path) -> None:
    a = host_key(tmp_path / "k")
    b = host_key(tmp_path / "k")
    assert a.export_public_key() == b.export_public_key()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temporary file left


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "gw lab", "gw\nHost *", "gw;id"])
def test_a_public_host_that_would_break_an_ssh_line_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="gateway_public_host"):
        load_agent_config(write_config(tmp_path, gateway_public_host=host))
