"""What the demo tells once it is up: the summary lines (the URL and how to show each login),
the emulators' addresses for the field's clients, the ready file the tests read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from piseduce.demo.configure import DEMO_USER, G5K_LOGIN, IOT_LOGIN
from piseduce.demo.folder import CREDENTIALS_FILE, write_json
from piseduce.demo.phases import DemoRun
from piseduce.demo.supervisor import console


def pi_boards_line(inventory: dict[str, Any]) -> str:
    """What the simulated Pis are (`sim rpi` picks real hosts when it can)."""
    if inventory.get("mode") == "real":
        return (f"{len(inventory['boards'])} real Linux hosts (Debian's sshd, a real shell) on the board "
                f"network {inventory['network']}, reachable from this machine")
    return f"{len(inventory['boards'])} in-process SSH servers on loopback (not root: no real boards)"


def emulators(run: DemoRun, info: dict[str, Any]) -> dict[str, Any]:
    """The emulators' addresses and logins, for the field's clients (the user guide reads them)."""
    g5k, iot = info["testbeds"]["g5k"], info["testbeds"]["iotlab"]
    sw = run.inventory["switch"]
    return {
        "grid5000": {"uri": g5k["url"], "login": g5k["login"], "password": g5k["password"]},
        "iotlab": {"api_url": iot["url"], "login": iot["login"], "password": iot["password"]},
        "switch": {"host": sw["ip"], "port": sw["snmp_port"], "community": sw["community"],
                   **{k: sw[k] for k in ("v3_user", "v3_auth_key", "v3_priv_key") if k in sw}},
    }


def announce(run: DemoRun, ready_file: Path | None) -> None:
    data, sec = run.data, run.sec
    info: dict[str, Any] = {
        "url": run.web_url,
        "admin": {"email": run.admin_email, "password": sec.get("admin_password")},
        "user": {
            "email": DEMO_USER,
            "password": sec.get("demo_password"),
            "ssh_key": str(data / "demo_user_key"),
        },
        "agents": [{k: a[k] for k in ("name", "node_type", "port")} for a in run.agents],
        "testbeds": {
            "g5k": {"login": G5K_LOGIN, "password": sec.get("g5k_password"),
                    "url": f"http://127.0.0.1:{run.ports.g5k_sim}/stable"},
            "iotlab": {"login": IOT_LOGIN, "password": sec.get("iot_password"),
                       "url": f"http://127.0.0.1:{run.ports.iot_sim}/api/"},
        },
        "switch": f"{run.inventory['switch']['ip']}:{run.inventory['switch']['snmp_port']}",
        "pids": [c.proc.pid for c in run.sup.children],
        "processes": {c.name: c.proc.pid for c in run.sup.children},
        "pi_boards": {"mode": run.inventory.get("mode"), "network": run.inventory.get("network"),
                      "line": pi_boards_line(run.inventory)},
        "data": str(data),
        "gateway": {"host": "127.0.0.1", "port": run.ports.gateway, "user": "jump"},
    }
    write_json(data / "emulators.json", emulators(run, info))  # 0600: it holds the passwords
    for line in summary(info):
        console.print(line, highlight=False, soft_wrap=True)  # a path stays whole, to be copied
    if ready_file is not None:
        write_json(ready_file, info)


def summary(info: dict[str, Any]) -> list[str]:
    """What the demo prints once it is up: the URL and every login, the simulated testbeds' too.
    The passwords stay in the data folder's credentials file (mode 0600): what a terminal prints
    may end up in a log; the lines say how to show each one."""
    data = Path(info["data"])
    creds = data / CREDENTIALS_FILE
    g5k, iot, user = info["testbeds"]["g5k"], info["testbeds"]["iotlab"], info["user"]

    def show(key: str) -> str:
        return f"password: jq -r .{key} {creds}"

    return [
        f"\n[bold green]PiSeduce demo is up:[/] {info['url']}",
        f"  passwords  in {creds} (mode 0600), never printed",
        f"  admin      {info['admin']['email']}   ({show('admin_password')})",
        f"  demo user  {user['email']}   ({show('demo_password')}; SSH key: {user['ssh_key']})",
        f"  Grid'5000  {g5k['login']}   ({show('g5k_password')}; the emulator at {g5k['url']}, "
        "already in the demo user's Settings)",
        f"  IoT-LAB    {iot['login']}   ({show('iot_password')}; the emulator at {iot['url']}, "
        "already in the demo user's Settings)",
        f"  agents     {', '.join(a['name'] for a in info['agents'])}; logs in {data / 'logs'}",
        *([f"  switch     SNMP v1/v2c/v3 on {info['switch']}"] if info.get("switch") else []),
        f"  clients    the emulators' addresses and logins are in {data / 'emulators.json'} "
        "(user guide: 'Your own clients against the demo')",
        *([f"  Pi boards  {info['pi_boards']['line']}"] if info.get("pi_boards") else []),
        *([f"  gateway    ssh -J {info['gateway']['user']}@127.0.0.1:{info['gateway']['port']} pi@<board> "
           f"(SSH gateway on 127.0.0.1:{info['gateway']['port']} (base port + 4); Manage shows each board's "
           "line and ~/.ssh/config block; pisctl ssh-config prints it)"]
          if info.get("gateway") else []),
        "[dim]Hint: log in as the demo user, Reserve two Pis, Deploy, then on Manage copy the ssh command; "
        f"first `ssh-add {user['ssh_key']}` (OpenSSH gives -i to the board, not to the gateway; "
        f"or `pisctl ssh -i {user['ssh_key']} NODE`). Ctrl-C stops everything.[/]",
    ]
