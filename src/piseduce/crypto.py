"""The shared key file (Fernet) and password hashing (argon2id).

The web UI generates the key file; g5k and iot-lab agents get a copy of it so that they can read
the testbed credentials the web UI forwards. Agent tokens and testbed credentials are stored
encrypted with it.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class KeyFileError(Exception):
    pass


def generate_key_file(path: Path) -> bool:
    """Write a new Fernet key to `path` (mode 0600). Never overwrites: returns False if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key())
    return True


def load_fernet(path: Path) -> Fernet:
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
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
    """Session-signing secret, created on first start when absent."""
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret
