"""Where `pisctl login` keeps the web UI's address and the token: `credentials.json` in
`$XDG_CONFIG_HOME/piseduce/` (`~/.config/piseduce/`), mode 0600 from its first byte, folder 0700.
`PISEDUCE_URL` and `PISEDUCE_TOKEN` override it (a CI job's secrets), never a command-line option:
a token typed as an argument lands in the shell's history and in every `ps` listing."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from piseduce.client.errors import PiseduceError
from piseduce.private_files import FILE_MODE, make_private_dir

URL_ENV, TOKEN_ENV = "PISEDUCE_URL", "PISEDUCE_TOKEN"


@dataclass(frozen=True)
class Login:
    url: str
    token: str


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    # XDG: a relative XDG_CONFIG_HOME is invalid and ignored.
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "piseduce"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def save(login: Login) -> Path:
    """Write the file atomically (a temporary 0600 file renamed over the old one)."""
    path = credentials_path()
    make_private_dir(path.parent)
    tmp = path.with_name(f".credentials.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": login.url, "token": login.token}, f)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load() -> Login:
    """The login to use: the environment's, else the file's; a line saying what to do otherwise."""
    url, token = os.environ.get(URL_ENV, ""), os.environ.get(TOKEN_ENV, "")
    if url and token:
        return Login(url, token)
    path = credentials_path()
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise PiseduceError(f"not logged in: run `pisctl login URL` first (no {path})") from None
    if not stat.S_ISREG(st.st_mode):
        raise PiseduceError(f"{path} is not a regular file: remove it and run `pisctl login URL`")
    if stat.S_IMODE(st.st_mode) & 0o077:
        # Like OpenSSH with a private key: a token others can read is refused, not used.
        raise PiseduceError(
            f"{path} can be read by other accounts (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"chmod 600 {path}, and revoke the token in Settings if others could read it"
        )
    try:
        data = json.loads(path.read_text())
        file_login = Login(str(data["url"]), str(data["token"]))
    except (ValueError, KeyError, TypeError):
        raise PiseduceError(
            f"{path} is not a pisctl credentials file: run `pisctl login URL` again"
        ) from None
    return Login(url or file_login.url, token or file_login.token)


def forget() -> bool:
    path = credentials_path()
    if path.exists():
        path.unlink()
        return True
    return False
