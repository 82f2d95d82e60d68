"""SSH host keys in images: a deployment never keeps the host keys an image carries (a saved
environment holds its source board's), and the environment factory does not save private ones."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from piseduce.node import disk
from piseduce.node.fs import Ext4, FileSpec
from piseduce.sim.images import build_environment
from test_env_factory import GIB, json_lines, node_helper, sha256_prefix

# Distinct, recognisable contents: each must vanish from what the helper writes or reads back.
PRIVATE = {
    "/etc/ssh/ssh_host_ed25519_key": b"-----BEGIN OPENSSH PRIVATE KEY-----\nED25519-OF-PI-1\n",
    "/etc/ssh/ssh_host_rsa_key": b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + b"RSA-OF-PI-1 " * 300 + b"\n",
    "/etc/ssh/ssh_host_ecdsa_key": b"-----BEGIN OPENSSH PRIVATE KEY-----\nECDSA-OF-PI-1\n",
}
PUBLIC = {f"{p}.pub": f"ssh-ed25519 AAAA{i} root@pi-1\n".encode() for i, p in enumerate(PRIVATE)}
SETTINGS = {"hostname": "pi-3", "user": "pi", "ssh_keys": [], "password": "s3cret-pw"}


def card_with_host_keys(tmp_path: Path) -> tuple[Path, Ext4]:
    """A card deployed from an image, then given host keys as the first boot of pi-1 would."""
    env = build_environment(tmp_path / "img", "raspios", size_mb=56, compress="gz")
    card = tmp_path / "card.img"
    with open(card, "wb") as f:
        f.truncate(GIB)
    out = node_helper(card, "write-image", "--sha256", env["checksum"],
                      stdin=(tmp_path / "img" / env["image"]).read_bytes())
    assert out.returncode == 0, out.stdout
    table = disk.read_table(card)
    assert table is not None
    root = Ext4(card, table.get(2).offset)
    root.write({p: FileSpec(d, 0o600) for p, d in PRIVATE.items()}
               | {p: FileSpec(d, 0o644) for p, d in PUBLIC.items()})
    assert root.read_files(list(PRIVATE)) == PRIVATE
    return card, root


def test_configure_removes_every_host_key_of_the_image(tmp_path: Path) -> None:
    card, root = card_with_host_keys(tmp_path)
    out = node_helper(card, "configure", stdin=json.dumps(SETTINGS).encode())
    assert out.returncode == 0, out.stdout
    left = root.read_files([*PRIVATE, *PUBLIC])
    assert all(v is None for v in left.values()), left
    result = json_lines(out.stdout)[-1]
    assert result["ok"] is True and result["host_keys_removed"] == len(PRIVATE) + len(PUBLIC)
    # the rest of /etc/ssh stays: the board's first boot makes its own keys for that sshd
    assert root.read_text("/etc/ssh/sshd_config")
    # a second run (a redeploy of the same card) finds none and succeeds
    again = node_helper(card, "configure", stdin=json.dumps(SETTINGS).encode())
    assert again.returncode == 0 and json_lines(again.stdout)[-1]["host_keys_removed"] == 0


def test_read_image_leaves_the_host_private_keys_out(tmp_path: Path) -> None:
    card, root = card_with_host_keys(tmp_path)
    before = sha256_prefix(card, 64 * 1024**2)
    read = node_helper(card, "read-image", "--compress", "gz")
    assert read.returncode == 0, read.stderr
    raw = gzip.decompress(read.stdout)
    for data in PRIVATE.values():
        assert data.splitlines()[1][:20] not in raw
    assert b"OPENSSH PRIVATE KEY" not in raw
    assert json_lines(read.stderr)[-1]["host_keys_left_out"] == len(PRIVATE)
    # the image stays a valid filesystem; the card it was read from is untouched (the board
    # goes back to its own system with its own keys)
    assert sha256_prefix(card, 64 * 1024**2) == before
    assert root.read_files(list(PRIVATE)) == PRIVATE
    copy = tmp_path / "copy.img"
    copy.write_bytes(raw)
    table = disk.read_table(copy)
    assert table is not None
    saved = Ext4(copy, table.get(2).offset)
    saved.fsck()
    assert saved.read_text("/etc/passwd")
