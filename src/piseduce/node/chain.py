"""`piseduce-node chain-write`: write a raw image pulled from an upstream (the agent or another
board) to the card, and serve it at once to the boards downstream.

The agent drives it on the command's stdin, one JSON object a line (so the token is never on a
command line):
    1st line   {"token": hex, "sha256": hex, "size": N, "sparse": bool, "peers": [ip, ...]}
               (`peers`, optional: the only addresses that may connect to this board's server)
    then       {"pull": "host:port"}   (where to pull from; sent again to re-feed from another source)
               {"release": true}       (nobody downstream needs this board any more: exit)
End of stdin also releases (the agent went away). On stdout, JSON lines:
    {"listening": port}                   the board serves here (the agent tells the next board)
    progress lines (`meter`)              bytes on the card of the image's size
    {"upstream": "...", "error": "..."}   the pull from an upstream failed (it is tried again)
    {"wrote": true, ...}                  the whole image is on the card (the agent's write step ends)
    {"ok": true, ...} / {"ok": false, "error": ...}   at exit, as every helper command

What arrives is written in order, so a board re-fed from another source resumes at the byte it
has. The board serves recent bytes from memory (`WINDOW` bytes) and older ones from its card (a
raw image is the card's first bytes). `sparse`: the card is known to be all zeros (wiped), so
all-zero blocks are skipped rather than written.
"""

from __future__ import annotations

import collections
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from piseduce.node import cardio
from piseduce.node.disk import DiskError, reread_partitions
from piseduce.node.meter import Meter
from piseduce.node.relay import (
    HANDSHAKE_TIMEOUT,
    MAX_HANDSHAKES,
    RelayAuthError,
    parse_address,
    pull_handshake,
    serve_handshake,
)

CHUNK = 1 << 20
WINDOW = 64 << 20
RETRY_PAUSE = 0.5
ACCEPT_PAUSE = 0.1  # after accept() fails (out of fds, an aborted connection): pause, accept again
REFUSED_EVERY = 60.0  # at most one `refused` line per peer in this many seconds (each is an event)


class Header:
    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise DiskError("chain-write expects a JSON object as its first stdin line")
        token, sha, size = raw.get("token"), raw.get("sha256"), raw.get("size")
        if not isinstance(token, str) or len(token) < 32:
            raise DiskError("chain-write: the token must be at least 32 hexadecimal digits")
        try:
            self.token = bytes.fromhex(token)
        except ValueError:
            raise DiskError("chain-write: the token must be hexadecimal") from None
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha):
            raise DiskError("chain-write: sha256 must be 64 hexadecimal digits")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise DiskError("chain-write: size must be a positive number of bytes")
        self.sha256 = sha.lower()
        self.size = size
        self.sparse = raw.get("sparse") is True
        peers = raw.get("peers")
        if peers is not None and (not isinstance(peers, list) or not all(isinstance(p, str) for p in peers)):
            raise DiskError("chain-write: peers must be a list of IP addresses")
        # Who may connect to this board's server (the chain's boards); None: anyone with the token.
        self.peers: frozenset[str] | None = None if peers is None else frozenset(peers)


class Image:
    """What this board holds of the image: the first `have` bytes, recent ones in memory."""

    def __init__(self, device: Path, size: int) -> None:
        self.device = device
        self.size = size
        self.have = 0
        self.failed: str | None = None
        self.released = False
        self.cond = threading.Condition()
        self.recent: collections.deque[tuple[int, bytes]] = collections.deque()
        self.recent_bytes = 0

    def add(self, data: bytes) -> None:
        with self.cond:
            self.recent.append((self.have, data))
            self.recent_bytes += len(data)
            while self.recent_bytes - len(self.recent[0][1]) >= WINDOW:
                self.recent_bytes -= len(self.recent.popleft()[1])
            self.have += len(data)
            self.cond.notify_all()

    def stop(self, reason: str | None = None) -> None:
        with self.cond:
            if reason and self.failed is None:
                self.failed = reason
            self.released = True
            self.cond.notify_all()

    def read(self, offset: int, card: cardio.CardIO) -> bytes:
        """Bytes from `offset` once this board has them; b"" when it will not have them."""
        with self.cond:
            while self.have <= offset and not self.released and self.failed is None:
                self.cond.wait(1.0)
            if self.have <= offset:
                return b""
            end = min(self.have, offset + CHUNK)
            for start, data in reversed(self.recent):  # pullers ask for recent bytes: look from the end
                if start <= offset < start + len(data):
                    return data[offset - start:min(end, start + len(data)) - start]
                if start + len(data) <= offset:
                    break
        return card.pread(end - offset, offset)


