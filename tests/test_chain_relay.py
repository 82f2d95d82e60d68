"""The board-to-board relay of a pipelined distribution, run as the boards run it: the real
`piseduce-node chain-write` processes (file cards here), fed by the agent's `ImageSource`.
The chain on the simulated cluster, with the agent, is in tests/test_rpi_chain.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from helpers.waiting import wait_until, wait_until_async
from piseduce.agent.drivers.raspberry.relay_source import ImageSource
from piseduce.node import relay

CARD = 64 << 20


def _image(size: int, zero_share: float = 0.0) -> bytes:
    """Random data with `zero_share` of it in zero runs of 1 MiB (as a real image's free space)."""
    block = 1 << 20
    out = bytearray()
    rnd = random.Random(7)
    for i in range(size // block):
        out += bytes(block) if (i * 37 % 100) < zero_share * 100 else rnd.randbytes(block)
    return bytes(out)


def _card(path: Path, fill: bytes = b"\xa5") -> Path:
    with path.open("wb") as fh:
        fh.write(fill * CARD)
    return path


class Helper:
    """One `piseduce-node chain-write` on a file card."""

    def __init__(self, card: Path, card_mbps: float | None = None) -> None:
        self.card = card
        self.card_mbps = card_mbps  # a card of that write speed (the simulator's), else the file's
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self, header: dict[str, Any]) -> None:
        helper = (["piseduce.node.cli"] if self.card_mbps is None else
                  ["piseduce.sim.rpi.card", "--write-mbps", str(self.card_mbps), "--"])
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *helper, "--device", str(self.card), "chain-write",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self.send(header)
        self.reader = asyncio.create_task(self._read())

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def seen(self, key: str) -> dict[str, Any] | None:
        return next((ln for ln in self.lines if key in ln), None)

    @property
    def port(self) -> int:
        got = self.seen("listening")
        assert got is not None
        return int(got["listening"])

    async def finish(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.reader is not None
        self.send({"release": True})
        self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), 60)
        await self.reader
        return self.lines[-1]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _chain(tmp_path: Path, image: bytes, boards: int, *, sparse: bool = False,
                 token: bytes | None = None, card_mbps: list[float | None] | None = None,
                 ) -> tuple[list[Helper], ImageSource, bytes]:
    path = tmp_path / "image.img"
    path.write_bytes(image)
    token = token or os.urandom(32)
    source = ImageSource(path, token)
    await source.start("127.0.0.1")
    header = {"token": token.hex(), "sha256": hashlib.sha256(image).hexdigest(), "size": len(image),
              "sparse": sparse}
    helpers = []
    for i in range(boards):
        card = tmp_path / f"card{i}"
        if sparse:
            card.write_bytes(b"")
            os.truncate(card, CARD)
        else:
            _card(card)
        h = Helper(card, card_mbps[i] if card_mbps else None)
        await h.start(header)
        helpers.append(h)
    await wait_until(lambda: all(h.seen("listening") for h in helpers), 30, 0.02)
    return helpers, source, token


async def test_a_chain_writes_every_card_and_the_agent_sends_the_image_once(tmp_path: Path) -> None:
    image = _image(16 << 20)
    helpers, source, _ = await _chain(tmp_path, image, 3)
    try:
        helpers[0].send({"pull": f"127.0.0.1:{source.port}"})
        for prev, h in zip(helpers, helpers[1:], strict=False):
            h.send({"pull": f"127.0.0.1:{prev.port}"})
        await wait_until(lambda: all(h.seen("wrote") for h in helpers), 60, 0.05)
        results = [await h.finish() for h in helpers]
    finally:
        for h in helpers:
            await h.kill()
        await source.close()
    sha = hashlib.sha256(image).hexdigest()
    for h, res in zip(helpers, results, strict=True):
        assert res["ok"] is True and res["sha256"] == sha and res["written"] == len(image), res
        assert h.card.read_bytes()[:len(image)] == image
    assert source.sent == len(image)  # once, to the head; the others got it from their predecessor
    assert [r["served"] for r in results] == [len(image), len(image), 0]


