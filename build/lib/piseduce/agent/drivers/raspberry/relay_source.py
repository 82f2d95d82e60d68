"""The agent's end of a pipelined distribution: it serves the image file to the boards that pull
it from the agent (the chain's head, and any board re-fed after its predecessors failed), with the
board-to-board handshake of `piseduce.node.relay`, and counts what it sent.

It is on the board network, so it takes connections only from the chain's members' addresses
(`allowed`; others are closed before anything is read or allocated), at most MAX_HANDSHAKES
handshakes at once, each within one HANDSHAKE_TIMEOUT, and never an offset beyond the image.
The image goes out framed (`relay.frames`): its zero blocks as "zeros, N bytes" frames, found in
the executor thread that reads the file (a memcmp a block), so the zeros never cross the board
network; the boards hash them as any other byte."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import struct
from pathlib import Path
from typing import BinaryIO

from piseduce.node.relay import HANDSHAKE_TIMEOUT, MAGIC, MAX_HANDSHAKES, NONCE, PROOF, frames, proof

CHUNK = 1 << 20


class ImageSource:
    def __init__(self, path: Path, token: bytes, allowed: set[str] | None = None) -> None:
        self.path = path
        self.token = token
        # The peers' IPs that may connect (the caller adds members as they join); None: anyone.
        self.allowed = allowed
        self.handshakes = 0
        self.size = path.stat().st_size
        self.sent = 0  # image bytes served, zero runs included
        self.wire = 0  # bytes those took on the wire (a zero run: a frame header)
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str) -> None:
        self.server = await asyncio.start_server(self._serve, host, 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int | None:
        server_nonce = os.urandom(NONCE)
        writer.write(MAGIC + server_nonce)
        await writer.drain()
        data = await reader.readexactly(NONCE + PROOF + 8)
        client_nonce, got = data[:NONCE], data[NONCE:NONCE + PROOF]
        offset = int(struct.unpack(">Q", data[NONCE + PROOF:])[0])
        if not hmac.compare_digest(got, proof(self.token, b"pull", server_nonce, client_nonce)) \
                or offset > self.size:
            self.refused += 1
            return None
        writer.write(proof(self.token, b"serve", client_nonce, server_nonce))
        return offset

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        peer = writer.get_extra_info("peername")
        if self.allowed is not None and (not peer or str(peer[0]) not in self.allowed):
            return False
        return self.handshakes < MAX_HANDSHAKES

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        if not self._admit(writer):
            self.refused += 1
            writer.transport.abort()
            return
        try:
            self.handshakes += 1
            try:
                offset = await asyncio.wait_for(self._handshake(reader, writer), HANDSHAKE_TIMEOUT)
            finally:
                self.handshakes -= 1
            if offset is None:
                return
            with self.path.open("rb") as fh:
                fh.seek(offset)
                while True:
                    n, parts = await loop.run_in_executor(None, _read_frames, fh, offset)
                    if not n:
                        break
                    writer.writelines(parts)
                    await writer.drain()
                    offset += n
                    self.sent += n
                    self.wire += sum(len(p) for p in parts)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            return  # the board went away: the distribution re-feeds whoever needs it
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _read_frames(fh: BinaryIO, offset: int) -> tuple[int, list[bytes | memoryview]]:
    """The next CHUNK of the image (at `offset`) as frames: its zero blocks found off the event loop."""
    chunk = fh.read(CHUNK)
    return len(chunk), list(frames(chunk, offset))
