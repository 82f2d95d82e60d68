"""System configuration of a written image: hostname, SSH keys, passwords, SSH service."""

from __future__ import annotations

import hmac
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

from piseduce.node.disk import DiskError
from piseduce.node.fs import Ext4, Fat, FileSpec

HOSTNAME_RE = re.compile(r"^(?=.{1,63}$)[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
KEY_RE = re.compile(
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( [^\n\r]*)?$"
)
RESIZE_INIT_RE = re.compile(r"\s*init=\S*init_resize\.sh")
SSH_DIR = "/etc/ssh"
HOST_KEY_RE = re.compile(r"^ssh_host_[A-Za-z0-9_]+_key(\.pub|-cert\.pub)?$")
# Raspberry Pi OS makes the host keys at first boot with this unit, which disables itself once run:
# an image saved from a deployed board has it disabled, so it is enabled again with the keys gone.
REGEN_UNIT = "regenerate_ssh_host_keys.service"
REGEN_UNIT_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system")
REGEN_WANTS = f"/etc/systemd/system/multi-user.target.wants/{REGEN_UNIT}"


def hash_password(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def verify_password(password: str, hashed: str) -> bool:
    if not hashed or hashed[0] in "!*":
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return hmac.compare_digest(crypt.crypt(password, hashed), hashed)


@dataclass(frozen=True)
class Settings:
    hostname: str
    user: str
    ssh_keys: list[str]
    password: str

    @classmethod
    def parse(cls, raw: Any) -> Settings:
        if not isinstance(raw, dict):
            raise DiskError("configure expects a JSON object on stdin")
        hostname, user = raw.get("hostname"), raw.get("user", "root")
        keys, password = raw.get("ssh_keys", []), raw.get("password")
        if not isinstance(hostname, str) or not HOSTNAME_RE.match(hostname):
            raise DiskError("hostname must be letters, digits and dashes (at most 63)")
        if not isinstance(user, str) or not USER_RE.match(user):
            raise DiskError("user must be a valid Unix user name")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise DiskError("ssh_keys must be a list of strings")
        keys = [k.strip() for k in keys if k.strip()]
        for key in keys:
            if not KEY_RE.match(key):
                raise DiskError("ssh_keys holds a line that is not an OpenSSH public key")
        if not isinstance(password, str) or not password or "\n" in password:
            raise DiskError("password must be a non-empty single-line string")
        return cls(hostname, user, keys, password)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def parse_passwd(text: str) -> dict[str, Account]:
    accounts = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2].isdigit() and fields[3].isdigit():
            accounts[fields[0]] = Account(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6])
    return accounts


def parse_shadow(text: str) -> dict[str, str]:
    return {f[0]: f[1] for f in (line.split(":") for line in text.splitlines()) if len(f) >= 2}


def _set_shadow(text: str, hashes: dict[str, str]) -> str:
    today = str(int(time.time() // 86400))
    lines, done = [], set()
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 2 and fields[0] in hashes:
            fields[1] = hashes[fields[0]]
            if len(fields) >= 3:
                fields[2] = today
            done.add(fields[0])
            line = ":".join(fields)
        lines.append(line)
    for name, hashed in hashes.items():
        if name not in done:
            lines.append(f"{name}:{hashed}:{today}:0:99999:7:::")
    return "\n".join(lines) + "\n"


def _set_hosts(text: str, hostname: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith("127.0.1.1")]
    if not any(line.split()[:1] == ["127.0.0.1"] for line in lines):
        lines.insert(0, "127.0.0.1\tlocalhost")
    lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def configure(root: Ext4, boot: Fat, settings: Settings) -> dict[str, Any]:
    current = root.read_files(["/etc/passwd", "/etc/shadow", "/etc/hosts"])
    if current["/etc/passwd"] is None:
        raise DiskError("the root filesystem has no /etc/passwd")
    accounts = parse_passwd(current["/etc/passwd"].decode())
    if settings.user not in accounts:
        raise DiskError(f"the image has no user {settings.user!r}")
    names = ["root"] if settings.user == "root" else ["root", settings.user]
    for name in names:
        if name not in accounts:
            raise DiskError(f"the image has no user {name!r}")
    hashed = hash_password(settings.password)
    shadow = _set_shadow((current["/etc/shadow"] or b"").decode(), {n: hashed for n in names})
    hosts = _set_hosts((current["/etc/hosts"] or b"").decode(), settings.hostname)
    keys = ("\n".join(settings.ssh_keys) + "\n").encode() if settings.ssh_keys else b""
    files = {
        "/etc/hostname": FileSpec(f"{settings.hostname}\n".encode(), 0o644),
        "/etc/hosts": FileSpec(hosts.encode(), 0o644),
    }
    dirs = {}
    for name in names:
        acc = accounts[name]
        home = acc.home.rstrip("/") or "/root"
        dirs[home] = FileSpec(b"", 0o700 if name == "root" else 0o755, acc.uid, acc.gid)
        dirs[f"{home}/.ssh"] = FileSpec(b"", 0o700, acc.uid, acc.gid)
        files[f"{home}/.ssh/authorized_keys"] = FileSpec(keys, 0o600, acc.uid, acc.gid)
    shadow_gid = _shadow_gid(root)
    files["/etc/shadow"] = FileSpec(shadow.encode(), 0o640, 0, shadow_gid)
    root.write(files, dirs)
    removed_keys = remove_host_keys(root)
    # raspios reads `ssh` on the boot partition at first boot to enable sshd
    boot.write("ssh", b"")
    removed = []
    cmdline = boot.read("cmdline.txt")
    if cmdline is not None:
        # the partition is already sized by `partition`: the first-boot resize script must not run
        fixed = RESIZE_INIT_RE.sub("", cmdline.decode())
        if fixed != cmdline.decode():
            boot.write("cmdline.txt", fixed.encode())
            removed.append("init_resize")
    return {"hostname": settings.hostname, "users": names, "keys": len(settings.ssh_keys), "changed": removed,
            "host_keys_removed": removed_keys}


def host_key_paths(root: Ext4, *, private_only: bool = False) -> list[str]:
    """The SSH host key files of the image (`/etc/ssh/ssh_host_*_key`, and their .pub with all)."""
    names = root.list_dir(SSH_DIR) or []
    return [f"{SSH_DIR}/{n}" for n in sorted(names)
            if HOST_KEY_RE.match(n) and not (private_only and n.endswith(".pub"))]


def remove_host_keys(root: Ext4) -> int:
    """Every host key the image carries goes: the board makes its own at first boot.

    An image saved from a deployed board (environment factory) holds that board's keys; kept, every
    board deployed from it would answer with them and could pass for the others.
    """
    paths = host_key_paths(root)
    root.remove(paths)
    units = root.read_files([f"{d}/{REGEN_UNIT}" for d in REGEN_UNIT_DIRS])
    unit = next((p for p, data in units.items() if data is not None), None)
    if paths and unit is not None:
        root.symlink(REGEN_WANTS, unit)
    return len(paths)


def _shadow_gid(root: Ext4) -> int:
    group = root.read_text("/etc/group") or ""
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == "shadow" and fields[2].isdigit():
            return int(fields[2])
    return 0
