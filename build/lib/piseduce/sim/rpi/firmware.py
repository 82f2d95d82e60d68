"""What a real-mode board brings of its own, besides the image: its init's control commands, and
on the netboot system `piseduce-node`; and the NFS root's system files.

The tools are a small folder per board, the top layer of the board's read-only /usr:
`/usr/sbin/{reboot,poweroff,halt,shutdown}` ask the board's init (PID 1) to restart or stop the
board, like busybox's do; `/usr/local/bin/piseduce-node` (netboot system only) runs the real helper
at this board's card speed. They refuse to act anywhere but on a simulated board.
`/usr/lib/piseduce/drop_session.py` is the ssh_drop_rate knob's session wrapper (`drop_session`),
which sshd runs only when the knob is on.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import piseduce
from piseduce.sim.rpi import drop_session
from piseduce.sim.rpi.card import CardSpeed

_CONTROL = """#!/bin/sh
# {name}: ask the simulated board's init to {what} (its PID 1 handles SIG{signal}).
if [ "$(id -u)" != 0 ]; then echo "{name}: must be superuser." >&2; exit 1; fi
if [ ! -e /run/piseduce-board ] || [ "$(cat /proc/1/comm 2>/dev/null)" != piseduce-init ]; then
  echo "{name}: not a simulated board, refusing" >&2; exit 1
fi
{body}
"""

_SHUTDOWN_BODY = """sig=USR2
for arg in "$@"; do case "$arg" in -r|--reboot) sig=TERM ;; esac; done
exec kill -s "$sig" 1"""

CONTROLS = {
    "reboot": ("restart the board", "TERM", "exec kill -s TERM 1"),
    "poweroff": ("power the board off", "USR2", "exec kill -s USR2 1"),
    "halt": ("halt the board", "USR1", "exec kill -s USR1 1"),
    "shutdown": ("stop (or with -r restart) the board", "USR2", _SHUTDOWN_BODY),
}


def _write(path: Path, text: str, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


def python_binds() -> list[str]:
    """Host folders the netboot system needs, read-only, to run this very piseduce-node: the
    interpreter's prefix (when not under /usr, which every board has), the virtual environment
    and the package's source folder (an editable install)."""
    paths = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
             Path(piseduce.__file__).resolve().parent.parent]
    out: list[str] = []
    for p in paths:
        if p == Path("/usr") or Path("/usr") in p.parents:
            continue
        if not any(p == Path(o) or Path(o) in p.parents for o in out):
            out = [o for o in out if p not in Path(o).parents]
            out.append(str(p))
    return out


def helper_launcher(speed: CardSpeed) -> str:
    python = os.path.join(sys.prefix, "bin", "python")
    module = ["-m", "piseduce.sim.rpi.card", *speed.argv(), "--"] if speed.limited else [
        "-m", "piseduce.node.cli"]
    args = " ".join(module)
    return ("#!/bin/sh\n# piseduce-node, the board helper; the simulated card sets its speed\n"
            f'exec {python} {args} "$@"\n')


def write_tools(folder: Path, *, netboot: bool, speed: CardSpeed) -> Path:
    """The board's tools layer for its next boot (rewritten each time: one system's tools only)."""
    if folder.exists():
        shutil.rmtree(folder)
    for name, (what, signal, body) in CONTROLS.items():
        text = _CONTROL.format(name=name, what=what, signal=signal, body=body)
        _write(folder / "usr" / "sbin" / name, text)
    if netboot:
        _write(folder / "usr" / "local" / "bin" / "piseduce-node", helper_launcher(speed))
    _write(folder / "usr" / "lib" / "piseduce" / "drop_session.py",
           Path(drop_session.__file__).read_text(), 0o644)
    return folder


NFS_FILES = {
    "etc/passwd": ("root:x:0:0:root:/root:/bin/bash\n"
                   "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                   "sshd:x:105:65534::/run/sshd:/usr/sbin/nologin\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", 0o644),
    "etc/group": "root:x:0:\ntty:x:5:\nshadow:x:42:\nnogroup:x:65534:\n",
    "etc/shadow": ("root:*:19700:0:99999:7:::\nsshd:*:19700:0:99999:7:::\n", 0o640),
    "etc/ssh/sshd_config": ("# The netboot system: the agent's key only, for root\n"
                            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                            "KbdInteractiveAuthentication no\n"
                            "Subsystem sftp /usr/lib/openssh/sftp-server\n", 0o644),
    "etc/os-release": 'PRETTY_NAME="PiSeduce netboot system"\nID=debian\n',
}


def complete_nfs_root(nfs_root: Path, host_key: Path | None = None) -> None:
    """The NFS system's accounts and SSH server configuration where missing, and its host key
    (one for all boards: they share the NFS root, as on a real pimaster)."""
    for rel, spec in NFS_FILES.items():
        text, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
        path = nfs_root / rel
        if not path.exists():
            _write(path, text, mode)
    for d in ("tmp",):
        (nfs_root / d).mkdir(exist_ok=True)
        os.chmod(nfs_root / d, 0o1777)  # noqa: S103 - /tmp: world-writable, sticky
    if host_key is not None:
        target = nfs_root / "etc" / "ssh" / "ssh_host_ed25519_key"
        data = host_key.read_bytes()
        if not target.exists() or target.read_bytes() != data:
            _write(target, data.decode(), 0o600)
        pub = Path(str(host_key) + ".pub")
        if pub.exists():
            _write(Path(str(target) + ".pub"), pub.read_text(), 0o644)
