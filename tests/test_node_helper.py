"""`piseduce-node` against a real disk image file (MBR, FAT32 boot, ext4 root), built without root."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from piseduce.node import disk
from piseduce.node.board import ethernet_mac
from piseduce.node.fs import Ext4
from piseduce.node.system import verify_password
from piseduce.sim.images import build_environment

GIB = 1024**3
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbBd5iFQ3n0f4vS4dFq7x4A7n2Ej1k3o1YV0Yy9xX0a agent@piseduce"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO3Qz1mQ0m7Q2p6k9m1eQH8bH2q8m3c4m7s1bKQ9yX0b alice@laptop"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    folder = tmp_path_factory.mktemp("images")
    envs = {c: build_environment(folder / c, "raspios", compress=c) for c in ("gz", "xz", "zst")}
    return folder, envs


@pytest.fixture
def board(tmp_path: Path) -> dict[str, str]:
    card = tmp_path / "card.img"
    with open(card, "wb") as f:
        f.truncate(3 * GIB)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nHardware\t: BCM2835\nRevision\t: a020d3\n"
                       "Serial\t\t: 00000000deadbeef\nModel\t\t: Raspberry Pi 3 Model B Plus Rev 1.3\n")
    thermal = tmp_path / "temp"
    thermal.write_text("51540\n")
    return {"PISEDUCE_NODE_DEVICE": str(card), "PISEDUCE_NODE_CPUINFO": str(cpuinfo),
            "PISEDUCE_NODE_THERMAL": str(thermal)}


def helper(env: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "piseduce.node.cli", *args], input=stdin,
                          capture_output=True,
                          env={**os.environ, **env}, timeout=120)
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    return proc.returncode, lines


def write(env: dict[str, str], data: bytes, *extra: str) -> tuple[int, list[dict]]:
    sha = hashlib.sha256(data).hexdigest()
    return helper(env, "write-image", "--sha256", sha, "--size", str(len(data)), *extra, stdin=data)


def root_fs(env: dict[str, str]) -> Ext4:
    card = Path(env["PISEDUCE_NODE_DEVICE"])
    table = disk.read_table(card)
    assert table is not None
    return Ext4(card, table.get(2).offset)


def test_info_and_temperature(board: dict[str, str]) -> None:
    status, out = helper(board, "info")
    assert status == 0
    assert out[-1] == {"ok": True, "model": "RPI3B+", "model_name": "Raspberry Pi 3 Model B Plus Rev 1.3",
                       "serial": "deadbeef", "revision": "a020d3", "mac": ethernet_mac(),
                       "card_size": 3 * GIB, "partitions": [],
                       "memory_gb": 1}  # a020d3: a 3B+, 1 GiB
    status, out = helper(board, "temperature")
    assert status == 0 and out[-1] == {"ok": True, "celsius": 51.54}


@pytest.mark.parametrize("fmt", ["gz", "xz", "zst"])
def test_write_image_each_format(board: dict[str, str], images: tuple[Path, dict[str, dict]],
                                 fmt: str) -> None:
    folder, envs = images
    env = envs[fmt]
    data = (folder / fmt / env["image"]).read_bytes()
    status, out = write(board, data)
    assert status == 0, out
    result = out[-1]
    assert result["ok"] and result["verified"] and result["written"] == env["size"]
    assert result["sha256"] == env["checksum"] and result["format"] == fmt
    assert any("progress" in line for line in out[:-1])
    table = disk.read_table(Path(board["PISEDUCE_NODE_DEVICE"]))
    assert table is not None and table.get(2).start == env["sector_start"]
    assert root_fs(board).read_text("/etc/hostname") == "raspberrypi\n"
    # the card file stays sparse: the image's zero blocks were not written out
    assert os.stat(board["PISEDUCE_NODE_DEVICE"]).st_blocks * 512 < env["size"]


def test_write_image_rejects_bad_checksum_and_garbage(board: dict[str, str],
                                                      images: tuple[Path, dict[str, dict]]) -> None:
    folder, envs = images
    data = (folder / "gz" / envs["gz"]["image"]).read_bytes()
    status, out = helper(board, "write-image", "--sha256", "0" * 64, stdin=data)
    assert status == 1 and out[-1]["ok"] is False and "checksum mismatch" in out[-1]["error"]
    status, out = write(board, data[: len(data) // 2], "--format", "gz")
    assert status == 1 and "truncated" in out[-1]["error"]
    status, out = write(board, b"not an image at all", "--format", "xz")
    assert status == 1 and "not valid xz" in out[-1]["error"]
    status, out = helper(board, "write-image", "--sha256", "xyz", stdin=b"x")
    assert status == 1 and "--sha256" in out[-1]["error"]


def test_write_image_tar_gz(board: dict[str, str], images: tuple[Path, dict[str, dict]]) -> None:
    folder, envs = images
    raw = gzip.decompress((folder / "gz" / envs["gz"]["image"]).read_bytes())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("raspios.img")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    status, out = write(board, buf.getvalue())
    assert status == 0 and out[-1]["format"] == "tar.gz" and out[-1]["written"] == len(raw)
    assert out[-1]["image_sha256"] == hashlib.sha256(raw).hexdigest()


def test_partition_configure_export_wipe(board: dict[str, str], images: tuple[Path, dict[str, dict]]) -> None:
    folder, envs = images
    status, out = helper(board, "partition", "--size", "whole")
    assert status == 1 and "no partition table" in out[-1]["error"]
    write(board, (folder / "xz" / envs["xz"]["image"]).read_bytes())

    status, out = helper(board, "partition", "--size", "5gb")
    assert status == 1 and "too small" in out[-1]["error"]
    status, out = helper(board, "partition", "--size", "2gb")
    assert status == 0 and out[-1]["root_size"] == 2 * GIB
    card = Path(board["PISEDUCE_NODE_DEVICE"])
    assert disk.read_table(card).get(2).size == 2 * GIB  # type: ignore[union-attr]
    assert root_fs(board).block_count() * 4096 == 2 * GIB
    status, out = helper(board, "partition", "--size", "whole")
    part = disk.read_table(card).get(2)  # type: ignore[union-attr]
    assert status == 0 and part.end == 3 * GIB // 512 and out[-1]["root_size"] == part.size
    assert os.path.getsize(card) == 3 * GIB
    fsck = subprocess.run(["e2fsck", "-fn", f"{card}?offset={part.offset}"], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout

    # bad settings are refused and change nothing
    before = root_fs(board).read_files(["/etc/hostname", "/etc/shadow"])
    for bad in (b"{", b'{"hostname": "bad host", "user": "pi", "password": "x"}',
                b'{"hostname": "n1", "user": "pi", "password": "x", "ssh_keys": ["rm -rf /"]}',
                b'{"hostname": "n1", "user": "nobody", "password": "x"}',
                b'{"hostname": "n1", "user": "pi"}'):
        status, out = helper(board, "configure", stdin=bad)
        assert status == 1 and out[-1]["ok"] is False, bad
    assert root_fs(board).read_files(["/etc/hostname", "/etc/shadow"]) == before

    settings = {"hostname": "node-7", "user": "pi", "ssh_keys": [KEY_A, KEY_B], "password": "p4ss word"}
    status, out = helper(board, "configure", stdin=json.dumps(settings).encode())
    assert status == 0 and out[-1]["ok"] is True, out
    fs = root_fs(board)
    files = fs.read_files(["/etc/hostname", "/etc/hosts", "/etc/shadow", "/root/.ssh/authorized_keys",
                           "/home/pi/.ssh/authorized_keys"])
    assert files["/etc/hostname"] == b"node-7\n"
    hosts = files["/etc/hosts"] or b""
    assert b"127.0.1.1\tnode-7\n" in hosts and b"raspberrypi" not in hosts
    for path in ("/root/.ssh/authorized_keys", "/home/pi/.ssh/authorized_keys"):
        assert files[path] == f"{KEY_A}\n{KEY_B}\n".encode()
    shadow_text = (files["/etc/shadow"] or b"").decode()
    shadow = {line.split(":")[0]: line.split(":")[1] for line in shadow_text.splitlines()}
    assert shadow["root"].startswith("$6$") and shadow["pi"].startswith("$6$")
    assert verify_password("p4ss word", shadow["pi"]) and verify_password("p4ss word", shadow["root"])
    assert not verify_password("wrong", shadow["pi"]) and shadow["daemon"] == "*"
    listing = subprocess.run(["debugfs", "-R", "ls -l /home/pi/.ssh", fs.spec], capture_output=True,
                             text=True)
    line = next(entry for entry in listing.stdout.splitlines() if "authorized_keys" in entry)
    assert line.split()[1:4] == ["100600", "(1)", "1000"]  # mode, type, uid

    # export-boot: a tar archive of the boot partition, now with `ssh` and without the resize script
    proc = subprocess.run([sys.executable, "-m", "piseduce.node.cli", "export-boot"], capture_output=True,
                          env={**os.environ, **board}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        names = set(tar.getnames())
        member = tar.extractfile("cmdline.txt")
        assert member is not None
        cmdline = member.read().decode()
    assert {"ssh", "config.txt", "start4.elf", "kernel8.img", "overlays/README"} <= names
    table = disk.read_table(card)
    assert table is not None and f"root=PARTUUID={table.partuuid_prefix}-02" in cmdline
    assert "init_resize" not in cmdline

    status, out = helper(board, "wipe")
    assert status == 0 and out[-1]["ok"] is True
    assert disk.read_table(card) is None
    status, out = helper(board, "info")
    assert out[-1]["partitions"] == []
    proc = subprocess.run([sys.executable, "-m", "piseduce.node.cli", "export-boot"], capture_output=True,
                          env={**os.environ, **board}, timeout=60)
    assert proc.returncode == 1 and proc.stdout == b""
    assert json.loads(proc.stderr)["ok"] is False
