"""Reading and editing the card's filesystems without mounting them.

ext4 goes through e2fsprogs' debugfs and FAT through mtools; both address a partition inside the
card (file or block device) by byte offset, so the same code runs on a board and in the simulator,
without root.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from piseduce.node.disk import DiskError, is_block_device, punch_hole

CHUNK = 1 << 20


def zero_region(fd: int, offset: int, length: int) -> None:
    """Zero a region of a regular file, keeping it sparse when the filesystem allows."""
    if not punch_hole(fd, offset, length):
        zero = bytes(CHUNK)
        pos = offset
        while pos < offset + length:
            pos += os.pwrite(fd, zero[: min(CHUNK, offset + length - pos)], pos)


def copy_sparse(src: int, src_off: int, dst: int, dst_off: int, length: int) -> None:
    """Copy the data extents of src[src_off:src_off+length] to dst at dst_off; holes are skipped."""
    pos, end = src_off, src_off + length
    while pos < end:
        try:
            data = os.lseek(src, pos, os.SEEK_DATA)
        except OSError:  # no data after pos
            return
        if data >= end:
            return
        hole = min(os.lseek(src, data, os.SEEK_HOLE), end)
        while data < hole:
            chunk = os.pread(src, min(CHUNK, hole - data), data)
            if not chunk:
                return
            written = 0
            while written < len(chunk):
                written += os.pwrite(dst, chunk[written:], dst_off + data - src_off + written)
            data += len(chunk)
        pos = hole


def _run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise DiskError(f"{cmd[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise DiskError(f"{cmd[0]} timed out") from exc
    if proc.returncode != 0:
        reason = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise DiskError(f"{cmd[0]} failed: {reason[-1] if reason else proc.returncode}")
    return proc.stdout


def _check_path(path: str) -> str:
    # debugfs splits its commands on white space; refuse anything that could be misread
    if not path.startswith("/") or any(c.isspace() or c in "\"'\\" for c in path):
        raise DiskError(f"unsupported path {path!r}")
    return path


@dataclass(frozen=True)
class FileSpec:
    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


class Ext4:
    """An ext4 filesystem at a byte offset of the card."""

    def __init__(self, device: Path, offset: int) -> None:
        self.device = device
        self.offset = offset

    @property
    def spec(self) -> str:
        return f"{self.device}?offset={self.offset}"

    def _debugfs(self, commands: list[str], *, write: bool) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
            script.write("\n".join(commands) + "\n")
            script.flush()
            cmd = ["debugfs"] + (["-w"] if write else []) + ["-f", script.name, self.spec]
            return _run(cmd)

    def check(self) -> None:
        """Fails unless the partition holds an ext4 filesystem."""
        out = self._debugfs(["stats"], write=False)
        if "Filesystem magic number" not in out:
            raise DiskError("the root partition holds no ext4 filesystem")

    def read_files(self, paths: list[str]) -> dict[str, bytes | None]:
        """Contents of each path (None when missing), in one debugfs run."""
        if not paths:
            return {}
        with tempfile.TemporaryDirectory(prefix="piseduce-ext4-") as tmp:
            commands = [f"dump {_check_path(p)} {tmp}/{i}" for i, p in enumerate(paths)]
            self._debugfs(commands, write=False)
            result: dict[str, bytes | None] = {}
            for i, p in enumerate(paths):
                local = Path(tmp, str(i))
                result[p] = local.read_bytes() if local.exists() else None
        return result

    def read_text(self, path: str) -> str | None:
        data = self.read_files([path])[path]
        return None if data is None else data.decode("utf-8", "replace")

    def write(self, files: dict[str, FileSpec], dirs: dict[str, FileSpec] | None = None) -> None:
        """Create directories (when missing) then replace files, with owner and mode; read back."""
        with tempfile.TemporaryDirectory(prefix="piseduce-ext4-") as tmp:
            commands: list[str] = []
            for path, spec in (dirs or {}).items():
                p = _check_path(path)
                commands += [
                    f"mkdir {p}",
                    f"sif {p} mode 0{0o040000 | spec.mode:o}",
                    f"sif {p} uid {spec.uid}",
                    f"sif {p} gid {spec.gid}",
                ]
            for i, (path, spec) in enumerate(files.items()):
                p = _check_path(path)
                local = Path(tmp, str(i))
                local.write_bytes(spec.data)
                commands += [
                    f"rm {p}",
                    f"write {local} {p}",
                    f"sif {p} mode 0{0o100000 | spec.mode:o}",
                    f"sif {p} uid {spec.uid}",
                    f"sif {p} gid {spec.gid}",
                ]
            self._debugfs(commands, write=True)
        # debugfs reports command errors on stderr but always exits 0: trust only a read-back
        back = self.read_files(list(files))
        for path, spec in files.items():
            if back[path] != spec.data:
                raise DiskError(f"writing {path} on the root filesystem failed")

    def list_dir(self, path: str) -> list[str] | None:
        """Names in a directory (None when it is missing), from `ls -p`'s /inode/mode/uid/gid/name/size/."""
        out = self._debugfs([f"ls -p {_check_path(path)}"], write=False)
        names = [f[5] for f in (line.split("/") for line in out.splitlines()) if len(f) >= 7]
        return None if not names else [n for n in names if n not in (".", "..")]

    def remove(self, paths: list[str]) -> None:
        """Delete files (missing ones are ignored); checked by a read-back."""
        if not paths:
            return
        self._debugfs([f"rm {_check_path(p)}" for p in paths], write=True)
        left = [p for p, data in self.read_files(paths).items() if data is not None]
        if left:
            raise DiskError(f"removing {left[0]} from the root filesystem failed")

    def symlink(self, path: str, target: str) -> None:
        """`path` becomes a symbolic link to `target` (its folder must exist); checked by `stat`."""
        p = _check_path(path)
        self._debugfs([f"rm {p}", f"symlink {p} {_check_path(target)}"], write=True)
        if "Type: symlink" not in self._debugfs([f"stat {p}"], write=False):
            raise DiskError(f"making the link {path} on the root filesystem failed")

    def data_blocks(self, path: str) -> list[int]:
        """The filesystem blocks holding a file's data (empty for a missing or empty file)."""
        out = self._debugfs([f"blocks {_check_path(path)}"], write=False)
        return [int(b) for b in out.split() if b.isdigit()]

    def fsck(self) -> None:
        try:
            proc = subprocess.run(
                ["e2fsck", "-f", "-y", self.spec], capture_output=True, text=True, timeout=600, check=False
            )
        except FileNotFoundError as exc:
            raise DiskError("e2fsck is not installed") from exc
        # 0 = clean, 1 = errors corrected; anything else leaves the filesystem unusable
        if proc.returncode not in (0, 1):
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            raise DiskError(f"e2fsck failed: {lines[-1] if lines else proc.returncode}")

    def resize(self, size_bytes: int) -> int:
        """Grow (or shrink) to size_bytes rounded down to whole blocks; returns the new size."""
        self.fsck()
        block = self.block_size()
        blocks = size_bytes // block
        if is_block_device(self.device):
            _run(["resize2fs", self.spec, str(blocks)])
            return blocks * block
        # resize2fs truncates a regular file to the filesystem's size, ignoring the offset: work on
        # a sparse copy of the partition alone and put it back (only data extents move)
        old_size = self.block_count() * block
        with tempfile.TemporaryDirectory(prefix="piseduce-resize-") as tmp:
            part = Path(tmp, "root.ext4")
            fd_card = os.open(self.device, os.O_RDWR)
            try:
                fd_part = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    os.ftruncate(fd_part, max(old_size, blocks * block))
                    copy_sparse(fd_card, self.offset, fd_part, 0, old_size)
                    _run(["resize2fs", str(part), str(blocks)])
                    new_size = os.fstat(fd_part).st_size
                    zero_region(fd_card, self.offset, max(old_size, new_size))
                    copy_sparse(fd_part, 0, fd_card, self.offset, new_size)
                    os.fsync(fd_card)
                finally:
                    os.close(fd_part)
            finally:
                os.close(fd_card)
        return blocks * block

    def block_size(self) -> int:
        out = self._debugfs(["stats"], write=False)
        for line in out.splitlines():
            if line.startswith("Block size:"):
                return int(line.split(":", 1)[1])
        raise DiskError("cannot read the filesystem's block size")

    def block_count(self) -> int:
        out = self._debugfs(["stats"], write=False)
        for line in out.splitlines():
            if line.startswith("Block count:"):
                return int(line.split(":", 1)[1])
        raise DiskError("cannot read the filesystem's block count")