async def test_a_board_forwards_what_it_received_while_its_slow_card_trails(tmp_path: Path) -> None:
    """The card's speed must not pace the forwarding: the next board gets the whole image while
    a slow card still writes it (its progress lines show it received more than it wrote)."""
    image = _image(48 << 20)
    helpers, source, _ = await _chain(tmp_path, image, 2, card_mbps=[6.0, None])
    slow, fast = helpers
    try:
        slow.send({"pull": f"127.0.0.1:{source.port}"})
        fast.send({"pull": f"127.0.0.1:{slow.port}"})
        await wait_until(lambda: fast.seen("wrote") is not None, 60, 0.02)
        slow_wrote_first = slow.seen("wrote") is not None
        await wait_until(lambda: slow.seen("wrote") is not None, 60, 0.05)
        results = [await h.finish() for h in helpers]
    finally:
        for h in helpers:
            await h.kill()
        await source.close()
    assert not slow_wrote_first
    ahead = max(ln.get("received", 0) - ln["done"] for ln in slow.lines if "progress" in ln)
    assert ahead >= 16 << 20, ahead
    sha = hashlib.sha256(image).hexdigest()
    for res in results:
        assert res["ok"] is True and res["sha256"] == sha and res["written"] == len(image), res
    assert slow.card.read_bytes()[:len(image)] == image
    assert source.sent == len(image)


async def test_a_board_reports_every_byte_it_got_even_when_they_stop_within_a_second(
        tmp_path: Path) -> None:
    """Progress lines went out only on a write, at most one a second: bytes that came in the
    last second before the source went quiet were never reported, and the agent took the board
    for stalled short of what it had (and blamed it for its source's silence)."""
    image = _image(8 << 20)
    bursts = [image[:1 << 20], image[1 << 20:2 << 20], image[2 << 20:3 << 20]]
    helpers, source, token = await _chain(tmp_path, image, 1)
    h = helpers[0]
    stop = threading.Event()
    try:
        await source.close()
        port = _serve_frames(token, len(image), bursts, 0.2, stop)
        await asyncio.sleep(1.2)  # the start line is more than a reporting interval old
        h.send({"pull": f"127.0.0.1:{port}"})

        def reported() -> bool:
            return any(ln["done"] == 3 << 20 for ln in h.lines if "progress" in ln)

        await wait_until(reported, 10, 0.05)
    finally:
        stop.set()
        await h.kill()


async def test_a_board_re_fed_from_another_source_resumes_where_it_was(tmp_path: Path) -> None:
    image = _image(16 << 20)
    helpers, source, _ = await _chain(tmp_path, image, 3)
    first, middle, last = helpers
    try:
        first.send({"pull": f"127.0.0.1:{source.port}"})
        middle.send({"pull": f"127.0.0.1:{first.port}"})
        await wait_until(lambda: middle.seen("wrote") is not None, 60, 0.05)
        # The middle board dies before the last one pulled anything: the last is re-fed from the head.
        await middle.kill()
        last.send({"pull": f"127.0.0.1:{middle.port}"})
        await wait_until(lambda: last.seen("upstream") is not None, 30, 0.05)
        last.send({"pull": f"127.0.0.1:{first.port}"})
        await wait_until(lambda: last.seen("wrote") is not None, 60, 0.05)
        res = await last.finish()
        await first.finish()
    finally:
        for h in helpers:
            await h.kill()
        await source.close()
    assert res["ok"] is True and res["sha256"] == hashlib.sha256(image).hexdigest()
    assert "refused" in (last.seen("upstream") or {}).get("error", "")  # what the board saw of the dead one
    assert source.sent == len(image)


