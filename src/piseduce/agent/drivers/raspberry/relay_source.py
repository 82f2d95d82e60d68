"""The agent's end of a pipelined distribution: it serves the image file to the boards that pull
it from the agent (the chain's head, and any board re-fed after its predecessors failed), with the
board-to-board handshake of `piseduce.node.relay`, and counts what it sent."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import struct
from pathlib import Path

from piseduce.node.relay import HANDSHAKE_TIMEOUT, MAGIC, NONCE, PROOF, proof

CHUNK = 1 << 20


class ImageSource:
    def __init__(self, path: Path, token: bytes) -> None:
        self.path = path
        self.token = token
        self.size = path.stat().st_size
        self.sent = 0
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
        data = await asyncio.wait_for(reader.readexactly(NONCE + PROOF + 8), HANDSHAKE_TIMEOUT)
        client_nonce, got = data[:NONCE], data[NONCE:NONCE + PROOF]
        if not hmac.compare_digest(got, proof(self.token, b"pull", server_nonce, client_nonce)):
            self.refused += 1
            return None
        writer.write(proof(self.token, b"serve", client_nonce, server_nonce))
        return int(struct.unpack(">Q", data[NONCE + PROOF:])[0])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            offset = await self._handshake(reader, writer)
            if offset is None:
                return
            with self.path.open("rb") as fh:
                fh.seek(offset)
                while True:
                    chunk = await loop.run_in_executor(None, fh.read, CHUNK)
                    if not chunk:
                        break
                    writer.write(chunk)
                    await writer.drain()
                    self.sent += len(chunk)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            return  # the board went away: the distribution re-feeds whoever needs it
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
