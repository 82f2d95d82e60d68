"""The agent's firmware folder and the firmwares users upload with the deploy form.

Every name is checked against a strict pattern and every path is resolved and required to stay
inside the folder, so no user input can make the agent read or write anything else (the original
agent joined user input into a path and could upload any local file). Uploads go to a per-reservation
subfolder `.uploads/r<id>/`, hidden from the list, and are removed when the reservation is destroyed.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import tempfile
from pathlib import Path

from piseduce.agent.drivers.base import InvalidParams

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
UPLOAD_EXTENSIONS = (".elf", ".bin", ".hex")
MAX_UPLOAD_BYTES = 4 * 1024 * 1024
UPLOADS = ".uploads"


def check_name(field: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise InvalidParams(field, "a file name of letters, digits, '.', '_' and '-' (no folder, no '..')")
    return name


class FirmwareStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _inside(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self.folder.resolve())
        except OSError:
            return False

    def names(self) -> list[str]:
        """Firmware files offered in the deploy form (symlinks leading outside are left out)."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name
            for p in self.folder.iterdir()
            if NAME.fullmatch(p.name) and p.is_file() and self._inside(p)
        )

    def path(self, name: str, field: str = "firmware") -> Path:
        """The file of a firmware of the folder; InvalidParams when there is no such file."""
        check_name(field, name)
        candidate = self.folder / name
        if not self._inside(candidate) or not candidate.is_file():
            raise InvalidParams(field, f"no firmware named {name!r} in the agent's firmware folder")
        return candidate

    def upload_dir(self, reservation_id: int) -> Path:
        return self.folder / UPLOADS / f"r{int(reservation_id)}"

    def uploaded(self, reservation_id: int, name: str) -> Path:
        check_name("firmware_file_name", name)
        candidate = self.upload_dir(reservation_id) / name
        if not self._inside(candidate) or not candidate.is_file():
            raise InvalidParams("firmware_file", f"the uploaded firmware {name!r} is gone: upload it again")
        return candidate

    def save_upload(self, reservation_id: int, name: str, encoded: str) -> Path:
        """Decode a base64 (or data: URL) upload and store it as the reservation's only upload."""
        check_name("firmware_file_name", name)
        if not name.lower().endswith(UPLOAD_EXTENSIONS):
            raise InvalidParams(
                "firmware_file_name", f"a firmware file ends with one of {', '.join(UPLOAD_EXTENSIONS)}"
            )
        if encoded.startswith("data:"):
            encoded = encoded.partition(",")[2]
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParams("firmware_file", "the uploaded firmware must be base64-encoded") from None
        if not content:
            raise InvalidParams("firmware_file", "the uploaded firmware is empty")
        if len(content) > MAX_UPLOAD_BYTES:
            raise InvalidParams(
                "firmware_file", f"the uploaded firmware is larger than {MAX_UPLOAD_BYTES} bytes"
            )
        if name.lower().endswith(".elf") and not content.startswith(b"\x7fELF"):
            raise InvalidParams("firmware_file", "the uploaded .elf file is not an ELF binary")
        target_dir = self.upload_dir(reservation_id)
        self.remove_uploads(reservation_id)
        target_dir.mkdir(parents=True, exist_ok=True)
        if not self._inside(target_dir):
            raise InvalidParams("firmware_file", "the firmware folder is misconfigured")
        # Write then rename, so that an executor never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        target = target_dir / name
        os.replace(tmp, target)
        return target

    def remove_uploads(self, reservation_id: int) -> None:
        target = self.upload_dir(reservation_id)
        if target.is_dir() and not target.is_symlink() and self._inside(target):
            shutil.rmtree(target)
