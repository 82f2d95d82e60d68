"""A powered-off board is no longer measured: its last temperature must not be shown as current,
neither on the web UI's monitoring page nor in the agent's Prometheus gauges."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from helpers.constants import TOKEN
from helpers.raspberry_helpers import agent_config, sessions_for
from piseduce.agent.app import create_app
from piseduce.agent.models import Node, Sample
from piseduce.db import write_session
from piseduce.webui.routes.monitoring import latest


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def test_the_latest_table_does_not_show_an_old_temperature_as_current() -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rounds = [_iso(now - dt.timedelta(seconds=30 * k)) for k in (4, 3, 2, 1, 0)]
    # pi-1 was powered off two rounds ago: 0 W since, and no temperature read since.
    data: dict[str, Any] = {"agents": [{
        "agent": "rpi-lab", "error": "",
        "power": [{"node": "pi-1", "t": rounds, "v": [5.1, 5.0, 5.2, 0.0, 0.0]},
                  {"node": "pi-2", "t": rounds, "v": [4.0] * 5},
                  {"node": "pi-3", "t": rounds[:2], "v": [4.4, 4.5]}],
        "temperature": [{"node": "pi-1", "t": rounds[:3], "v": [52.0, 52.5, 53.0]},
                        {"node": "pi-2", "t": rounds, "v": [47.0] * 5},
                        {"node": "pi-3", "t": rounds[:2], "v": [44.0, 44.5]}],
    }], "errors": []}
    rows = {r["node"]: r for r in latest(data)}
    assert rows["pi-1"]["off"] is True and rows["pi-1"]["power"] == 0.0
    assert "temperature" not in rows["pi-1"] and rows["pi-1"]["temperature_at"] == rounds[2]
    assert rows["pi-2"]["temperature"] == 47.0 and rows["pi-2"]["off"] is False
    # pi-3 (a switch without power readings, or SNMP lost) stopped being measured entirely.
    assert "power" not in rows["pi-3"] and "temperature" not in rows["pi-3"]
    assert rows["pi-3"]["temperature_at"] == rows["pi-3"]["time"] == rounds[1]


def test_the_page_says_off_instead_of_the_last_temperature(tmp_path: Path) -> None:
    from jinja2 import Environment, FileSystemLoader

    from piseduce.webui import web

    folder = Path(web.__file__).parent / "templates"
    env = Environment(loader=FileSystemLoader(folder), autoescape=True)
    env.filters["time"] = lambda value, *_: str(value)[11:19]
    macro = env.from_string(
        (folder / "monitoring.html").read_text().split("<tbody>", 1)[1].split("</tbody>", 1)[0])
    html = macro.render(latest=[{"node": "pi-1", "agent": "rpi-lab", "power": 0.0, "off": True,
                                 "temperature_at": "2026-01-01T10:00:00Z", "time": "2026-01-01T10:02:00Z"}])
    cells = [c.split("</td>")[0].strip() for c in html.split("<td>")[1:]]
    assert cells[2] == "0.00"
    assert cells[3].startswith('<span class="muted">off</span>') and "52" not in cells[3]
    assert "last read 10:00:00" in cells[3]


def test_metrics_drop_the_temperature_of_a_board_powered_off(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    config = agent_config(tmp_path, monitor_period_seconds=30)
    sessions = sessions_for(config)
    now = dt.datetime.now(dt.UTC)
    old, new = now - dt.timedelta(seconds=35), now - dt.timedelta(seconds=5)
    rows = [
        {"time": old, "kind": "power", "subject": "pi-1", "value": 5.0},
        {"time": old, "kind": "temperature", "subject": "pi-1", "value": 52.0},
        {"time": new, "kind": "power", "subject": "pi-1", "value": 0.0},  # powered off since
        {"time": old, "kind": "power", "subject": "pi-2", "value": 4.0},
        {"time": old, "kind": "temperature", "subject": "pi-2", "value": 47.0},
        {"time": new, "kind": "power", "subject": "pi-2", "value": 4.1},
        {"time": new, "kind": "temperature", "subject": "pi-2", "value": 47.5},
    ]
    with write_session(sessions) as s:
        for i in (1, 2):
            s.add(Node(name=f"pi-{i}", ip="127.0.0.1", attrs={"switch": "sw1", "port": i}))
        s.execute(insert(Sample), rows)
    with TestClient(create_app(config)) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'piseduce_port_power_watts{node="pi-1",port="1",switch="sw1"} 0.0' in text
    assert 'piseduce_node_temperature_celsius{node="pi-1"}' not in text
    assert 'piseduce_node_temperature_celsius{node="pi-2"} 47.5' in text
