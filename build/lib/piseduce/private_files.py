"""Files only the service's own account may read: databases, key files, secrets (mode 0600, the
folders PiSeduce creates for them 0700).

Created with their mode from the first byte (never written, then chmod-ed), and atomically: a
key file is written to a temporary name and linked into place, so two processes starting at once
never see a half-written key, and the first one wins. Existing files that others may read are
tightened (no access for "others" any more, with a log line), so that an installation upgraded from
an older version, whose database was created 0644, is fixed too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700 (existing folders are left alone: a
    shared /var/lib or a home folder is the administrator's)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)


def tighten(path: Path) -> None:
    """Take away the access of "others" to an existing file of ours that holds secrets (the group's
    is left: an administrator may share a file with a group on purpose)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007 and st.st_uid == os.geteuid():
        os.chmod(path, mode & ~0o007)
        log.warning("%s was readable by every account; it holds secrets: mode now %04o", path, mode & ~0o007)


def touch_private(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (a SQLite database, before SQLite
    creates it with the default 0644; its -wal and -shm files get the database's mode); tighten it
    if it does."""
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        tighten(path)
        return
    os.close(fd)


def open_private(path: Path) -> BinaryIO:
    """A new, empty file at `path` for writing, mode 0600 from its first byte whatever the umask
    (an image saved from a user's card, a file being received). A file left there by an earlier
    attempt is removed first, never truncated in place: it might be a hard link to another file
    of ours; a symbolic link put there is refused (O_NOFOLLOW), so that a folder others can write
    to cannot redirect the write."""
    path.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may only take bits away; nothing adds them later
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def owner_only(path: Path) -> bool:
    """Make an existing file of ours mode 0600 (a private environment's image that an older version
    left readable); True when its mode changed. Files of other accounts are left alone."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, mode & 0o700)
        return True
    return False


def world_writable(path: Path) -> bool:
    """Whether every account may create, replace or link files in the folder `path`."""
    try:
        return bool(path.stat().st_mode & stat.S_IWOTH)
    except FileNotFoundError:
        return False


def create_private(path: Path, data: bytes) -> bool:
    """Write `data` to `path` (mode 0600) unless it exists; True when this call created it."""
    make_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the file exists: never overwrites, and atomic
        except FileExistsError:
            return False
        except OSError:
            return _create_exclusive(path, data)  # a file system without hard links
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def replace_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` (mode 0600 from its first byte), replacing any older file atomically."""
    make_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
