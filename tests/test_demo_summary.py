"""What `piseduce demo` prints once it is up (the whole demo runs in test_demo.py)."""

from __future__ import annotations

from piseduce.demo.announce import summary


def test_the_demo_prints_every_login_and_where_its_password_is() -> None:
    info = {
        "url": "http://127.0.0.1:9000/",
        "admin": {"email": "admin@piseduce.local", "password": "admin-pw"},
        "user": {"email": "demo@piseduce.local", "password": "demo-pw", "ssh_key": "/d/demo_user_key"},
        "testbeds": {
            "g5k": {"login": "demo", "password": "g5k-pw", "url": "http://127.0.0.1:8100/stable"},
            "iotlab": {"login": "demo", "password": "iot-pw", "url": "http://127.0.0.1:8101/api/"},
        },
        "agents": [{"name": "rpi-lab"}, {"name": "g5k-nancy"}, {"name": "iotlab-strasbourg"}],
        "data": "/d",
    }
    text = "\n".join(summary(info))
    for expected in (
        "passwords  in /d/credentials.json (mode 0600), never printed",
        "admin      admin@piseduce.local   (password: jq -r .admin_password /d/credentials.json)",
        "demo user  demo@piseduce.local   (password: jq -r .demo_password /d/credentials.json",
        "Grid'5000  demo   (password: jq -r .g5k_password /d/credentials.json",
        "http://127.0.0.1:8100/stable",
        "IoT-LAB    demo   (password: jq -r .iot_password /d/credentials.json",
        "http://127.0.0.1:8101/api/",
    ):
        assert expected in text, (expected, text)
    # What a terminal prints may end up in a log: no password in it.
    for password in ("admin-pw", "demo-pw", "g5k-pw", "iot-pw"):
        assert password not in text


def test_the_demo_prints_the_gateways_jump_line() -> None:
    info = {
        "url": "u", "admin": {"email": "a", "password": "p"},
        "user": {"email": "d", "password": "p", "ssh_key": "/d/k"},
        "testbeds": {"g5k": {"login": "l", "password": "p", "url": "g"},
                     "iotlab": {"login": "l", "password": "p", "url": "i"}},
        "agents": [{"name": "rpi-lab"}], "data": "/d",
        "gateway": {"host": "127.0.0.1", "port": 9105, "user": "jump"},
    }
    text = "\n".join(summary(info))
    assert "gateway    ssh -J jump@127.0.0.1:9105 pi@<board>" in text
    assert "pisctl ssh-config" in text
    # OpenSSH gives -i to the board, not to the gateway: the key goes to ssh-agent first.
    assert "ssh-add /d/k" in text and "-i /d/k" not in text.replace("pisctl ssh -i /d/k", "")


def test_the_demo_says_where_the_gateway_listens() -> None:
    """`piseduce demo --help` (what `./run demo --help` shows) names every port around the base one,
    the SSH gateway's base+4 too, and the printed line says the same."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "piseduce.cli", "demo", "--help"],
                          capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert "SSH gateway on base+4" in " ".join(done.stdout.replace("│", " ").split()), done.stdout
    info = {
        "url": "u", "admin": {"email": "a", "password": "p"},
        "user": {"email": "d", "password": "p", "ssh_key": "/d/k"},
        "testbeds": {"g5k": {"login": "l", "password": "p", "url": "g"},
                     "iotlab": {"login": "l", "password": "p", "url": "i"}},
        "agents": [{"name": "rpi-lab"}], "data": "/d",
        "gateway": {"host": "127.0.0.1", "port": 8094, "user": "jump"},
    }
    assert "SSH gateway on 127.0.0.1:8094 (base port + 4)" in "\n".join(summary(info))
