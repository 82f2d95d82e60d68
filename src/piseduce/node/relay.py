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

MAGIC = b"PSD1"
NONCE = 32
PROOF = 32
HANDSHAKE_TIMEOUT = 10.0


class RelayAuthError(Exception):
    """The other end does not hold the distribution's token (or does not speak the protocol)."""


def proof(token: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token, role + first + second, hashlib.sha256).digest()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = sock.recv(n - got)
        if not data:
            raise RelayAuthError("the connection closed during the handshake")
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def serve_handshake(sock: socket.socket, token: bytes) -> int:
    """The serving end: returns the offset the client asks for; RelayAuthError when its proof is wrong."""
    server_nonce = os.urandom(NONCE)
    sock.sendall(MAGIC + server_nonce)
    data = recv_exact(sock, NONCE + PROOF + 8)
    client_nonce, got, raw_offset = data[:NONCE], data[NONCE:NONCE + PROOF], data[NONCE + PROOF:]
    if not hmac.compare_digest(got, proof(token, b"pull", server_nonce, client_nonce)):
        raise RelayAuthError("wrong distribution credential")
    sock.sendall(proof(token, b"serve", client_nonce, server_nonce))
    return int(struct.unpack(">Q", raw_offset)[0])


def pull_handshake(sock: socket.socket, token: bytes, offset: int) -> None:
    """The pulling end: proves itself, asks for the bytes from `offset`, checks the server's proof."""
    head = recv_exact(sock, len(MAGIC) + NONCE)
    if head[:len(MAGIC)] != MAGIC:
        raise RelayAuthError("not an image relay")
    server_nonce = head[len(MAGIC):]
    client_nonce = os.urandom(NONCE)
    sock.sendall(client_nonce + proof(token, b"pull", server_nonce, client_nonce) + struct.pack(">Q", offset))
    got = recv_exact(sock, PROOF)
    if not hmac.compare_digest(got, proof(token, b"serve", client_nonce, server_nonce)):
        raise RelayAuthError("the image source does not hold the distribution credential")


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text[:80]!r}")
    return host.strip("[]"), int(port)
