"""The framed image stream between boards (relay.frames / send_frames / FrameReader): zero runs
travel as a length, every other byte as itself, and a reader gets back exactly the image."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time

import pytest

from piseduce.node import relay
from piseduce.node.cardio import HOLE_BLOCK


def _image() -> bytes:
    """Data, a zero run that starts and ends inside 64 KiB blocks and crosses 256 KiB chunks, data."""
    data = bytearray(b"\x5a" * (1 << 20))
    data[200 << 10:(700 << 10) + 5] = bytes((500 << 10) + 5)
    return bytes(data)


def _read_all(sock: socket.socket, size: int, want: int) -> list[relay.Chunk]:
    reader = relay.FrameReader(sock)
    got: list[relay.Chunk] = []
    have = 0
    while have < size:
        piece = reader.read(min(want, size - have))
        if piece:
            got.append(piece)
            have += len(piece)
    return got


def _join(pieces: list[relay.Chunk]) -> bytes:
    return b"".join(bytes(len(p)) if isinstance(p, relay.Zeros) else bytes(p) for p in pieces)


@pytest.mark.parametrize("offset", [0, 4096 + 3])
def test_a_zero_run_across_chunks_crosses_the_link_as_lengths_only(offset: int) -> None:
    image = _image()
    wire = b"".join(bytes(p) for p in relay.frames(image, offset))
    # Only the whole blocks (aligned on the image) inside the run are left out of the wire.
    first = -(-(offset + (200 << 10)) // HOLE_BLOCK) * HOLE_BLOCK - offset
    last = (offset + (700 << 10) + 5) // HOLE_BLOCK * HOLE_BLOCK - offset
    assert len(wire) < len(image) - (last - first) + 100
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(1.0)
        sender = threading.Thread(target=relay.send_frames, args=(a, image, offset))
        sender.start()
        pieces = _read_all(b, len(image), 256 << 10)
        sender.join()
    assert _join(pieces) == image
    zeros = [p for p in pieces if isinstance(p, relay.Zeros)]
    assert sum(len(z) for z in zeros) == last - first
    assert all(len(p) <= 256 << 10 for p in pieces)  # a run comes in pieces no larger than asked


def test_a_header_split_by_a_pause_is_kept_across_timeouts() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(0.05)
        reader = relay.FrameReader(b)
        head = relay.FRAME.pack(relay.ZEROS, 1000)
        a.sendall(head[:2])
        assert reader.read(4096) is None  # nothing whole within the timeout
        time.sleep(0.1)
        a.sendall(head[2:] + relay.FRAME.pack(relay.DATA, 3) + b"abc")
        got = reader.read(4096)
        assert isinstance(got, relay.Zeros) and len(got) == 1000
        assert bytes(reader.read(4096) or b"") == b"abc"


@pytest.mark.parametrize("wire", [struct.pack(">cI", b"X", 5) + b"hello", struct.pack(">cI", b"D", 0)])
def test_a_malformed_frame_ends_the_pull(wire: bytes) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(1.0)
        a.sendall(wire)
        with pytest.raises(OSError, match="malformed frame"):
            relay.FrameReader(b).read(4096)


def test_hash_zeros_is_the_hash_of_the_zero_bytes() -> None:
    for n in (0, 1, (1 << 20) + 17, 3 << 20):
        sha = hashlib.sha256(b"x")
        relay.hash_zeros(sha, n)
        assert sha.hexdigest() == hashlib.sha256(b"x" + bytes(n)).hexdigest()


def test_a_zero_run_is_read_in_pieces_of_the_size_asked_for_runs() -> None:
    """A wiped card's board takes a run in big pieces (they cost its card nothing), data by chunk."""
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(1.0)
        relay.send_frames(a, relay.Zeros(10 << 20), 0)
        relay.send_frames(a, b"\x01" * (64 << 10), 10 << 20)
        reader = relay.FrameReader(b)
        got = [reader.read(16 << 10, 8 << 20) for _ in range(3)]
        assert [type(p).__name__ for p in got] == ["Zeros", "Zeros", "bytearray"]
        assert [len(p or b"") for p in got] == [8 << 20, 2 << 20, 16 << 10]
