"""The shared key file (Fernet) and password hashing (argon2id).

The web UI generates the key file; g5k and iot-lab agents get a copy of it so that they can read
the testbed credentials the web UI forwards. Agent tokens and testbed credentials are stored
encrypted with it.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

from piseduce.private_files import create_private, tighten

log = logging.getLogger(__name__)
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class KeyFileError(Exception):
    pass


def generate_key_file(path: Path) -> bool:
    """Write a new Fernet key to `path` (mode 0600). Never overwrites: returns False if it exists."""
    return create_private(path, Fernet.generate_key())


def key_file_fernet(path: Path, *, create: bool) -> Fernet:
    """The Fernet of the key file at `path`. When `create` and there is none, a new one is written
    first (mode 0600, never over another one): for the agents that need no copy of the web UI's
    key (raspberry), whose key seals their own secrets. KeyFileError in words otherwise."""
    if create and not path.exists():
        try:
            if generate_key_file(path):
                log.info("%s: key file created", path)
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot create the key file ({exc.strerror})") from None
    return load_fernet(path)


def load_fernet(path: Path) -> Fernet:
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file ({exc.strerror})") from None
    tighten(path)
    try:
        return Fernet(key)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not a valid Fernet key file") from None


def encrypt_json(fernet: Fernet, data: Any) -> str:
    return fernet.encrypt(json.dumps(data).encode()).decode()


def decrypt_json(fernet: Fernet, token: str, ttl: int | None = None) -> Any:
    """Raise ValueError on a token that was not made with this key or is malformed."""
    try:
        return json.loads(fernet.decrypt(token.encode(), ttl=ttl))
    except (InvalidToken, ValueError, TypeError):
        raise ValueError("cannot decrypt: wrong key or corrupted token") from None


def encrypt_str(fernet: Fernet, text: str) -> str:
    return fernet.encrypt(text.encode()).decode()


def decrypt_str(fernet: Fernet, token: str) -> str:
    try:
        return fernet.decrypt(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise ValueError("cannot decrypt: wrong key or corrupted token") from None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(hashed: str) -> bool:
    return _hasher.check_needs_rehash(hashed)


def generate_password(length: int = 16) -> str:
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def generate_secret_file(path: Path) -> str:
    """Session-signing secret (mode 0600), created on first start when absent."""
    if not path.is_file():
        create_private(path, secrets.token_urlsafe(48).encode())
    tighten(path)
    return path.read_text().strip()
