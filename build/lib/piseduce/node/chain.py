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
    progress lines (`meter`)              bytes on the card (`done`) and received (`received`)
    {"upstream": "...", "error": "..."}   the pull from an upstream failed (it is tried again)
    {"wrote": true, ...}                  the whole image is on the card (the agent's write step ends)
    {"ok": true, ...} / {"ok": false, "error": ...}   at exit, as every helper command

What arrives is served at once and written to the card in order by a thread of its own, up to
`LAG` bytes behind: the card's speed (and its flushes' pauses) paces the chain as a whole (a
board receives no more than `LAG` ahead of its card) but never delays a hop, so a chain's time
is its slowest card's plus a chunk's time on each link. A board re-fed from another source
resumes at the byte it has received. It serves recent bytes from memory (`WINDOW` bytes, every
byte not yet on its card among them) and older ones from its card (a raw image is the card's
first bytes). Progress lines count the bytes on the card (`done`) and those received
(`received`), within a second of any change. The image's zero runs travel as "zeros" frames
(`relay.frames`: a run's length, not its bytes) and wait in memory as their length alone; they are
hashed as the rest. `sparse`: the card is known to be all zeros (wiped), so zero runs and all-zero
blocks are skipped rather than written; on any other card they are written as zeros.
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
    Chunk,
    FrameReader,
    RelayAuthError,
    Zeros,
    hash_zeros,
    parse_address,
    pull_handshake,
    send_frames,
    serve_handshake,
)

