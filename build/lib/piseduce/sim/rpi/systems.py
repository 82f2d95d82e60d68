"""What a simulated board boots into, decided like the Pi firmware would from its TFTP folder.

- cmdline.txt with `root=/dev/nfs`: the shared NFS system (hostname nfspi, root with the keys of
  `<nfs_root>/root/.ssh/authorized_keys`).
- cmdline.txt with `root=PARTUUID=<disk id>-02` or `root=/dev/mmcblk0p2`: the system on the card,
  whose hostname, accounts, keys and password hashes are read from the card's root filesystem,
  and its SSH host key: a card without one (a deployment removes the image's) gets a new one at
  its first boot, as Raspberry Pi OS's regenerate_ssh_host_keys does (the real mode's boards run
  ssh-keygen in `boardsetup`; the in-process ones use `card_host_key` below).
- anything else (no folder, no cmdline.txt, a root that does not match the card): no system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from piseduce.node.disk import DiskError, read_table
from piseduce.node.fs import Ext4, Fat, FileSpec
from piseduce.node.system import Account, parse_passwd, parse_shadow, verify_password

NFS_HOSTNAME = "nfspi"
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "")
ROOT_RE = re.compile(r"(?:^|\s)root=(\S+)")
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"


class NoSystem(Exception):
    """The board powers on but no operating system comes up (the reason is for the logs)."""


@dataclass
class System:
    kind: str  # "nfs" | "deployed"
    hostname: str
    accounts: dict[str, Account]
    shadow: dict[str, str] = field(default_factory=dict)
    authorized_keys: dict[str, str] = field(default_factory=dict)
    ssh_enabled: bool = True
    nfs_keys_file: Path | None = None
    os_release: str = ""
    root_offset: int = 0  # bytes: where the card's root partition starts, and its size
    root_size: int = 0
    host_key: bytes = b""  # the private key on the card (deployed systems, in-process mode)

    def keys_for(self, user: str) -> str:
        if self.nfs_keys_file is not None:
            if user != "root":
                return ""
            try:
                return self.nfs_keys_file.read_text()
            except OSError:
                return ""
        return self.authorized_keys.get(user, "")

    def password_ok(self, user: str, password: str) -> bool:
        # the images' sshd_config says PermitRootLogin prohibit-password
        return self.kind == "deployed" and user != "root" and user in self.accounts and verify_password(
            password, self.shadow.get(user, "!")
        )


ROOT_ACCOUNT = Account("root", 0, 0, "/root", "/bin/bash")


def read_cmdline(folder: Path) -> str:
    try:
        return (folder / "cmdline.txt").read_text()
    except OSError as exc:
        raise NoSystem(f"no cmdline.txt in {folder}") from exc


def decide(folder: Path, card: Path, nfs_root: Path, *, make_host_key: bool = False) -> System:
    """Boots from folder; blocking (reads the card with debugfs/mtools): run it in a thread.

    make_host_key: the in-process boards' first boot of a card makes its host key here (a real-mode
    board makes its own, inside the board: `boardsetup`)."""
    cmdline = read_cmdline(folder)
    match = ROOT_RE.search(cmdline)
    if match is None:
        raise NoSystem("cmdline.txt names no root filesystem")
    root = match.group(1)
    if root == "/dev/nfs":
        if "nfsroot=" not in cmdline:
            raise NoSystem("root=/dev/nfs without nfsroot=")
        return System("nfs", NFS_HOSTNAME, {"root": ROOT_ACCOUNT},
                      nfs_keys_file=nfs_root / "root" / ".ssh" / "authorized_keys")
    return _card_system(card, root, make_host_key)


def _card_system(card: Path, root: str, make_host_key: bool) -> System:
    try:
        table = read_table(card)
    except DiskError as exc:
        raise NoSystem(str(exc)) from exc
    if table is None:
        raise NoSystem("the card has no partition table")
    if root.startswith("PARTUUID="):
        if root.lower() != f"partuuid={table.partuuid_prefix}-02":
            raise NoSystem(f"no partition {root} on the card")
    elif root != "/dev/mmcblk0p2":
        raise NoSystem(f"unsupported root {root}")
    try:
        part = table.get(2)
        rootfs = Ext4(card, part.offset)
        files = rootfs.read_files(["/etc/hostname", "/etc/passwd", "/etc/shadow", "/etc/os-release"])
        if files["/etc/passwd"] is None:
            raise NoSystem("the root filesystem has no /etc/passwd")
        accounts = {
            name: acc for name, acc in parse_passwd(files["/etc/passwd"].decode()).items()
            if acc.shell not in NOLOGIN_SHELLS
        }
        homes = {name: f"{acc.home.rstrip('/')}/.ssh/authorized_keys" for name, acc in accounts.items()}
        key_files = rootfs.read_files(sorted(set(homes.values())))
        boot_names = Fat(card, table.get(1).offset).names()
        host_key = card_host_key(rootfs, files["/etc/hostname"]) if make_host_key else b""
    except DiskError as exc:
        raise NoSystem(f"kernel panic: cannot mount the root filesystem ({exc})") from exc
    os_release = (files["/etc/os-release"] or b"").decode(errors="replace")
    hostname = (files["/etc/hostname"] or b"localhost").decode(errors="replace").strip() or "localhost"
    # Raspberry Pi OS starts sshd only when `ssh` is on the boot partition; Ubuntu always does
    ssh_enabled = "ID=ubuntu" in os_release or any(n.lower() in ("ssh", "ssh.txt") for n in boot_names)
    return System(
        "deployed",
        hostname,
        accounts,
        shadow=parse_shadow((files["/etc/shadow"] or b"").decode(errors="replace")),
        authorized_keys={n: (key_files.get(p) or b"").decode(errors="replace") for n, p in homes.items()},
        ssh_enabled=ssh_enabled,
        os_release=os_release,
        root_offset=part.offset,
        root_size=part.size,
        host_key=host_key,
    )


def card_host_key(rootfs: Ext4, hostname: bytes | None) -> bytes:
    """The card's ed25519 host key, made and written on the card when it carries none (its first
    boot): the same card serves the same key at every boot, a new deployment a new key."""
    private = rootfs.read_files([HOST_KEY])[HOST_KEY]
    if private:
        return private
    comment = f"root@{(hostname or b'localhost').decode(errors='replace').strip()}"
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    private = key.export_private_key("openssh")
    try:
        rootfs.write({HOST_KEY: FileSpec(private, 0o600),
                      f"{HOST_KEY}.pub": FileSpec(key.export_public_key("openssh"), 0o644)},
                     {"/etc/ssh": FileSpec(b"", 0o755)})
    except DiskError as exc:
        raise NoSystem(f"Kernel panic: generating the SSH host key: {exc}") from None
    return bytes(private)

