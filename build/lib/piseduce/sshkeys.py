"""OpenSSH public keys: validation and fingerprints (what `ssh-keygen -l` prints), for the web UI's
settings and deploy form and for the agents that install the keys."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

# The types OpenSSH accepts in authorized_keys by default (DSA is disabled since OpenSSH 7.0;
# certificates need a CA setup).
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
MAX_KEY_LENGTH = 16384
_COMMENT_RE = re.compile(r"^[\x20-\x7e]*$")


@dataclass(frozen=True)
class PublicKey:
    kind: str
    blob: bytes
    comment: str

    @property
    def line(self) -> str:
        text = f"{self.kind} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text

    @property
    def fingerprint(self) -> str:
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"


def parse_key(text: str) -> PublicKey:
    """One public key line; ValueError with the reason in words otherwise."""
    text = text.strip()
    if not text:
        raise ValueError("the key is empty")
    if len(text) > MAX_KEY_LENGTH:
        raise ValueError("the key is too long")
    if "PRIVATE KEY" in text:
        raise ValueError(
            "this is a PRIVATE key: paste the public one (the .pub file) and keep the private one secret"
        )
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise ValueError("expected '<type> <base64 data> [comment]', as in an id_*.pub file")
    kind, data = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if kind not in KEY_TYPES:
        raise ValueError(f"unknown key type {kind[:40]!r} (known: {', '.join(KEY_TYPES)})")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key data is not valid base64") from None
    if len(blob) < 4:
        raise ValueError("the key data is truncated")
    (n,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + n] != kind.encode():
        raise ValueError(f"the key data does not hold a {kind} key (truncated or mixed-up copy?)")
    if not _COMMENT_RE.match(comment) or len(comment) > 256:
        raise ValueError("the comment after the key holds unexpected characters")
    return PublicKey(kind, blob, comment)


def parse_keys(text: str) -> list[PublicKey]:
    """Several keys, one per line (blank lines and # comments skipped)."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(parse_key(line))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    if not keys:
        raise ValueError("no key given")
    return keys