class Refusals:
    """Groups refused connections: one line per peer per REFUSED_EVERY seconds, with a count, so a
    flood is one event on the reservation rather than hundreds."""

    def __init__(self, report: Callable[[dict[str, Any]], None]) -> None:
        self.report = report
        self.lock = threading.Lock()
        self.last: dict[str, float] = {}
        self.pending: dict[str, int] = {}

    def add(self, peer: str, error: str) -> None:
        now = time.monotonic()
        with self.lock:
            count = self.pending.get(peer, 0) + 1
            if now - self.last.get(peer, -REFUSED_EVERY) < REFUSED_EVERY:
                self.pending[peer] = count
                return
            self.last[peer] = now
            self.pending[peer] = 0
        self.report({"refused": peer, "error": error, "count": count})

    def flush(self) -> None:
        """The refusals not yet reported (at the server's end)."""
        with self.lock:
            pending = {p: n for p, n in self.pending.items() if n}
            self.pending.clear()
        for peer, count in pending.items():
            self.report({"refused": peer, "error": "refused again", "count": count})


class Server:
    """Serves this board's image to authenticated pullers, each in a thread of its own. At most
    MAX_HANDSHAKES handshakes at once (more are closed at once), the card opened only for a
    puller that proved it holds the token."""

    def __init__(self, image: Image, token: bytes, report: Callable[[dict[str, Any]], None],
                 peers: frozenset[str] | None = None) -> None:
        self.image = image
        self.token = token
        self.peers = peers
        self.refusals = Refusals(report)
        self.sock = socket.create_server(("", 0), backlog=16)
        self.port = int(self.sock.getsockname()[1])
        self.served = 0
        self.lock = threading.Lock()
        self.handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self.closed = threading.Event()

    def run(self) -> None:
        while not self.closed.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                # Out of fds (EMFILE) or an aborted connection: the successors still need this
                # board, so accept again once the flood's connections are dropped.
                self.closed.wait(ACCEPT_PAUSE)
                continue
            if self.peers is not None and str(peer[0]) not in self.peers:
                conn.close()
                self.refusals.add(str(peer[0]), "not a board of this chain")
                continue
            if not self.handshakes.acquire(blocking=False):
                conn.close()
                self.refusals.add(str(peer[0]), "too many handshakes at once")
                continue
            try:
                threading.Thread(target=self.one, args=(conn, peer), daemon=True).start()
            except RuntimeError:  # no thread to be had: drop this one
                self.handshakes.release()
                conn.close()

    def one(self, conn: socket.socket, peer: Any) -> None:
        with conn:
            try:
                offset = serve_handshake(conn, self.token, self.image.size)
                conn.settimeout(None)
            except (RelayAuthError, OSError) as exc:
                self.refusals.add(str(peer[0]), str(exc) or type(exc).__name__)
                return
            finally:
                self.handshakes.release()
            try:
                with cardio.open_card(self.image.device) as card:
                    self._send(conn, card, offset)
            except OSError:
                return  # the puller went away: it pulls again from wherever the agent says

    def _send(self, conn: socket.socket, card: cardio.CardIO, offset: int) -> None:
        while offset < self.image.size:
            data = self.image.read(offset, card)
            if not data:
                return
            conn.sendall(data)
            offset += len(data)
            with self.lock:
                self.served += len(data)

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        self.refusals.flush()


