"""pisctl and the client on their own (no web UI needed): what they refuse before asking anyone,
the credentials file, importing without the server's parts, the sync and async twins."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.pisctl_helpers import User, one_error_line
from piseduce.client import AsyncClient, Client, calls
from piseduce.client import models as m
from piseduce.client.errors import PiseduceError
from piseduce.client.ssh import target_of

SERVER_PARTS = ("fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn", "asyncssh", "pysnmp", "jinja2",
                "argon2", "psycopg", "cryptography", "iotlabcli", "grid5000", "prometheus_client")


def test_client_and_cli_import_without_the_server_parts() -> None:
    """A laptop with httpx, pydantic, typer and rich only: none of the server's packages is loaded."""
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {SERVER_PARTS!r}:
            raise ImportError('server part imported: ' + name)
sys.meta_path.insert(0, Block())
import piseduce.client, piseduce.client.cli.app, piseduce.client.ssh
sys.argv = ['pisctl', '--help']
piseduce.client.cli.app.main()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "reserve" in done.stdout and "deploy" in done.stdout


def test_sync_and_async_clients_have_the_same_methods() -> None:
    def public(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(fn).parameters)
            for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }

    sync, aio = public(Client), public(AsyncClient)
    assert sync == aio
    for name in ("reserve", "deploy", "wait_deployed", "release", "events", "free_nodes", "extend"):
        assert name in sync
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)) or inspect.isasyncgenfunction(
            getattr(AsyncClient, name)
        )


def test_every_command_but_ssh_has_json(tmp_path: Path) -> None:
    from piseduce.client.cli.app import app

    user = User(tmp_path)
    names = [c.name or c.callback.__name__ for c in app.registered_commands if c.callback]
    assert {"login", "nodes", "schedule", "reserve", "deploy", "status", "ssh", "extend", "reboot",
            "release", "envs"} <= set(names)
    for name in names:
        ran = user.run(name, "--help")
        assert ran.code == 0, ran.err
        assert ("--json" in ran.out) == (name != "ssh"), (name, ran.out)


def test_not_logged_in_says_what_to_do(tmp_path: Path) -> None:
    ran = User(tmp_path).run("status")
    assert ran.code == 1
    assert "run `pisctl login URL` first" in one_error_line(ran)


def test_a_credentials_file_others_can_read_is_refused(tmp_path: Path) -> None:
    user = User(tmp_path)
    user.credentials.parent.mkdir(parents=True)
    user.credentials.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "pst_x"}))
    user.credentials.chmod(0o644)
    ran = user.run("status")
    assert ran.code == 1
    line = one_error_line(ran)
    assert "can be read by other accounts" in line and "chmod 600" in line


def test_login_refuses_plain_http_off_this_machine_before_reading_the_token(tmp_path: Path) -> None:
    user = User(tmp_path)
    ran = user.run("login", "http://piseduce.example.org", stdin="pst_secret\n")
    assert ran.code == 2
    assert "plain http" in one_error_line(ran)
    assert not user.credentials.exists()
    assert "pst_secret" not in ran.err + ran.out


def test_login_to_nothing_writes_nothing(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = User(tmp_path)
    ran = user.run("login", f"http://127.0.0.1:{port}", stdin="pst_secret\n")
    assert ran.code == 1
    assert "no answer from the web UI" in one_error_line(ran)
    assert not user.credentials.exists()
    assert "pst_secret" not in ran.err + ran.out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["login", "not a url"], "is not a web UI address"),
        (["reserve", "--count", "2", "--start", "tomorrow-ish"], "--start 'tomorrow-ish'"),
        (["reserve", "--hours", "2"], "give either --nodes"),
        (["reserve", "--count", "1", "--nodes", "a/b"], "give either --nodes"),
        (["deploy", "--set", "novalue"], "--set 'novalue'"),
        (["release"], "say which reservations"),
    ],
)
def test_bad_words_get_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    user = User(tmp_path)
    user.credentials.parent.mkdir(parents=True)
    # Logged in to a web UI that is not there: every refusal here comes before any call.
    user.credentials.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "pst_x"}))
    user.credentials.chmod(0o600)
    ran = user.run(*args, stdin="pst_x\n")
    assert ran.code == 2, ran.err
    assert words in one_error_line(ran)