# A hop forwards a chunk once it has all of it: small enough that 48 hops add well under a
# second at a link's speed, large enough that hashing, writing and serving cost per chunk.
CHUNK = 256 << 10
LAG = 32 << 20  # how far the card may trail what the board received (and serves)
# A zero run for a wiped card, received and forwarded as one piece up to this size: it costs that
# card nothing, so a piece per chunk would only add wake-ups (any other card writes it by CHUNK,
# its progress seen as it goes).
SKIPPED_PIECE = 8 << 20
WINDOW = 64 << 20  # recent bytes kept in memory; never fewer than the unwritten ones (LAG)
RETRY_PAUSE = 0.5
TICK = 0.1  # how often the progress reporter looks at the counts
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
    """What this board holds of the image: the first `have` bytes received, the first `written`
    of them on the card; recent ones (all the unwritten among them) in memory."""

    def __init__(self, device: Path, size: int) -> None:
        self.device = device
        self.size = size
        self.have = 0
        self.written = 0
        self.failed: str | None = None
        self.released = False
        self.cond = threading.Condition()
        self.recent: collections.deque[tuple[int, Chunk]] = collections.deque()
        self.recent_bytes = 0
        self.unwritten: collections.deque[Chunk] = collections.deque()

    def add(self, data: Chunk) -> None:
        with self.cond:
            self.recent.append((self.have, data))
            self.unwritten.append(data)
            self.recent_bytes += len(data)
            self._evict()
            self.have += len(data)
            self.cond.notify_all()

    def _evict(self) -> None:
        # Only bytes already on the card leave memory: older reads come from the card.
        while (self.recent and self.recent_bytes - len(self.recent[0][1]) >= WINDOW
               and self.recent[0][0] + len(self.recent[0][1]) <= self.written):
            self.recent_bytes -= len(self.recent.popleft()[1])

    def wait_room(self) -> bool:
        """Until the card is less than LAG behind; False when the board stops meanwhile."""
        with self.cond:
            while self.have - self.written >= LAG and not self.released and self.failed is None:
                self.cond.wait(1.0)
            return not self.released and self.failed is None

    def next_unwritten(self) -> Chunk | None:
        """The next chunk for the card, once received; None once none will come (all written, or
        the board stopped: released before the whole image arrived, or failed)."""
        with self.cond:
            while not self.unwritten or self.failed is not None:
                if self.written >= self.size or self.failed is not None or self.released:
                    return None
                self.cond.wait(1.0)
            return self.unwritten[0]

    def on_card(self, n: int) -> None:
        with self.cond:
            self.unwritten.popleft()
            self.written += n
            self._evict()
            self.cond.notify_all()

    def stop(self, reason: str | None = None) -> None:
        with self.cond:
            if reason and self.failed is None:
                self.failed = reason
            self.released = True
            self.cond.notify_all()

    def read(self, offset: int, card: cardio.CardIO) -> Chunk:
        """Bytes from `offset` once this board has them; b"" when it will not have them."""
        with self.cond:
            while self.have <= offset and not self.released and self.failed is None:
                self.cond.wait(1.0)
            if self.have <= offset:
                return b""
            end = min(self.have, offset + CHUNK)
            for start, data in reversed(self.recent):  # pullers ask for recent bytes: look from the end
                if start <= offset < start + len(data):
                    if isinstance(data, Zeros):  # the rest of the run: one frame, whatever its length
                        return Zeros(start + len(data) - offset)
                    return memoryview(data)[offset - start:min(end, start + len(data)) - start]
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
                # A zero run is a 5-byte frame: sent at once, not held for the previous one's ACK.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
            send_frames(conn, data, offset)
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
        """Receives (this thread) and writes the card (a thread of its own) until the image is on
        the card or the board stops."""
        self.meter.start("write", self.image.size)
        card = threading.Thread(target=self._card, daemon=True)
        card.start()
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(done,), daemon=True)
        ticker.start()
        try:
            self._receive()
        finally:
            card.join()
            done.set()
            ticker.join()

    def _tick(self, done: threading.Event) -> None:
        """The progress lines: one as soon as the first bytes arrive, then one each interval in
        which bytes moved, so the agent sees every byte a board got even when they stop within
        a second (a line sent only on a write left the last second before a stop unseen: the
        agent then blamed a board for its source's silence)."""
        last = (0, 0)
        sent_at = time.monotonic()
        while not done.wait(TICK):
            now = time.monotonic()
            state = (self.image.written, self.image.have)
            if state != last and (last == (0, 0) or now - sent_at >= self.meter.interval):
                self.meter.report(state[0], received=state[1])
                last, sent_at = state, now

    def _receive(self) -> None:
        seen = -1
        while self.image.have < self.image.size and not self.image.released:
            address, seen = self._next_source(seen)
            if address is None:
                return
            try:
                self._pull(address, seen)
            except (OSError, RelayAuthError) as exc:
                reason = str(exc) or type(exc).__name__
                self.report({"upstream": f"{address[0]}:{address[1]}", "error": reason})

    def _pull(self, address: tuple[str, int], generation: int) -> None:
        with socket.create_connection(address, timeout=HANDSHAKE_TIMEOUT) as sock:
            pull_handshake(sock, self.header.token, self.image.have)
            sock.settimeout(1.0)
            frames = FrameReader(sock)
            while self.image.have < self.image.size and self.image.wait_room():
                if self.generation != generation:
                    return  # the agent named another source: take it from there
                left = self.image.size - self.image.have
                zeros = SKIPPED_PIECE if self.header.sparse else CHUNK
                data = frames.read(min(CHUNK, left), min(zeros, left))
                if data:
                    self.image.add(data)

    def _card(self) -> None:
        """Writes what arrived to the card, in order; a card error stops the board."""
        try:
            while (data := self.image.next_unwritten()) is not None:
                self._write(data)
        except (DiskError, OSError) as exc:
            self.image.stop(f"writing the card: {exc}")

    def _write(self, data: Chunk) -> None:
        offset = self.image.written
        if isinstance(data, Zeros):
            if self.header.sparse:
                self.skipped += len(data)
            else:
                self.card.zero(offset, len(data))
            hash_zeros(self.sha, len(data))
        elif self.header.sparse:
            self.skipped += self.card.pwrite_nonzero(data, offset)
            self.sha.update(data)
        else:
            self.card.pwrite(data, offset)
            self.sha.update(data)
        self.image.on_card(len(data))


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
    if image.written < image.size:
        server.close()
        raise DiskError(image.failed or f"the image did not reach the card ({image.written} of "
                        f"{image.size} bytes)")
    got = writer.sha.hexdigest()
    writer.meter.finish(received=image.have)
    if got != header.sha256:
        server.close()
        raise DiskError(f"checksum mismatch: received data has sha256 {got}")
    result: dict[str, Any] = {"written": image.written, "sha256": got, "image_sha256": got, "format": "raw",
                              "verified": False, "skipped_zero": writer.skipped,
                              "card_bytes": image.written - writer.skipped,
                              # What the board spent (receive, hash, write, serve): the chain's cost.
                              "cpu_s": round(time.process_time(), 2)}
    report({"wrote": True, **result})
    # Serve the boards downstream until the agent releases this one.
    with image.cond:
        while not image.released:
            image.cond.wait(1.0)
    server.close()
    reread_partitions(device)
    return {**result, "served": server.served}

