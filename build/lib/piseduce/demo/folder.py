"""The demo's data folder: private folders, JSON files written whole, the SSH key pairs, the
generated secrets (kept across restarts), the OS images and firmwares the testbeds are given."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piseduce import crypto
from piseduce.private_files import create_private, make_private_dir

CREDENTIALS_FILE = "credentials.json"


def private_folder(path: Path, *, ours: bool = True) -> Path:
    """A folder of the demo holding databases, keys or logs: 0700, tightened when an earlier run
    left it 0755. `ours=False` (the data folder, which the user names): tightened only when it is a
    demo's folder already (it holds credentials.json), never a folder of the user's."""
    make_private_dir(path)
    if (ours or (path / CREDENTIALS_FILE).exists()) and path.stat().st_uid == os.geteuid():
        os.chmod(path, 0o700)
    return path


def write_json(path: Path, data: Any, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.replace(path)


def demo_firmwares(folder: Path) -> None:
    """Two tiny firmwares with an ELF32 ARM header: enough for the emulator, which does not run them."""
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    for label in ("tutorial_m3", "blink_m3"):
        path = folder / f"{label}.elf"
        if not path.exists():
            ident = b"\x7fELF\x01\x01\x01" + b"\0" * 9
            header = struct.pack(
                "<HHIIIIIHHHHHH", 2, 40, 1, 0x08000000, 52, 0, 0x05000000, 52, 32, 0, 40, 0, 0
            )
            path.write_bytes(ident + header + label.encode())


def ssh_keypair(path: Path, comment: str) -> str:
    """An ed25519 key pair (private 0600); returns the public key line."""
    import asyncssh

    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
        create_private(path, key.export_private_key())  # 0600 from its first byte
        key.write_public_key(str(path) + ".pub")
    return Path(str(path) + ".pub").read_text().strip()


@dataclass
class Secrets:
    """Generated once per data folder and kept there (mode 0600), so a restart keeps the logins."""

    path: Path
    values: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, length: int = 20) -> str:
        if not self.values and self.path.exists():
            self.values = json.loads(self.path.read_text())
        if key not in self.values:
            self.values[key] = crypto.generate_password(length)
            write_json(self.path, self.values)
        return self.values[key]


def build_environments(env_dir: Path) -> list[str]:
    from piseduce.sim.images import build_environment

    env_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for flavor in ("raspios", "ubuntu"):
        sidecars = [p for p in env_dir.glob("*.json") if json.loads(p.read_text()).get("flavor") == flavor]
        if sidecars:
            names.append(json.loads(sidecars[0].read_text())["name"])
            continue
        env = build_environment(env_dir, flavor, size_mb=64, compress="gz")
        env["flavor"] = flavor
        (env_dir / f"{env['image']}.json").write_text(json.dumps(env, indent=2))
        names.append(env["name"])
    return names
