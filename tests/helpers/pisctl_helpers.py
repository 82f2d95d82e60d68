"""Running `pisctl` as a user does: the installed entry point in a child process, with a home and
a config folder of its own, the token on standard input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.api_helpers import make_token as api_make_token

PISCTL = str(Path(sys.executable).parent / "pisctl")


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class User:
    """One researcher's shell: HOME and XDG_CONFIG_HOME in `folder`, no PISEDUCE_* variables."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.config = folder / "config"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PISEDUCE_")}
        self.env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.config), "COLUMNS": "200",
                         "TZ": "America/Montreal", "NO_COLOR": "1"})

    @property
    def credentials(self) -> Path:
        return self.config / "piseduce" / "credentials.json"

    def run(self, *args: str, stdin: str = "", timeout: float = 120) -> Ran:
        done = subprocess.run([PISCTL, *args], input=stdin, capture_output=True, text=True,
                              env=self.env, timeout=timeout, cwd=self.folder)
        return Ran(done.returncode, done.stdout, done.stderr)

    def login(self, url: str, token: str) -> Ran:
        ran = self.run("login", url, stdin=token + "\n")
        assert ran.code == 0, ran.err
        return ran


def one_error_line(ran: Ran) -> str:
    """The error a command printed: exactly one line on stderr, `error: …`, no traceback."""
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("error: "), ran.err
    assert "Traceback" not in ran.err
    return lines[0]


# ---------------------------------------------------------------- the API's spec


def response_schema(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The JSON schema of a route's success answer in the OpenAPI spec, its $refs resolvable."""
    paths = spec["paths"]
    # The API is an app of its own mounted at /api/v1: its spec may name paths with or without it.
    route = path if path in paths else path.removeprefix("/api/v1")
    op = paths[route][method.lower()]
    ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
    schema = ok["content"]["application/json"]["schema"]
    return {**schema, "components": spec.get("components", {})}


def validate(spec: dict[str, Any], method: str, path: str, data: Any) -> None:
    import jsonschema_rs  # schemathesis's own validator (OpenAPI 3.1 is JSON Schema 2020-12)

    jsonschema_rs.Draft202012Validator(response_schema(spec, method, path)).validate(data)


# ---------------------------------------------------------------- a node's SSH server


class SshNode:
    """An SSH server on a loopback port playing a deployed node: its own host key, the user's key
    authorized, each command answered with `<name> ran: <command>` (asyncssh, in a thread)."""

    def __init__(self, name: str, user_pub: str) -> None:
        import asyncio
        import threading

        import asyncssh

        self.name = name
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.public = self.host_key.export_public_key().decode().split()[:2]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def handle(process: Any) -> None:
            process.stdout.write(f"{self.name} ran: {process.command}\n")
            process.exit(0)

        async def start() -> Any:
            return await asyncssh.listen(
                "127.0.0.1", 0, server_host_keys=[self.host_key],
                authorized_client_keys=asyncssh.import_authorized_keys(user_pub),
                process_factory=handle,
            )

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.port = int(self.server.sockets[0].getsockname()[1])

    @property
    def key_line(self) -> str:
        return " ".join(self.public)

    def close(self) -> None:
        import asyncio

        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def user_key(folder: Path) -> tuple[Path, str]:
    """A researcher's ed25519 key pair: the private key file (0600) and the public line."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment="researcher")
    path = folder / "id_ed25519"
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    return path, key.export_public_key().decode().strip()


def make_token(config: Path, email: str, scope: str = "write", name: str = "pisctl test") -> str:
    """A personal access token of `email`, as Settings → API tokens creates it (its secret). The
    one of api_helpers: a write transaction from its start (a deferred one that read first failed
    with SQLITE_BUSY_SNAPSHOT, "database is locked", when the running web UI wrote meanwhile)."""
    return api_make_token(config, email, scope, None, name)