def test_typer_usage_errors_exit_2(tmp_path: Path) -> None:
    ran = User(tmp_path).run("reserve", "--count", "zero")
    assert ran.code == 2
    assert "Traceback" not in ran.err


def reservation(**connection: object) -> m.Reservation:
    return m.Reservation.model_validate({
        "key": "rpi/1", "agent": "rpi", "id": 1, "node": "pi-1", "type": "raspberry", "owner": "a@x.org",
        "bin": "", "status": "deployed", "step": "", "progress": None, "start": "2026-12-01T10:00:00Z",
        "end": "2026-12-01T12:00:00Z", "actions": [], "connection": connection,
    })


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk4ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn"


@pytest.mark.parametrize(
    "connection",
    [
        {"host": "-oProxyCommand=touch /tmp/pwned", "user": "pi", "port": 22, "host_key": KEY},
        {"host": "10.0.0.1", "user": "-oProxyCommand=x", "port": 22, "host_key": KEY},
        {"host": "10.0.0.1\n", "user": "pi", "port": 22, "host_key": KEY},
        {"host": "10.0.0.1", "user": "pi", "port": 22, "host_key": KEY + "\n@cert-authority * " + KEY},
        {"host": "10.0.0.1", "user": "pi", "port": 70000, "host_key": KEY},
        {"host": "10.0.0.1", "user": "pi", "port": 22, "jump": "-oProxyCommand=evil"},
    ],
)
def test_hostile_connection_info_never_reaches_openssh(connection: dict[str, object]) -> None:
    with pytest.raises(PiseduceError):
        target_of(reservation(**connection))


def test_shell_completion_as_the_guide_documents_it(tmp_path: Path) -> None:
    """`pisctl --install-completion` in bash, then a new shell: TAB completes commands and options
    (bash calls the installed function with the command's name, as done here)."""
    user = User(tmp_path)
    user.env["SHELL"] = "/bin/bash"
    installed = user.run("--install-completion")
    assert installed.code == 0, installed.err
    pisctl_dir = str(Path(sys.executable).parent)
    script = (
        'source "$HOME/.bashrc"; '
        'COMP_WORDS=(pisctl re); COMP_CWORD=1; _pisctl_completion pisctl; printf "%s\\n" "${COMPREPLY[@]}"; '
        'echo --; COMP_WORDS=(pisctl reserve --co); COMP_CWORD=2; _pisctl_completion pisctl; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**user.env, "PATH": pisctl_dir + ":/usr/bin:/bin"}
    done = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, env=env,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    commands, options = done.stdout.split("--\n")
    assert set(commands.split()) == {"reserve", "reboot", "redeploy", "release"}
    assert options.split() == ["--count"]
def logged_in_nowhere(tmp_path: Path) -> User:
    """Logged in to a web UI that is not there: whatever is refused comes before any call."""
    user = User(tmp_path)
    user.credentials.parent.mkdir(parents=True)
    user.credentials.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "pst_x"}))
    user.credentials.chmod(0o600)
    return user


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["reserve", "--count", "1", "--hours", "inf"], "--hours must be a number of hours above 0.01"),
        (["reserve", "--count", "1", "--hours", "nan"], "(got nan)"),
        (["reserve", "--count", "1", "--hours", "0"], "--hours must be a number of hours above 0.01"),
        (["reserve", "--count", "1", "--hours", "-1"], "(got -1)"),
        (["reserve", "--count", "1", "--hours", "1e9"], "at most 8784"),
        (["reserve", "--count", "0"], "--count must be a whole number from 1 (got 0)"),
        (["reserve", "--count", "zero"], "--count must be a whole number from 1 (got zero)"),
        (["extend", "rpi/1", "--hours", "inf"], "--hours must be a number of hours above 0.01 (got inf)"),
        (["extend", "rpi/1", "--hours", "-inf"], "(got -inf)"),
        (["nodes", "--free", "nan"], "--free must be a number of hours"),
        (["schedule", "--hours", "inf"], "--hours must be a number of hours"),
        (["deploy", "rpi/1", "--wait", "--timeout", "nan"], "--timeout must be a number of seconds"),
    ],
)
def test_every_bad_number_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    ran = logged_in_nowhere(tmp_path).run(*args)
    assert ran.code == 2, ran.err
    line = one_error_line(ran)
    assert words in line, line
    assert ">= 0.01" not in line


