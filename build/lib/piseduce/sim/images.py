"""Small bootable OS images for the simulator, built without root.

An image is a raw disk with an MBR (sfdisk), a FAT32 boot partition (mkfs.vfat + mtools) holding
Raspberry Pi boot files, and an ext4 root (`mkfs.ext4 -d`, owners fixed with debugfs) holding the
accounts of the distribution. The simulator boots it like a Pi would: kernel command line from the
boot files, users, keys and passwords from the root filesystem.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

import zstandard

from piseduce.node.disk import SECTOR
from piseduce.node.fs import Ext4, FileSpec

MIB = 1 << 20
BOOT_MIB = 34  # the smallest comfortable FAT32 (65525 clusters of 512 bytes)
Flavor = Literal["raspios", "ubuntu"]

FLAVORS: dict[str, dict[str, Any]] = {
    "raspios": {
        "name": "raspios_bookworm_sim",
        "user": "pi",
        "hostname": "raspberrypi",
        "boot_start": 8192,
        "root_label": "rootfs",
        "os_release": 'PRETTY_NAME="Raspbian GNU/Linux 12 (bookworm)"\nID=raspbian\nID_LIKE=debian\n'
                      'VERSION_ID="12"\n',
        "cmdline": "console=serial0,115200 console=tty1 root=PARTUUID={partuuid}-02 rootfstype=ext4 "
                   "fsck.repair=yes rootwait init=/usr/lib/raspi-config/init_resize.sh\n",
        "groups": ["sudo", "video"],
    },
    "ubuntu": {
        "name": "ubuntu_24.04_sim",
        "user": "ubuntu",
        "hostname": "ubuntu",
        "boot_start": 2048,
        "root_label": "writable",
        "os_release": 'PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n',
        "cmdline": "console=serial0,115200 dwc_otg.lpm_enable=0 console=tty1 root=/dev/mmcblk0p2 "
                   "rootfstype=ext4 rootwait fixrtc quiet splash\n",
        "groups": ["sudo", "adm"],
    },
}

BOOT_FILES = ["bootcode.bin", "start.elf", "start4.elf", "fixup.dat", "fixup4.dat", "kernel8.img",
              "kernel7l.img", "bcm2710-rpi-3-b-plus.dtb", "bcm2711-rpi-4-b.dtb"]


class ImageBuildError(Exception):
    pass


def _run(cmd: list[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None) -> None:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace').strip()}")


def _boot_tree(dest: Path, flavor: dict[str, Any], partuuid: str) -> None:
    for name in BOOT_FILES:
        # placeholders with a recognisable header: the simulator never executes them
        digest = hashlib.sha256(f"{flavor['name']}/{name}".encode()).digest()
        (dest / name).write_bytes(f"PISEDUCE-SIM {name}\n".encode() + digest * 64)
    (dest / "cmdline.txt").write_text(flavor["cmdline"].format(partuuid=partuuid))
    (dest / "config.txt").write_text(
        "# simulated Raspberry Pi boot configuration\narm_64bit=1\nenable_uart=1\ndtparam=audio=on\n"
    )
    (dest / "issue.txt").write_text(f"{flavor['name']} built by piseduce\n")
    (dest / "overlays").mkdir()
    (dest / "overlays" / "README").write_text("device tree overlays\n")


_PROFILE = """# /etc/profile: system-wide .profile file for the Bourne shell (sh(1))
if [ "$(id -u)" -eq 0 ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  PATH="/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
fi
export PATH
if [ "${PS1-}" ] && [ "${BASH-}" ] && [ "$BASH" != "/bin/sh" ] && [ -f /etc/bash.bashrc ]; then
  . /etc/bash.bashrc
fi
"""

_BASHRC = """# System-wide .bashrc file for interactive bash(1) shells.
[ -z "$PS1" ] && return
shopt -s checkwinsize
PS1='\\u@\\h:\\w\\$ '
"""

_SSHD_CONFIG = """# The distribution's OpenSSH server configuration
Include /etc/ssh/sshd_config.d/*.conf
PermitRootLogin prohibit-password
PasswordAuthentication yes
KbdInteractiveAuthentication no
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def _random_file(path: Path, mb: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(MIB))


def _root_tree(dest: Path, flavor: dict[str, Any]) -> None:
    """A merged-/usr Debian root: the programs themselves (an image for Raspberry Pis is aarch64)
    are the simulator's business; the accounts, configuration and layout are the image's."""
    user = flavor["user"]
    for d in ["etc/ssh/sshd_config.d", "etc/skel", "root", f"home/{user}", "boot", "tmp", "var/log",
              "var/tmp", "usr/bin", "usr/sbin", "usr/lib", "usr/local/bin", "dev", "proc", "sys", "run",
              "mnt", "srv", "opt", "media"]:
        (dest / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        os.chmod(dest / d, 0o1777)  # noqa: S103 - the temporary folders: world-writable, sticky
    for link in ("bin", "sbin", "lib"):
        os.symlink(f"usr/{link}", dest / link)
    etc = dest / "etc"
    (etc / "hostname").write_text(flavor["hostname"] + "\n")
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\t\tlocalhost\n127.0.1.1\t{flavor['hostname']}\n")
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "sshd:x:105:65534::/run/sshd:/usr/sbin/nologin\n"
        f"{user}:x:1000:1000:,,,:/home/{user}:/bin/bash\n"
    )
    groups = "".join(f"{g}:x:{gid}:{user}\n" for g, gid in zip(flavor["groups"], (27, 44), strict=True))
    (etc / "group").write_text(
        f"root:x:0:\ntty:x:5:\nshadow:x:42:\n{groups}{user}:x:1000:\nnogroup:x:65534:\n")
    (etc / "shadow").write_text(
        "root:*:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\nsshd:*:19700:0:99999:7:::\n"
        f"{user}:!:19700:0:99999:7:::\n"
    )
    (etc / "os-release").write_text(flavor["os_release"])
    (etc / "ssh" / "sshd_config").write_text(_SSHD_CONFIG)
    (etc / "fstab").write_text("proc /proc proc defaults 0 0\n")
    (etc / "profile").write_text(_PROFILE)
    (etc / "bash.bashrc").write_text(_BASHRC)
    (etc / "skel" / ".bashrc").write_text("# ~/.bashrc: executed by bash(1) for non-login shells.\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")


def _compress(raw: Path, compress: str | None) -> Path:
    if compress is None:
        return raw
    out = raw.with_name(raw.name + "." + compress)
    with open(raw, "rb") as src:
        if compress == "gz":
            with gzip.open(out, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        elif compress == "xz":
            with lzma.open(out, "wb", preset=1) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        elif compress == "zst":
            with open(out, "wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(f) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            raise ImageBuildError(f"unknown compression {compress!r}")
    raw.unlink()
    return out


def _copy_into(src: Path, dest: Path, offset: int) -> None:
    """Copy src into dest at offset, leaving zero blocks as holes."""
    with open(src, "rb") as s, open(dest, "r+b") as d:
        pos = offset
        while chunk := s.read(MIB):
            if chunk.count(0) != len(chunk):
                d.seek(pos)
                d.write(chunk)
            pos += len(chunk)


def build_environment(
    dest: Path,
    flavor: Flavor,
    *,
    size_mb: int = 64,
    compress: Literal["gz", "xz", "zst"] | None = "gz",
    random_mb: int = 0,
) -> dict[str, Any]:
    """Builds the image in the directory dest; returns the environment description.
    `random_mb` MiB of random data in one file of the root file system make the image that much
    incompressible (a benchmark of the transfer, where an empty image would gzip to kilobytes)."""
    if flavor not in FLAVORS:
        raise ImageBuildError(f"unknown flavor {flavor!r} (raspios or ubuntu)")
    spec = FLAVORS[flavor]
    boot_start = spec["boot_start"]
    boot_sectors = BOOT_MIB * MIB // SECTOR
    root_start = boot_start + boot_sectors
    total_sectors = size_mb * MIB // SECTOR
    root_sectors = total_sectors - root_start
    # ext4's own metadata takes a few percent of what the random file fills.
    root_needed = 16 * MIB + (random_mb * MIB * 11) // 10
    if random_mb < 0 or root_sectors * SECTOR < root_needed:
        raise ImageBuildError(
            f"size_mb must be at least {-(-(root_start * SECTOR + root_needed) // MIB)} "
            f"for {max(random_mb, 0)} MB of random data"
        )
    disk_id = int.from_bytes(hashlib.sha256(spec["name"].encode()).digest()[:4], "little")
    partuuid = f"{disk_id:08x}"
    dest.mkdir(parents=True, exist_ok=True)
    raw = dest / f"{spec['name']}.img"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    with tempfile.TemporaryDirectory(prefix="piseduce-img-") as tmp_name:
        tmp = Path(tmp_name)
        boot_dir, root_dir = tmp / "boot", tmp / "root"
        boot_dir.mkdir()
        root_dir.mkdir()
        _boot_tree(boot_dir, spec, partuuid)
        _root_tree(root_dir, spec)
        if random_mb:
            _random_file(root_dir / "usr/share/piseduce-random.bin", random_mb)
        fat, ext4 = tmp / "boot.vfat", tmp / "root.ext4"
        with open(fat, "wb") as f:
            f.truncate(boot_sectors * SECTOR)
        _run(["mkfs.vfat", "-F", "32", "-s", "1", "-S", "512", "-n", "BOOT", "-i", partuuid, str(fat)])
        files = sorted(p.name for p in boot_dir.iterdir())
        _run(["mcopy", "-s", "-i", str(fat), *[str(boot_dir / n) for n in files], "::/"], env=env)
        with open(ext4, "wb") as f:
            f.truncate(root_sectors * SECTOR)
        _run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-i", "65536", "-L", spec["root_label"],
              "-E", "root_owner=0:0", "-d", str(root_dir), str(ext4)])
        user = spec["user"]
        # mkfs copies the owners of the staging files; set them explicitly to build the same as non-root
        fs = Ext4(ext4, 0)
        home = FileSpec(b"", 0o755, 1000, 1000)
        fs.write({"/etc/shadow": FileSpec((root_dir / "etc/shadow").read_bytes(), 0o640, 0, 42)},
                 {f"/home/{user}": home, "/root": FileSpec(b"", 0o700)})
        with open(raw, "wb") as f:
            f.truncate(total_sectors * SECTOR)
        table = (
            f"label: dos\nlabel-id: 0x{partuuid}\nunit: sectors\n"
            f"start={boot_start}, size={boot_sectors}, type=c, bootable\n"
            f"start={root_start}, size={root_sectors}, type=83\n"
        )
        _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)], stdin=table.encode())
        _copy_into(fat, raw, boot_start * SECTOR)
        _copy_into(ext4, raw, root_start * SECTOR)
    size = raw.stat().st_size
    image = _compress(raw, compress)
    sha = hashlib.sha256()
    with open(image, "rb") as f:
        while chunk := f.read(MIB):
            sha.update(chunk)
    return {
        "name": spec["name"],
        "image": image.name,
        "size": size,
        "sector_start": root_start,
        "ssh_user": user,
        "checksum": sha.hexdigest(),
    }
