"""The per-board TFTP folder `<tftp_root>/<serial>/`: what a board boots next.

It holds either a copy of the NFS-boot template `<tftp_root>/rpiboot_uboot/` (the board comes up as
the shared netboot system) or the deployed image's own boot files (exported from its card). A
folder is always replaced as a whole: built next to it, then swapped in by renames, so a board
powering on meanwhile never sees half of each.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import uuid
from pathlib import Path, PurePosixPath

TEMPLATE = "rpiboot_uboot"
_SERIAL = re.compile(r"^[0-9A-Za-z]{4,64}$")
MAX_BOOT_BYTES = 1 << 30  # a FAT boot partition is 256-512 MB; refuse anything absurd


class BootFilesError(Exception):
    """The boot files cannot be installed (readable reason)."""


def boot_dir(tftp_root: Path, serial: str) -> Path:
    if not _SERIAL.match(serial or "") or serial == TEMPLATE:
        raise BootFilesError(f"invalid board serial {serial!r}: expected letters and digits")
    return tftp_root / serial


def _swap_in(staging: Path, dest: Path) -> None:
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    if dest.exists() or dest.is_symlink():
        os.rename(dest, old)
    os.rename(staging, dest)
    if old.is_symlink() or old.is_file():
        old.unlink()
    elif old.exists():
        shutil.rmtree(old)


def _staging(tftp_root: Path, serial: str) -> Path:
    path = tftp_root / f".{serial}.new-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    return path


def set_nfs_boot(tftp_root: Path, serial: str) -> None:
    """Point the board at the NFS-boot template (files copied, not linked: the template may change
    while a board boots, and a copy keeps each board's folder self-contained)."""
    dest = boot_dir(tftp_root, serial)
    template = tftp_root / TEMPLATE
    if not (template / "cmdline.txt").is_file():
        raise BootFilesError(
            f"the NFS-boot template {template}/ is missing (it must hold cmdline.txt with root=/dev/nfs)"
        )
    staging = _staging(tftp_root, serial)
    try:
        shutil.copytree(template, staging, symlinks=False, dirs_exist_ok=True)
        _swap_in(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_nfs_boot(tftp_root: Path, serial: str) -> bool:
    cmdline = boot_dir(tftp_root, serial) / "cmdline.txt"
    try:
        text = cmdline.read_text(errors="replace")
    except OSError:
        return False
    return "root=/dev/nfs" in text


def _safe_member(member: tarfile.TarInfo) -> PurePosixPath | None:
    """The member's relative path, None for entries to skip; BootFilesError for hostile ones."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise BootFilesError(f"boot archive holds an absolute path: {name!r}")
    if any(part == ".." for part in path.parts):
        raise BootFilesError(f"boot archive holds a path leaving its folder: {name!r}")
    if member.issym() or member.islnk():
        raise BootFilesError(f"boot archive holds a link ({name!r}); a FAT boot partition has none")
    if not (member.isfile() or member.isdir()):
        raise BootFilesError(f"boot archive holds a special file: {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        return None
    return PurePosixPath(*parts)


def check_cmdline(folder: Path) -> None:
    """The deployed boot files must boot the card, never the shared NFS root: a user's kernel
    command line pointing at it would give them root on the system every other board netboots."""
    cmdline = folder / "cmdline.txt"
    if not cmdline.is_file():
        raise BootFilesError("the exported boot files have no cmdline.txt")
    text = cmdline.read_text(errors="replace")
    if "nfsroot=" in text or "root=/dev/nfs" in text:
        raise BootFilesError("refusing boot files whose cmdline.txt mounts an NFS root (root=/dev/nfs)")


def install_boot_archive(tftp_root: Path, serial: str, archive: Path) -> int:
    """Replace the board's folder by the files of an (uncompressed) tar archive; returns the file count."""
    dest = boot_dir(tftp_root, serial)
    staging = _staging(tftp_root, serial)
    count = 0
    total = 0
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                rel = _safe_member(member)
                if rel is None:
                    continue
                target = staging.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True, mode=0o755)
                    continue
                total += member.size
                if total > MAX_BOOT_BYTES:
                    raise BootFilesError(f"boot archive larger than {MAX_BOOT_BYTES >> 20} MB")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                src = tar.extractfile(member)
                if src is None:
                    continue
                with src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(target, 0o644)
                count += 1
        if count == 0:
            raise BootFilesError("the boot archive is empty")
        check_cmdline(staging)
        _swap_in(staging, dest)
    except tarfile.TarError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BootFilesError(f"unreadable boot archive: {exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return count


def remove_boot(tftp_root: Path, serial: str) -> None:
    dest = boot_dir(tftp_root, serial)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