class Fat:
    """A FAT filesystem at a byte offset of the card, through mtools."""

    def __init__(self, device: Path, offset: int) -> None:
        self.device = device
        self.offset = offset

    @property
    def image(self) -> str:
        return f"{self.device}@@{self.offset}"

    @staticmethod
    def _env() -> dict[str, str]:
        # no geometry checks: a partition inside a file has no meaningful CHS layout
        return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}

    def _mtools(self, tool: str, *args: str) -> str:
        return _run([tool, "-i", self.image, *args], env=self._env())

    def names(self) -> list[str]:
        """Top-level entry names."""
        out = self._mtools("mdir", "-b", "::/")
        return [line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()]

    def read(self, name: str) -> bytes | None:
        if name not in self.names():
            return None
        with tempfile.TemporaryDirectory(prefix="piseduce-fat-") as tmp:
            local = Path(tmp, "f")
            self._mtools("mcopy", "-n", f"::/{name}", str(local))
            return local.read_bytes()

    def write(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="piseduce-fat-") as tmp:
            local = Path(tmp, "f")
            local.write_bytes(data)
            self._mtools("mcopy", "-o", "-n", str(local), f"::/{name}")

    def export(self, dest: Path) -> None:
        """Copy every file and folder of the partition into dest."""
        if not self.names():
            return
        self._mtools("mcopy", "-s", "-n", "-p", "-m", "::/*", str(dest))