@pytest.mark.parametrize(
    "args",
    [["reserve", "--bogus"], ["reserve", "--count"], ["status", "a", "--hours", "1"], ["nosuchcommand"]],
)
def test_typer_usage_errors_are_one_line_not_a_box(tmp_path: Path, args: list[str]) -> None:
    ran = logged_in_nowhere(tmp_path).run(*args)
    assert ran.code == 2, ran.err
    line = one_error_line(ran)
    assert "--help" in line and "╭" not in ran.err


def test_help_shows_no_bool_metavar_on_flags(tmp_path: Path) -> None:
    for command in ("reserve", "deploy", "ssh", "status"):
        ran = User(tmp_path).run(command, "--help")
        assert ran.code == 0, ran.err
        assert "<bool>" not in ran.out and "BOOLEAN" not in ran.out, ran.out


@pytest.mark.parametrize(
    "call",
    [
        lambda api: api.reserve(count=1, hours=float("nan")),
        lambda api: api.reserve(count=1, hours=float("inf")),
        lambda api: api.reserve(count=1, hours=-1),
        lambda api: api.reserve(count=0, hours=1),
        lambda api: api.extend("rpi/1", float("inf")),
        lambda api: api.extend("rpi/1", 0),
        lambda api: api.send(calls.action("rpi/1", "extend", {"hours": float("nan")})),  # any body
    ],
)
def test_the_client_raises_its_own_error_for_a_bad_number(call: object) -> None:
    with Client("http://127.0.0.1:9", "pst_x") as api, pytest.raises(PiseduceError) as refused:
        call(api)  # type: ignore[operator]
    assert "Out of range float" not in str(refused.value)
    assert "hours" in str(refused.value) or "count" in str(refused.value) or "finite" in str(refused.value)


def test_the_async_client_raises_its_own_error_for_a_bad_number() -> None:
    import asyncio

    async def run() -> None:
        async with AsyncClient("http://127.0.0.1:9", "pst_x") as api:
            with pytest.raises(PiseduceError):
                await api.reserve(count=1, hours=float("nan"))
            with pytest.raises(PiseduceError):
                await api.extend("rpi/1", float("inf"))

    asyncio.run(run())


def test_set_ssh_keys_takes_keys_or_a_key_file(tmp_path: Path) -> None:
    """`--set ssh_keys=…` is a list of keys to the agent: one key, keys one per line, or @a .pub
    file (as `ssh-copy-id -i` takes one); a line that is not a key is refused before any call."""
    from piseduce.client import forms
    from piseduce.client.errors import BadValues

    fields = [
        m.FormField(name="environment", label="OS", kind="select", choices=[], required=True, help=""),
        m.FormField(name="ssh_keys", label="Keys", kind="ssh_keys", choices=[], required=False, help=""),
    ]
    one = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne me@a"
    two = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQTwo b@c"
    got = forms.fill(fields, {"ssh_keys": one}, "raspios", "r-1")
    assert got == {"environment": "raspios", "ssh_keys": [one]}
    assert forms.fill(fields, {"ssh_keys": f"{one}\n\n{two}\n"}, "raspios", "r-1")["ssh_keys"] == [one, two]
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text(f"# mine\n{one}\n")
    assert forms.fill(fields, {"ssh_keys": f"@{pub}"}, "raspios", "r-1")["ssh_keys"] == [one]
    with pytest.raises(BadValues, match="ssh_keys: .*not an SSH public key"):
        forms.fill(fields, {"ssh_keys": "hello"}, "raspios", "r-1")
    with pytest.raises(BadValues, match="ssh_keys=@"):
        forms.fill(fields, {"ssh_keys": f"@{tmp_path / 'none.pub'}"}, "raspios", "r-1")
