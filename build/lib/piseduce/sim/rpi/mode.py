"""Which kind of boards this machine can run.

real: each board a network namespace on a bridged board network, running Debian's sshd over the
root filesystem of its card (needs root, util-linux, iproute2, openssh-server and overlayfs).
in-process: an SSH server per board inside the simulator, on a loopback port, with a small
command set; only where the real mode is impossible.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

REAL = "real"
IN_PROCESS = "in-process"
MODES = ("auto", REAL, IN_PROCESS)
TOOLS = {"unshare": "util-linux", "nsenter": "util-linux", "setpriv": "util-linux", "mount": "mount",
         "ip": "iproute2", "tc": "iproute2"}
SSHD = Path("/usr/sbin/sshd")


@functools.lru_cache(maxsize=1)
def real_mode_problem() -> str | None:
    """Why the real mode cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "not root (network namespaces, mounts and Debian's sshd need root)"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (apt-get install {package})"
    if not SSHD.exists():
        return "Debian's sshd is not installed (apt-get install openssh-server)"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        return "the kernel has no overlay filesystem"
    done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount", "--", "true"],
                          capture_output=True, text=True, check=False, timeout=20)
    if done.returncode != 0:
        return f"namespaces cannot be created here: {done.stderr.strip() or done.returncode}"
    return None


def resolve(wanted: str) -> tuple[str, str]:
    """(mode, why) for the wanted mode: auto picks the real mode wherever it can run."""
    if wanted not in MODES:
        raise ValueError(f"unknown mode {wanted!r} (one of {', '.join(MODES)})")
    problem = real_mode_problem() if wanted != IN_PROCESS else None
    if wanted == REAL and problem:
        raise RuntimeError(f"the real mode cannot run: {problem}")
    if wanted == IN_PROCESS:
        return IN_PROCESS, "asked for"
    if problem:
        return IN_PROCESS, problem
    return REAL, "network namespaces available"