def _pull_with(port: int, token: bytes) -> bytes:
    """A client that pulls from a relay with `token`; what it got before the relay closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = relay.recv_exact(sock, 4 + relay.NONCE)
        nonce = os.urandom(relay.NONCE)
        sock.sendall(nonce + relay.proof(token, b"pull", head[4:], nonce) + struct.pack(">Q", 0))
        got = b""
        while chunk := sock.recv(1 << 16):
            got += chunk
        return got[:relay.PROOF] + _unframe(got[relay.PROOF:])


def _unframe(wire: bytes) -> bytes:
    """The image bytes a framed stream stands for (the test's own reading of the format)."""
    out = bytearray()
    pos = 0
    while pos < len(wire):
        kind, n = struct.unpack(">cI", wire[pos:pos + 5])
        pos += 5
        assert kind in (b"D", b"Z") and n > 0, (kind, n)
        if kind == b"Z":
            out += bytes(n)
        else:
            out += wire[pos:pos + n]
            pos += n
    return bytes(out)


async def test_a_pull_without_the_distribution_credential_is_refused(tmp_path: Path) -> None:
    image = _image(4 << 20)
    helpers, source, token = await _chain(tmp_path, image, 1)
    h = helpers[0]
    try:
        h.send({"pull": f"127.0.0.1:{source.port}"})
        await wait_until(lambda: h.seen("wrote") is not None, 60, 0.05)
        # A board with another distribution's token (or none) gets nothing from the board...
        assert await asyncio.to_thread(_pull_with, h.port, os.urandom(32)) == b""
        await wait_until(lambda: h.seen("refused") is not None, 10, 0.05)
        assert "wrong distribution credential" in h.seen("refused")["error"]  # type: ignore[index]
        # ...nor from the agent,
        assert await asyncio.to_thread(_pull_with, source.port, b"x" * 32) == b""
        assert source.refused == 1 and source.sent == len(image)
        # while the right token gets the server's proof, then the image.
        got = await asyncio.to_thread(_pull_with, h.port, token)
        assert got[relay.PROOF:] == image
        # A board does not take an image from a source that cannot prove the token either.
        def pull_from_the_agent_with_a_wrong_token() -> None:
            with socket.create_connection(("127.0.0.1", source.port), timeout=10) as sock:
                relay.pull_handshake(sock, os.urandom(32), 0)

        with pytest.raises(relay.RelayAuthError, match="closed during the handshake"):
            await asyncio.to_thread(pull_from_the_agent_with_a_wrong_token)
        await h.finish()
    finally:
        for x in helpers:
            await x.kill()
        await source.close()


async def test_a_wiped_card_takes_only_the_image_data(tmp_path: Path) -> None:
    """70 % zeros: the sparse write skips them, and the card still holds exactly the image."""
    image = _image(20 << 20, zero_share=0.7)
    sha = hashlib.sha256(image).hexdigest()
    helpers, source, _ = await _chain(tmp_path, image, 1, sparse=True)
    h = helpers[0]
    try:
        h.send({"pull": f"127.0.0.1:{source.port}"})
        await wait_until(lambda: h.seen("wrote") is not None, 60, 0.05)
        res = await h.finish()
    finally:
        await h.kill()
        await source.close()
    mib = 1 << 20
    zeros = sum(1 for i in range(0, len(image), mib) if image[i:i + mib] == bytes(mib)) * mib
    assert zeros >= len(image) * 0.6
    assert res["skipped_zero"] == zeros and res["card_bytes"] == len(image) - zeros
    assert res["sha256"] == sha and h.card.read_bytes()[:len(image)] == image
    # The helper's own read-back of the card verifies it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piseduce.node.cli", "--device", str(h.card), "verify", "--size",
        str(len(image)), "--sha256", sha, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert json.loads(out.splitlines()[-1]) == {"ok": True, "verified": True, "size": len(image),
                                                "sha256": sha}


def _unaligned_zeros(size: int) -> bytes:
    """70 % zeros, and zero runs that start and end inside 64 KiB blocks and cross 256 KiB chunks."""
    image = bytearray(_image(size, zero_share=0.7))
    image[(3 << 20) - 1000:(5 << 20) + 777] = bytes((2 << 20) + 1777)
    image[(6 << 20) + 12345] = 0x42  # one byte of data in a zero run
    return bytes(image)


@pytest.mark.parametrize("wiped", [True, False])
async def test_zero_runs_cross_the_chain_as_lengths_and_every_card_holds_the_image(
        tmp_path: Path, wiped: bool) -> None:
    """The zeros do not cross the links (agent to head, head to tail); a wiped card skips them, a
    card that is not wiped (0xa5 everywhere) has them written."""
    image = _unaligned_zeros(12 << 20)
    sha = hashlib.sha256(image).hexdigest()
    helpers, source, _ = await _chain(tmp_path, image, 2, sparse=wiped)
    try:
        helpers[0].send({"pull": f"127.0.0.1:{source.port}"})
        helpers[1].send({"pull": f"127.0.0.1:{helpers[0].port}"})
        await wait_until(lambda: all(h.seen("wrote") for h in helpers), 60, 0.05)
        results = [await h.finish() for h in helpers]
    finally:
        for h in helpers:
            await h.kill()
        await source.close()
    zeros = image.count(0)
    assert source.sent == len(image) and source.wire < (len(image) - zeros) + (1 << 20), source.wire
    assert results[0]["served"] == len(image)
    for h, res in zip(helpers, results, strict=True):
        assert res["ok"] is True and res["sha256"] == sha, res
        assert (res["skipped_zero"] > zeros * 0.9) is wiped and res["written"] == len(image)
        card = h.card.read_bytes()
        assert card[:len(image)] == image
        assert card[len(image):] == (bytes(CARD - len(image)) if wiped else b"\xa5" * (CARD - len(image)))


def _serve_frames(token: bytes, size: int, pieces: Sequence[relay.Chunk], pause: float = 0.0,
                  stop: threading.Event | None = None) -> int:
    """A source that sends exactly these pieces (data or zero runs) as frames, `pause` seconds
    apart, then keeps the connection: until `stop` is set (a source gone quiet), or without
    `stop` until the board closes it."""
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with server:
            conn, _ = server.accept()
        with conn:
            relay.serve_handshake(conn, token, size)
            offset = 0
            for i, piece in enumerate(pieces):
                if i and stop is not None:
                    stop.wait(pause)
                relay.send_frames(conn, piece, offset)
                offset += len(piece)
            if stop is not None:
                stop.wait(60)
            else:
                with contextlib.suppress(OSError):
                    conn.recv(1)

    threading.Thread(target=run, daemon=True).start()
    return int(server.getsockname()[1])


@pytest.mark.parametrize("wiped", [True, False])
async def test_a_zero_run_over_data_fails_the_checksum(tmp_path: Path, wiped: bool) -> None:
    """A source (or a link) that turns a MiB of data into a zero run: the board hashes the zeros it
    was told of, so the sum is wrong and the board fails, wiped card or not."""
    image = _image(6 << 20, zero_share=0.5)
    data_at = next(i for i in range(0, len(image), 1 << 20) if image[i:i + (1 << 20)] != bytes(1 << 20))
    wire: list[relay.Chunk] = [image[:data_at], relay.Zeros(1 << 20), image[data_at + (1 << 20):]]
    helpers, source, token = await _chain(tmp_path, image, 1, sparse=wiped)
    h = helpers[0]
    try:
        h.send({"pull": f"127.0.0.1:{_serve_frames(token, len(image), wire)}"})
        assert h.proc is not None
        await asyncio.wait_for(h.proc.wait(), 60)
        await asyncio.wait_for(h.reader, 10)  # type: ignore[arg-type]
    finally:
        await h.kill()
        await source.close()
    assert h.seen("wrote") is None
    assert h.lines[-1]["ok"] is False and "checksum mismatch" in h.lines[-1]["error"], h.lines[-1]


async def test_the_direct_write_skips_zero_blocks_only_when_asked(tmp_path: Path) -> None:
    image = _image(8 << 20, zero_share=0.7)
    sha = hashlib.sha256(image).hexdigest()
    card = tmp_path / "card"
    _card(card)
    # The destroy's wipe zeroes the whole file card (a hole) and says so.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piseduce.node.cli", "--device", str(card), "wipe",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    wiped = json.loads(out.splitlines()[-1])
    assert wiped["ok"] is True and wiped["card_zeroed"] is True and card.read_bytes() == bytes(CARD)
    for sparse in (False, True):
        argv = ["write-image", "--sha256", sha, "--no-verify", *(["--sparse"] if sparse else [])]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "piseduce.node.cli", "--device", str(card), *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(image)
        res = json.loads(out.splitlines()[-1])
        assert res["ok"] is True and res["image_sha256"] == sha
        assert (res["skipped_zero"] > len(image) // 2) is sparse
        assert card.read_bytes()[:len(image)] == image


# -- hostile peers on the board network (connection floods, slow handshakes, bad offsets)

def test_a_slow_handshake_is_dropped_at_one_deadline_for_the_whole_handshake(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte now and then (slowloris) resets no timer: the whole handshake has one deadline."""
    monkeypatch.setattr(relay, "HANDSHAKE_TIMEOUT", 1.0)
    server, client = socket.socketpair()
    stop = threading.Event()

    def trickle() -> None:  # 72 bytes at one per 0.2 s: well past the 1 s deadline
        with contextlib.suppress(OSError):
            while not stop.wait(0.2):
                client.send(b"x")

    t = threading.Thread(target=trickle)
    t.start()
    try:
        with pytest.raises(TimeoutError):
            relay.serve_handshake(server, os.urandom(32), 1 << 20)
    finally:
        stop.set()
        t.join()
        server.close()
        client.close()


def _hold(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]


async def test_a_connection_flood_on_a_board_is_capped_and_reported_once(tmp_path: Path) -> None:
    image = _image(4 << 20)
    helpers, source, token = await _chain(tmp_path, image, 1)
    h = helpers[0]
    held: list[socket.socket] = []
    try:
        h.send({"pull": f"127.0.0.1:{source.port}"})
        await wait_until(lambda: h.seen("wrote") is not None, 60, 0.05)
        held = await asyncio.to_thread(_hold, h.port, relay.MAX_HANDSHAKES)
        # Every held connection got its challenge: the board is in MAX_HANDSHAKES handshakes.
        for s in held:
            assert len(await asyncio.to_thread(relay.recv_exact, s, 4 + relay.NONCE)) == 36
        # One more is closed at once, before any byte (no thread, no card opened for it).
        extra = await asyncio.to_thread(_hold, h.port, 5)
        for s in extra:
            assert await asyncio.to_thread(s.recv, 64) == b""
            s.close()
        for s in held:
            s.close()
        held = []
        # The board still serves a puller with the token once the flood is gone (the held
        # handshakes end on the board as it sees them closed: pull until it admits one).
        async def pulled() -> bytes:
            return (await asyncio.to_thread(_pull_with, h.port, token))[relay.PROOF:]
        got = await wait_until_async(pulled, 30, 0.1)
        assert got == image
        await h.finish()
    finally:
        for s in held:
            s.close()
        await h.kill()
        await source.close()
    refused = [ln for ln in h.lines if "refused" in ln]
    # 21 refused connections from one peer: one line at once, the rest counted at the end.
    assert refused and len(refused) <= 2, refused
    assert sum(ln["count"] for ln in refused) == relay.MAX_HANDSHAKES + 5


async def test_a_board_serves_only_the_chains_boards(tmp_path: Path) -> None:
    image = _image(2 << 20)
    path = tmp_path / "image.img"
    path.write_bytes(image)
    token = os.urandom(32)
    source = ImageSource(path, token)
    await source.start("127.0.0.1")
    h = Helper(_card(tmp_path / "card"))
    await h.start({"token": token.hex(), "sha256": hashlib.sha256(image).hexdigest(), "size": len(image),
                   "peers": ["127.0.0.2"]})
    try:
        await wait_until(lambda: h.seen("listening") is not None, 30, 0.02)
        h.send({"pull": f"127.0.0.1:{source.port}"})
        await wait_until(lambda: h.seen("wrote") is not None, 60, 0.05)
        # From 127.0.0.1 (no board of the chain): closed before the challenge.
        s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
        assert await asyncio.to_thread(s.recv, 64) == b""
        s.close()
        await wait_until(lambda: h.seen("refused") is not None, 10, 0.05)
        assert "not a board of this chain" in h.seen("refused")["error"]  # type: ignore[index]
        await h.finish()
    finally:
        await h.kill()
        await source.close()


async def test_the_agent_serves_only_the_members_and_never_past_the_image(tmp_path: Path) -> None:
    image = _image(2 << 20)
    path = tmp_path / "image.img"
    path.write_bytes(image)
    token = os.urandom(32)
    source = ImageSource(path, token, allowed={"127.0.0.2"})
    await source.start("127.0.0.1")
    try:
        # From an address that is no member: closed at once, not even a challenge.
        s = socket.create_connection(("127.0.0.1", source.port), timeout=10)
        assert await asyncio.to_thread(s.recv, 64) == b""
        s.close()
        assert source.refused == 1
        source.allowed = None
        # A puller with the token asking beyond the image's end: refused, no server proof.
        for offset in (len(image) + 1, 1 << 63, (1 << 64) - 1):
            def ask(offset: int = offset) -> None:
                with socket.create_connection(("127.0.0.1", source.port), timeout=10) as sock:
                    relay.pull_handshake(sock, token, offset)

            with pytest.raises(relay.RelayAuthError, match="closed during the handshake"):
                await asyncio.to_thread(ask)
        assert source.refused == 4 and source.sent == 0
    finally:
        await source.close()


async def test_a_board_out_of_fds_accepts_again_once_they_are_freed(tmp_path: Path) -> None:
    """accept() failing with EMFILE (a flood on a board's 1024 fds) must not end the server: the
    successors still need it once the flood is gone."""
    image = _image(4 << 20)
    helpers, source, token = await _chain(tmp_path, image, 1)
    h = helpers[0]
    assert h.proc is not None
    held: list[socket.socket] = []
    try:
        h.send({"pull": f"127.0.0.1:{source.port}"})
        await wait_until(lambda: h.seen("wrote") is not None, 60, 0.05)
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft = len(os.listdir(f"/proc/{h.proc.pid}/fd")) + 2
        resource.prlimit(h.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        # Two connections take the board's last fds; accepting the others fails (EMFILE).
        held = await asyncio.to_thread(_hold, h.port, 6)
        for s in held[:2]:
            assert len(await asyncio.to_thread(relay.recv_exact, s, 4 + relay.NONCE)) == 36
        for s in held:
            s.close()
        held = []
        resource.prlimit(h.proc.pid, resource.RLIMIT_NOFILE, (hard, hard))

        async def pulled() -> bytes:
            return (await asyncio.to_thread(_pull_with, h.port, token))[relay.PROOF:]
        assert await wait_until_async(pulled, 30, 0.1) == image
        await h.finish()
    finally:
        for s in held:
            s.close()
        await h.kill()
        await source.close()
