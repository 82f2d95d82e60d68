"""A simulated board's boot: `python -m piseduce.sim.rpi.boardsetup SPEC.json`, as PID 1 of the
board's new PID, mount and UTS namespaces, inside its network namespace (see `netd_systems`).

It builds the board's root filesystem and switches into it (pivot_root: the host's filesystem is
not even reachable afterwards), then becomes the board's init (`board_init`):

- deployed system: the card's root partition (ext4, through a loop device on the card file);
  netboot system: the NFS root, read-only, under a tmpfs overlay of this boot (what a board writes
  there is its own and vanishes at reboot, as with a read-only NFS root);
- /usr: an overlay, read-only, of the board's own tools (its init's reboot/poweroff, and on the
  netboot system `piseduce-node`), then the image's /usr, then the host's, which gives the
  programs the image carries none of (sshd, bash, coreutils, python3, rsync, sftp-server...);
- /proc of the board's PID namespace, with the board's cpuinfo and /proc/sys read-only; /sys with
  the board's thermal zone; /dev with the usual nodes, its own devpts and, on the netboot system,
  the card as /dev/mmcblk0; /run a tmpfs;
- on a card that carries no SSH host key (a deployment removes the image's), a new one is made at
  this first boot, as Raspberry Pi OS's regenerate_ssh_host_keys does: each deployment gives the
  board a key never seen before, and sshd serves the key of the card it booted.

Capabilities that reach beyond the board (mounting, raw I/O, modules, device nodes, the clock...)
are dropped from the bounding set: root on a board is root of that board only.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from piseduce.sim.rpi import board_init

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MNT_DETACH = 2
PR_CAPBSET_DROP = 24
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "armv7l": 218, "i686": 217,
                  "ppc64le": 203, "s390x": 217}
# chown dac_override fowner fsetid kill setgid setuid setpcap net_bind_service net_admin net_raw
# sys_chroot audit_write setfcap: what sshd, su and a user's root need inside the board.
KEEP_CAPS = {0, 1, 3, 4, 5, 6, 7, 8, 10, 12, 13, 18, 29, 31}
DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]
EXIT_BOOT_FAILED = 20


class BootError(Exception):
    pass


def _mount(src: str | None, target: str, fstype: str | None = None, flags: int = 0,
           data: str | None = None) -> None:
    enc = [None if v is None else v.encode() for v in (src, target, fstype, data)]
    if libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        raise BootError(f"mount {fstype or 'bind'} on {target}: {os.strerror(ctypes.get_errno())}")


def _bind(src: str, target: str, *, ro: bool = False) -> None:
    _mount(src, target, None, MS_BIND)
    if ro:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch()


def _safe_option(path: str) -> str:
    if any(c in path for c in ",:\\") or any(c.isspace() for c in path):
        raise BootError(f"unsupported path for an overlay: {path!r}")
    return path


def mount_root(spec: dict[str, Any], root: Path) -> None:
    if spec["kind"] == "deployed":
        # the mount binary sets up the loop device with autoclear: it goes with the last mount
        cmd = ["mount", "-t", "ext4", "-o", f"loop,rw,offset={int(spec['root_offset'])},"
               f"sizelimit={int(spec['root_size'])}", spec["card"], str(root)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BootError(f"cannot mount the root filesystem: {done.stderr.strip()}")
        return
    scratch = _safe_option(spec["scratch"])
    _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for sub in ("upper", "work"):
        os.mkdir(f"{scratch}/{sub}")
    options = (f"lowerdir={_safe_option(spec['nfs_root'])},upperdir={scratch}/upper,"
               f"workdir={scratch}/work")
    _mount("overlay", str(root), "overlay", 0, options)


def merged_usr(root: Path) -> None:
    """Mount points, and the /bin, /sbin, /lib links of a merged-/usr Debian where they are missing."""
    for d in ("usr", "proc", "sys", "dev", "run", "tmp", "etc"):
        (root / d).mkdir(exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        if not os.path.lexists(root / link):
            os.symlink(f"usr/{link}", root / link)


def mount_usr(spec: dict[str, Any], root: Path) -> None:
    layers = [f"{spec['tools']}/usr", str(root / "usr"), "/usr"]
    options = "lowerdir=" + ":".join(_safe_option(p) for p in layers)
    _mount("overlay", str(root / "usr"), "overlay", MS_RDONLY, options)


def mount_proc_sys(spec: dict[str, Any], root: Path) -> None:
    proc = str(root / "proc")
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _bind(spec["cpuinfo"], f"{proc}/cpuinfo", ro=True)
    for path in ("sys", "sysrq-trigger"):
        if os.path.exists(f"{proc}/{path}"):  # (a kernel without magic SysRq has no trigger)
            _bind(f"{proc}/{path}", f"{proc}/{path}", ro=True)
    sysfs = root / "sys"
    _mount("tmpfs", str(sysfs), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755")
    zone = sysfs / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    _touch(zone / "temp")
    _bind(spec["thermal"], str(zone / "temp"), ro=True)
    _mount(None, str(sysfs), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_dev(spec: dict[str, Any], root: Path) -> None:
    dev = root / "dev"
    _mount("tmpfs", str(dev), "tmpfs", MS_NOSUID, "mode=0755")
    for name in DEVICES:
        _touch(dev / name)
        _bind(f"/dev/{name}", str(dev / name))
    (dev / "pts").mkdir()
    _mount("devpts", str(dev / "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
           "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.symlink("pts/ptmx", dev / "ptmx")
    os.symlink("/proc/self/fd", dev / "fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", dev / name)
    (dev / "shm").mkdir()
    _mount("tmpfs", str(dev / "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    if spec["kind"] == "nfs":
        _touch(dev / "mmcblk0")
        _bind(spec["card"], str(dev / "mmcblk0"))
    run = root / "run"
    _mount("tmpfs", str(run), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    (run / "sshd").mkdir(mode=0o755)
    (run / "lock").mkdir(mode=0o755)


def extra_binds(spec: dict[str, Any], root: Path) -> None:
    """Read-only host folders at the same path (the netboot system's Python for piseduce-node)."""
    for path in spec.get("binds", []):
        target = root / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        _bind(path, str(target), ro=True)


SSH_KEYGEN = "/usr/bin/ssh-keygen"


def make_host_key(spec: dict[str, Any]) -> None:
    """After the switch of root, so that every path (a symlink on the card too) resolves inside
    the board: a hostile image cannot make this write anywhere else. The key is the card's from
    then on: later boots of the same system serve it again."""
    if spec["kind"] != "deployed":
        return  # the netboot system's key comes with its NFS root
    ssh = Path("/etc/ssh")
    ssh.mkdir(parents=True, exist_ok=True)
    if any(ssh.glob("ssh_host_*_key")):
        return
    argv = [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"root@{spec['hostname']}",
            "-f", str(ssh / "ssh_host_ed25519_key")]
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise BootError(f"generating the SSH host key: {exc}") from None


def pivot(root: Path) -> None:
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise BootError(f"no pivot_root for {platform.machine()}")
    if libc.syscall(number, b".", b".") != 0:
        raise BootError(f"pivot_root: {os.strerror(ctypes.get_errno())}")
    if libc.umount2(b".", MNT_DETACH) != 0:
        raise BootError(f"detaching the host's filesystem: {os.strerror(ctypes.get_errno())}")
    os.chdir("/")


def drop_caps() -> None:
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if cap not in KEEP_CAPS and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise BootError(f"dropping capability {cap}: {os.strerror(ctypes.get_errno())}")


def boot(spec: dict[str, Any]) -> None:
    root = Path(spec["root"])
    # private from here down: nothing mounted for this board is seen anywhere else
    _mount(None, "/", None, MS_REC | (1 << 18))
    mount_root(spec, root)
    merged_usr(root)
    mount_usr(spec, root)
    mount_proc_sys(spec, root)
    mount_dev(spec, root)
    extra_binds(spec, root)
    socket.sethostname(spec["hostname"])
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "LANG": "C.UTF-8"})
    pivot(root)
    make_host_key(spec)
    drop_caps()


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    sys.stderr.write(f"piseduce-sim: booting the {spec['kind']} system of {spec['hostname']}\n")
    try:
        boot(spec)
    except (BootError, OSError) as exc:
        sys.stderr.write(f"Kernel panic - not syncing: {exc}\n")
        sys.stderr.flush()
        board_init._ready(int(spec["ready_fd"]), f"boot failed: {exc}")
        return EXIT_BOOT_FAILED
    return board_init.run(int(spec["ready_fd"]), bool(spec.get("ssh", True)),
                          float(spec.get("drop_rate", 0.0)), spec.get("seed"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