class Writer:
    """Pulls the image from the current upstream and writes it in order; resumes after a loss."""

    def __init__(self, image: Image, header: Header, card: cardio.CardIO, meter: Meter,
                 report: Callable[[dict[str, Any]], None]) -> None:
        self.image = image
        self.header = header
        self.card = card
        self.meter = meter
        self.report = report
        self.sha = hashlib.sha256()
        self.upstream: tuple[str, int] | None = None
        self.generation = 0
        self.skipped = 0
        self.cond = threading.Condition()

    def pull_from(self, address: tuple[str, int]) -> None:
        with self.cond:
            self.upstream = address
            self.generation += 1
            self.cond.notify_all()

    def _next_source(self, seen: int) -> tuple[tuple[str, int] | None, int]:
        with self.cond:
            while self.upstream is None and not self.image.released:
                self.cond.wait(1.0)
            if self.generation == seen:
                # The same source failed: try it again after a pause (a dropped link, a busy board).
                self.cond.wait(RETRY_PAUSE)
            return self.upstream, self.generation

    def run(self) -> None:
        seen = -1
        self.meter.start("write", self.image.size)
        while self.image.have < self.image.size and not self.image.released:
            address, seen = self._next_source(seen)
            if address is None:
                return
            try:
                self._pull(address, seen)
            except (OSError, RelayAuthError) as exc:
                reason = str(exc) or type(exc).__name__
                self.report({"upstream": f"{address[0]}:{address[1]}", "error": reason})
            except DiskError as exc:
                self.image.stop(str(exc))
                return

    def _pull(self, address: tuple[str, int], generation: int) -> None:
        with socket.create_connection(address, timeout=HANDSHAKE_TIMEOUT) as sock:
            pull_handshake(sock, self.header.token, self.image.have)
            sock.settimeout(1.0)
            buf = bytearray(CHUNK)
            while self.image.have < self.image.size:
                if self.generation != generation:
                    return  # the agent named another source: take it from there
                data = self._fill(sock, buf, min(CHUNK, self.image.size - self.image.have))
                if data:
                    self._write(data)

    def _fill(self, sock: socket.socket, buf: bytearray, want: int) -> bytes:
        """Up to `want` bytes: a whole chunk when the source keeps sending (hashing, writing and
        serving cost per chunk, not per packet), less when it pauses."""
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
        return bytes(view[:got])

    def _write(self, data: bytes) -> None:
        offset = self.image.have
        if self.header.sparse:
            self.skipped += self.card.pwrite_nonzero(data, offset)
        else:
            self.card.pwrite(data, offset)
        self.sha.update(data)
        self.image.add(data)
        self.meter.advance(self.image.have)


def _control(stdin: BinaryIO, writer: Writer, image: Image) -> None:
    """The agent's instructions; the end of stdin releases the board."""
    for line in stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if isinstance(msg.get("pull"), str):
            try:
                writer.pull_from(parse_address(msg["pull"]))
            except ValueError as exc:
                image.stop(str(exc))
                return
        if msg.get("release") is True:
            break
    with writer.cond:
        image.stop(None if image.have >= image.size else "the agent ended the distribution before the "
                   f"image was complete ({image.have} of {image.size} bytes)")
        writer.cond.notify_all()


def chain_write(stdin: BinaryIO, device: Path, *, device_size: int,
                emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    first = stdin.readline(1 << 16)
    try:
        header = Header(json.loads(first or b"null"))
    except ValueError as exc:
        raise DiskError(f"chain-write expects a JSON header on stdin: {exc}") from None
    if header.size > device_size:
        raise DiskError(f"the image is larger than the card ({device_size} bytes)")
    image = Image(device, header.size)
    lock = threading.Lock()

    def report(obj: dict[str, Any]) -> None:
        with lock:
            emit(obj)

    server = Server(image, header.token, report, header.peers)
    with cardio.open_card(device, write=True) as card:
        writer = Writer(image, header, card, Meter(report), report)
        threading.Thread(target=server.run, daemon=True).start()
        report({"listening": server.port})
        threading.Thread(target=_control, args=(stdin, writer, image), daemon=True).start()
        pull = threading.Thread(target=writer.run, daemon=True)
        pull.start()
        pull.join()
        card.flush()
    if image.failed and image.have < image.size:
        server.close()
        raise DiskError(image.failed)
    got = writer.sha.hexdigest()
    writer.meter.finish()
    if got != header.sha256:
        server.close()
        raise DiskError(f"checksum mismatch: received data has sha256 {got}")
    result: dict[str, Any] = {"written": image.have, "sha256": got, "image_sha256": got, "format": "raw",
                              "verified": False, "skipped_zero": writer.skipped,
                              "card_bytes": image.have - writer.skipped}
    report({"wrote": True, **result})
    # Serve the boards downstream until the agent releases this one.
    with image.cond:
        while not image.released:
            image.cond.wait(1.0)
    server.close()
    reread_partitions(device)
    return {**result, "served": server.served}

