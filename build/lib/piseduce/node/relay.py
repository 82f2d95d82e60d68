"""The board-to-board link of a pipelined image distribution: who may pull an image from whom.

A board (or the agent) serves the image it holds, from any offset, to a board that pulls it. Both
ends hold the distribution's token (random per distribution, given to each board on the stdin of
its pinned SSH session, never on a command line or on the board network). The connection starts
with a challenge both ways, so neither end sends image bytes to, or takes them from, anyone else:

    server → client   MAGIC (4) + server nonce Ns (32)
    client → server   client nonce Nc (32) + HMAC-SHA256(token, "pull" Ns Nc) (32) + offset (8, big-endian)
    server → client   HMAC-SHA256(token, "serve" Nc Ns) (32), then the image from offset to its end

A wrong proof closes the connection before any image byte moves. The image travels in frames, each
a kind (1 byte) and a length (4, big-endian): "D" and that many bytes of the image, or "Z": that
many zero bytes, which do not cross the link (a raw image is mostly zeros: its free space). The
sender finds the zeros by 64 KiB blocks aligned on the image (`frames`); a receiver skips them on a
card known wiped and writes them otherwise. The bytes themselves are checked end to end: every board
hashes the whole image it received, zeros included, and the agent compares it with the environment's
sha256 (the `verify` step then reads the card back), so the link needs no per-chunk MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import TypeAlias

from piseduce.node.cardio import HOLE_BLOCK, is_zero

MAGIC = b"PSD2"  # 2: the image in frames (PSD1 sent it raw)
NONCE = 32
PROOF = 32
HANDSHAKE_TIMEOUT = 10.0  # for the whole handshake, not per read: a byte every few seconds is dropped too
MAX_HANDSHAKES = 16  # handshakes in progress at once on one server; more are closed at once


DATA, ZEROS = b"D", b"Z"
FRAME = struct.Struct(">cI")
MAX_FRAME = (1 << 32) - 1


class Zeros:
    """A run of zero bytes of the image: on the wire a frame header, in memory its length alone."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Zeros({self.n})"


Chunk: TypeAlias = bytes | bytearray | memoryview | Zeros
_ZEROS = memoryview(bytes(1 << 20))


def hash_zeros(sha: hashlib._Hash, n: int) -> None:
    """Feeds `n` zero bytes to `sha` (from one preallocated buffer: no allocation per run)."""
    while n > 0:
        k = min(n, len(_ZEROS))
        sha.update(_ZEROS[:k])
        n -= k


def frames(data: Chunk, offset: int) -> Iterator[bytes | memoryview]:
    """What goes on the wire for `data`, the image's bytes from `offset`: its all-zero blocks (64 KiB,
    aligned on the image, so a receiver's card skips the same blocks) as zero frames, the rest as
    data frames, consecutive blocks of a kind in one frame."""
    if isinstance(data, Zeros):
        yield from _zero_frames(len(data))
        return
    view = memoryview(data).cast("B")
    run_start, run_zero, pos = 0, False, 0
    while pos < len(view):
        end = min(pos + HOLE_BLOCK - (offset + pos) % HOLE_BLOCK, len(view))
        zero = is_zero(view[pos:end])
        if zero != run_zero and pos > run_start:
            yield from _run(view, run_start, pos, run_zero)
            run_start = pos
        run_zero, pos = zero, end
    if pos > run_start:
        yield from _run(view, run_start, pos, run_zero)


def _run(view: memoryview, start: int, end: int, zero: bool) -> Iterator[bytes | memoryview]:
    if zero:
        yield from _zero_frames(end - start)
        return
    for at in range(start, end, MAX_FRAME):
        piece = view[at:min(end, at + MAX_FRAME)]
        yield FRAME.pack(DATA, len(piece))
        yield piece


def _zero_frames(n: int) -> Iterator[bytes]:
    while n > 0:
        k = min(n, MAX_FRAME)
        yield FRAME.pack(ZEROS, k)
        n -= k


def send_frames(sock: socket.socket, data: Chunk, offset: int) -> None:
    """`data` (the image from `offset`) framed, on a blocking socket, in as few system calls as the
    kernel takes (a header and its data go together)."""
    parts = [memoryview(p) for p in frames(data, offset)]
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts.pop(0))
        if sent:
            parts[0] = parts[0][sent:]


def fill(sock: socket.socket, want: int) -> bytearray:
    """Up to `want` bytes: all of them when the source keeps sending (hashing, writing and serving
    cost per chunk, not per packet), fewer when it pauses past the socket's timeout; OSError when it
    closed the connection before any. A buffer of its own (a board keeps it: served and written from
    there without a copy)."""
    buf = bytearray(want)
    view = memoryview(buf)
    got = 0
    while got < want:
        try:
            n = sock.recv_into(view[got:want])
        except TimeoutError:
            break
        if n == 0:
            if got:
                break
            raise OSError("the source closed the connection")
        got += n
    view.release()
    del buf[got:]
    return buf


class FrameReader:
    """The framed image of one connection, read in pieces of at most the size asked for."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = bytearray()
        self.kind = DATA
        self.left = 0  # of the current frame

    def read(self, want: int, zeros: int | None = None) -> Chunk | None:
        """Image bytes (at most `want`) or a run of zeros (at most `zeros`, by default `want`); None
        when nothing came within the socket's timeout. OSError when the source closed the
        connection or sent a malformed frame."""
        if self.left == 0 and not self._header():
            return None
        if self.kind == ZEROS:
            n = min(want if zeros is None else zeros, self.left)
            self.left -= n
            return Zeros(n)
        n = min(want, self.left)
        data = fill(self.sock, n)
        self.left -= len(data)
        return data or None

    def _header(self) -> bool:
        while len(self.head) < FRAME.size:
            try:
                more = self.sock.recv(FRAME.size - len(self.head))
            except TimeoutError:
                return False  # what came of the header stays for the next read
            if not more:
                raise OSError("the source closed the connection")
            self.head += more
        kind, length = FRAME.unpack(self.head)
        self.head.clear()
        if kind not in (DATA, ZEROS) or length == 0:
            raise OSError(f"the source sent a malformed frame ({kind!r}, {length} bytes)")
        self.kind, self.left = kind, length
        return True


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
