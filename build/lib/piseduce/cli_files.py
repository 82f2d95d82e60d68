"""Files and folders named on a command line. One that cannot be used (missing, a folder where a
file is expected, a folder that cannot be made) stops the command with one line naming the option
and the path (`piseduce.cli.main` prints it), never a traceback."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class FileOptionError(Exception):
    """A file or folder given on the command line cannot be used; the message says which and why."""


def _why(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder, not a file"
    if isinstance(exc, NotADirectoryError):
        return "a part of its path is a file, not a folder"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def read_text(path: Path, option: str) -> str:
    """The text of the file given as `option`."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileOptionError(f"{option} {path}: cannot read it: {_why(exc)}") from None
    except UnicodeDecodeError:
        raise FileOptionError(f"{option} {path}: cannot read it: not a text file") from None


def writable_file(path: Path, option: str) -> None:
    """`path` (given as `option`) can be written: its folder exists and takes files."""
    folder = path.parent
    if path.is_dir():
        raise FileOptionError(f"{option} {path}: cannot write it: it is a folder, not a file")
    if not folder.is_dir():
        raise FileOptionError(f"{option} {path}: cannot write it: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise FileOptionError(f"{option} {path}: cannot write it: permission denied in {folder}")


def usable_folder(path: Path, option: str) -> None:
    """`path` (given as `option`) is a folder, made with its parents when missing."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FileOptionError(f"{option} {path}: not a folder (a file of that name exists)") from None
    except OSError as exc:
        raise FileOptionError(f"{option} {path}: cannot make this folder: {_why(exc)}") from None


def replace_text(path: Path, text: str, option: str) -> None:
    """Write `text` to `path` (given as `option`), mode 0644, replacing any older file atomically:
    a reader (or a crash) sees the old file or the new one, never a part."""
    writable_file(path, option)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # whatever the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise FileOptionError(f"{option} {path}: cannot write it: {_why(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)
