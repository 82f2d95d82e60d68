"""The board-to-board link of a pipelined image distribution: who may pull an image from whom.

A board (or the agent) serves the image it holds, from any offset, to a board that pulls it. Both
ends hold the distribution's token (random per distribution, given to each board on the stdin of
its pinned SSH session, never on a command line or on the board network). The connection starts
with a challenge both ways, so neither end sends image bytes to, or takes them from, anyone else:

    server → client   MAGIC (4) + server nonce Ns (32)
    client → server   client nonce Nc (32) + HMAC-SHA256(token, "pull" Ns Nc) (32) + offset (8, big-endian)
    server → client   HMAC-SHA256(token, "serve" Nc Ns) (32), then the image from offset to its end

A wrong proof closes the connection before any image byte moves. The bytes themselves are checked
end to end: every board hashes what it received and the agent compares it with the environment's
sha256 (the `verify` step then reads the card back), so the link needs no per-chunk MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time

MAGIC = b"PSD1"
NONCE = 32
PROOF = 32
HANDSHAKE_TIMEOUT = 10.0  # for the whole handshake, not per read: a byte every few seconds is dropped too
MAX_HANDSHAKES = 16  # handshakes in progress at once on one server; more are closed at once


class RelayAuthError(Exception):
    """The other end does not hold the distribution's token (or does not speak the protocol)."""


def proof(token: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token, role + first + second, hashlib.sha256).digest()


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """`n` bytes; with a `deadline` (time.monotonic()), TimeoutError once it has passed."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the handshake took too long")
            sock.settimeout(left)
        data = sock.recv(n - got)
        if not data:
            raise RelayAuthError("the connection closed during the handshake")
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def serve_handshake(sock: socket.socket, token: bytes, size: int) -> int:
    """The serving end: returns the offset the client asks for; RelayAuthError when its proof is
    wrong or it asks for an offset beyond the image's `size`. The whole handshake has one deadline
    (HANDSHAKE_TIMEOUT); the socket is left with that timeout."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    sock.settimeout(HANDSHAKE_TIMEOUT)
    server_nonce = os.urandom(NONCE)
    sock.sendall(MAGIC + server_nonce)
    data = recv_exact(sock, NONCE + PROOF + 8, deadline)
    client_nonce, got, raw_offset = data[:NONCE], data[NONCE:NONCE + PROOF], data[NONCE + PROOF:]
    if not hmac.compare_digest(got, proof(token, b"pull", server_nonce, client_nonce)):
        raise RelayAuthError("wrong distribution credential")
    offset = int(struct.unpack(">Q", raw_offset)[0])
    if offset > size:
        raise RelayAuthError(f"asked for byte {offset} of a {size}-byte image")
    sock.sendall(proof(token, b"serve", client_nonce, server_nonce))
    return offset


def pull_handshake(sock: socket.socket, token: bytes, offset: int) -> None:
    """The pulling end: proves itself, asks for the bytes from `offset`, checks the server's proof."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    head = recv_exact(sock, len(MAGIC) + NONCE, deadline)
    if head[:len(MAGIC)] != MAGIC:
        raise RelayAuthError("not an image relay")
    server_nonce = head[len(MAGIC):]
    client_nonce = os.urandom(NONCE)
    sock.sendall(client_nonce + proof(token, b"pull", server_nonce, client_nonce) + struct.pack(">Q", offset))
    got = recv_exact(sock, PROOF, deadline)
    if not hmac.compare_digest(got, proof(token, b"serve", client_nonce, server_nonce)):
        raise RelayAuthError("the image source does not hold the distribution credential")


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text[:80]!r}")
    return host.strip("[]"), int(port)
