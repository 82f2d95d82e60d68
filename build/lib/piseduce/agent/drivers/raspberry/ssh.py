"""SSH to the boards: the agent's key, pinned host keys and `piseduce-node` commands.

Host keys are never accepted blindly: a connection either checks the key pinned for that system
(inside the handshake, before any credential is sent) or, when nothing is pinned yet, the caller
records the key it saw (trust on first use, with an event) before sending anything that matters.
Commands are argument lists joined with `shlex.join`; secrets and JSON travel on stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from piseduce.agent.drivers.raspberry.stall import HelperProgress as HelperProgress  # re-exported
from piseduce.agent.drivers.raspberry.stall import NodeCommandError as NodeCommandError  # re-exported
from piseduce.agent.drivers.raspberry.stall import StallGuard, parse_progress
from piseduce.private_files import open_private
from piseduce.sshkeys import KEY_TYPES

PUBLIC_KEY_TYPES = KEY_TYPES

ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]

ProgressFn = Callable[[HelperProgress], Awaitable[None]]


class SSHUnavailable(Exception):
    """The system does not answer (yet): refused, reset, timed out, or not accepting our key."""


class HostKeyMismatch(Exception):
    """The host offered a key other than the pinned one."""

    def __init__(self, host: str, port: int, pinned: str, offered: str | None) -> None:
        self.pinned = pinned
        self.offered = offered
        seen = f"it offered {fingerprint(offered)}" if offered else "its key could not be read"
        super().__init__(
            f"SSH host key of {host}:{port} changed: pinned {fingerprint(pinned)}, {seen}; "
            "refusing to connect (an administrator must check the board and update its host key)"
        )


# ---------------------------------------------------------------- keys


def load_or_create_agent_key(path: Path) -> asyncssh.SSHKey:
    """The agent's own SSH key (ed25519), created with mode 0600 when missing."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="piseduce-agent")
    # Create the file 0600 from the start so the private key is never world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key())
    Path(f"{path}.pub").write_bytes(key.export_public_key())
    return key


def public_key_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


def parse_public_key(line: str) -> asyncssh.SSHKey:
    """One OpenSSH public key line `type base64 [comment]`; ValueError with a reason otherwise.
    Lines with authorized_keys options (`command=...`) are refused: users give keys, not policies."""
    text = line.strip()
    parts = text.split()
    if len(parts) < 2:
        raise ValueError("expected 'type base64-key [comment]'")
    if parts[0] not in PUBLIC_KEY_TYPES:
        raise ValueError(f"unsupported key type {parts[0][:40]!r} (use one of {', '.join(PUBLIC_KEY_TYPES)})")
    if any(ch in text for ch in "\r\n\0"):
        raise ValueError("one key per line")
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"not a valid OpenSSH public key ({exc})") from None
    return key


def key_data(line: str) -> bytes:
    """The key material of a public key line (the comment does not count when comparing keys)."""
    return bytes(asyncssh.import_public_key(line.strip()).public_data)


def same_key(a: str, b: str) -> bool:
    try:
        return key_data(a) == key_data(b)
    except (asyncssh.KeyImportError, ValueError):
        return False


def fingerprint(line: str | None) -> str:
    if not line:
        return "(none)"
    try:
        return str(asyncssh.import_public_key(line.strip()).get_fingerprint("sha256"))
    except (asyncssh.KeyImportError, ValueError):
        return "(unreadable key)"


# ---------------------------------------------------------------- connections


@dataclass
class Target:
    host: str
    port: int
    username: str
    client_key: asyncssh.SSHKey | None = None
    pinned: str | None = None  # host key line; None = trust on first use (the caller records it)
    timeout: float = 10.0
    password: str | None = None


async def _offered_key(host: str, port: int, timeout: float) -> str | None:
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port), timeout)
    except (OSError, asyncssh.Error, TimeoutError):
        return None
    return public_key_line(key) if key is not None else None


async def connect(target: Target) -> tuple[asyncssh.SSHClientConnection, str]:
    """Connect and authenticate; returns the connection and the host key line it offered.
    Raises HostKeyMismatch when a pinned key does not match, SSHUnavailable when the system is
    not reachable or does not let us in."""
    known: Any = None
    if target.pinned:
        known = ([asyncssh.import_public_key(target.pinned)], [], [])
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                target.host,
                target.port,
                username=target.username,
                client_keys=[target.client_key] if target.client_key is not None else None,
                password=target.password,
                known_hosts=known,
                config=None,
                agent_path=None,
                kbdint_auth=False,
                gss_auth=False,
                preferred_auth="publickey" if target.password is None else "publickey,password",
                connect_timeout=target.timeout,
                login_timeout=target.timeout,
                keepalive_interval=30,
                # AES-GCM first: one AEAD call per packet, where chacha20-poly1305 costs this
                # (pure Python framing) side two cipher contexts per packet.
                encryption_algs=ENCRYPTION_ALGS,
            ),
            target.timeout,
        )
    except asyncssh.HostKeyNotVerifiable:
        offered = await _offered_key(target.host, target.port, target.timeout)
        raise HostKeyMismatch(target.host, target.port, target.pinned or "", offered) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {target.timeout:.0f} s"
        raise SSHUnavailable(f"{target.host}:{target.port}: {reason}") from None
    server_key = conn.get_server_host_key()
    offered = public_key_line(server_key) if server_key is not None else ""
    return conn, offered


@dataclass
class Result:
    exit_status: int
    stdout: str
    stderr: str


async def run(
    conn: asyncssh.SSHClientConnection,
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    timeout: float = 60.0,
) -> Result:
    """Run a command (an argument list, quoted here) with optional stdin text."""
    try:
        proc = await asyncio.wait_for(
            conn.run(shlex.join(argv), input=stdin, check=False, encoding="utf-8", errors="replace"),
            timeout,
        )
    except TimeoutError:
        # Retryable: a loaded or half-dead connection is the usual cause, and commands are idempotent.
        raise SSHUnavailable(f"'{' '.join(argv[:2])}' did not finish within {timeout:.0f} s") from None
    except (OSError, asyncssh.Error) as exc:
        raise SSHUnavailable(f"connection lost during '{argv[0]}': {exc}") from None
    return Result(_exit_status(argv, proc.exit_status, proc.exit_signal), str(proc.stdout or ""),
                  str(proc.stderr or ""))


def _exit_status(argv: Sequence[str], status: int | None, signal: Any) -> int:
    """The command's exit status; a channel closed without one means the connection dropped
    (the command may be repeated: every helper command is idempotent)."""
    if status is None and not signal:
        raise SSHUnavailable(f"connection dropped before '{' '.join(argv[:2])}' finished")
    return status if status is not None else 255


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def helper_result(argv: Sequence[str], status: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The helper's result line, or NodeCommandError with its reason."""
    lines = [d for d in _json_lines(stdout) if "progress" not in d or "ok" in d]
    result = lines[-1] if lines else None
    if status == 0 and result is not None and result.get("ok") is True:
        return result
    reason = ""
    if result is not None and result.get("error"):
        reason = str(result["error"])
    else:
        errs = _json_lines(stderr)
        if errs and errs[-1].get("error"):
            reason = str(errs[-1]["error"])
        else:
            tail = (stderr.strip() or stdout.strip())[-300:]
            reason = tail or f"exit status {status}"
    raise NodeCommandError(f"'{' '.join(argv[:2])}' failed: {reason}")


async def run_helper(
    conn: asyncssh.SSHClientConnection,
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    res = await run(conn, argv, stdin=stdin, timeout=timeout)
    return helper_result(argv, res.exit_status, res.stdout, res.stderr)


async def _start_binary(conn: asyncssh.SSHClientConnection, argv: Sequence[str]) -> Any:
    """Start a command (quoted with shlex.join) whose streams carry bytes."""
    try:
        return await conn.create_process(shlex.join(argv), encoding=None)
    except (OSError, asyncssh.Error) as exc:
        raise SSHUnavailable(f"cannot start '{argv[0]}': {exc}") from None


async def _report_progress(line: bytes, on_progress: ProgressFn, guard: StallGuard) -> None:
    """Pass a helper's progress line on and show it to the stall guard; ignore other lines."""
    progress = parse_progress(line)
    if progress is not None:
        guard.saw(progress)
        await on_progress(progress)


async def _until_done_or_stalled(work: asyncio.Future[Any], guard: StallGuard) -> None:
    """Wait for `work` (the I/O of one helper command); NodeCommandError when the guard sees no
    progress for its time. The caller reads `work.result()`: each treats its errors its way."""
    watchdog: asyncio.Future[Any] = asyncio.ensure_future(guard.watch())
    try:
        done, _ = await asyncio.wait({work, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        if watchdog in done:
            watchdog.result()  # raises the stall error
    finally:
        watchdog.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work


async def stream_file_to_helper(
    conn: asyncssh.SSHClientConnection,
    argv: Sequence[str],
    source: Path | None,
    *,
    on_progress: ProgressFn,
    stall_timeout: float,
    chunk_size: int = 1 << 18,
) -> dict[str, Any]:
    """Run a helper command with progress, sending `source` (if any) on its stdin.
    Fails when its progress stops growing for `stall_timeout` seconds (`StallGuard`)."""
    proc = await _start_binary(conn, argv)
    stdout_lines: list[bytes] = []
    stderr_chunks: list[bytes] = []
    guard = StallGuard(stall_timeout, argv)

    async def feed() -> None:
        if source is None:
            proc.stdin.write_eof()
            return
        loop = asyncio.get_running_loop()
        with source.open("rb") as fh:
            while True:
                chunk = await loop.run_in_executor(None, fh.read, chunk_size)
                if not chunk:
                    break
                proc.stdin.write(chunk)
                await proc.stdin.drain()
                guard.data_accepted()
        proc.stdin.write_eof()

    async def read_out() -> None:
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            # Only the last lines matter (the result or the error); progress lines are many.
            stdout_lines.append(line)
            del stdout_lines[:-20]
            await _report_progress(line, on_progress, guard)

    async def read_err() -> None:
        while True:
            chunk = await proc.stderr.read(65536)
            if not chunk:
                return
            stderr_chunks.append(chunk)
            del stderr_chunks[:-16]

    work: asyncio.Future[Any] = asyncio.gather(feed(), read_out(), read_err())
    try:
        await _until_done_or_stalled(work, guard)
        try:
            work.result()
        except (OSError, asyncssh.Error, BrokenPipeError) as exc:
            # The helper may exit early (bad image) and close stdin: its own error is more useful.
            stderr_chunks.append(str(exc).encode())
        await asyncio.wait_for(proc.wait_closed(), stall_timeout)
    except TimeoutError:
        raise NodeCommandError(f"'{argv[0]}' did not exit") from None
    except (OSError, asyncssh.Error) as exc:
        raise SSHUnavailable(f"connection lost during '{argv[0]}': {exc}") from None
    finally:
        proc.close()
    status = _exit_status(argv, proc.exit_status, proc.exit_signal)
    stdout = b"".join(stdout_lines).decode("utf-8", "replace")
    stderr = b"".join(stderr_chunks).decode("utf-8", "replace")
    return helper_result(argv, status, stdout, stderr)


async def read_helper_stream(
    conn: asyncssh.SSHClientConnection,
    argv: Sequence[str],
    dest: Path,
    *,
    on_progress: ProgressFn,
    stall_timeout: float,
    max_bytes: int,
) -> tuple[dict[str, Any], int, str]:
    """Save a helper's binary stdout to `dest` while following its JSON lines on stderr.
    Returns (result line, bytes received, their sha256). Fails when its progress stops growing
    for `stall_timeout` seconds or more than `max_bytes` arrive. `dest` is created mode 0600: it
    is a user's card (their password hashes and keys)."""
    out = open_private(dest)  # before the command: a refused file is not a lost connection
    try:
        proc = await _start_binary(conn, argv)
    except BaseException:
        out.close()
        raise
    loop = asyncio.get_running_loop()
    sha = hashlib.sha256()
    total = 0
    err_lines: list[bytes] = []
    guard = StallGuard(stall_timeout, argv)

    def save(fh: Any, chunk: bytes) -> None:
        fh.write(chunk)
        sha.update(chunk)

    async def copy() -> None:
        nonlocal total
        with out as fh:
            while True:
                chunk = await proc.stdout.read(1 << 18)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise NodeCommandError(
                        f"'{' '.join(argv[:2])}' sent more than {max_bytes} bytes (env_path space)"
                    )
                await loop.run_in_executor(None, save, fh, chunk)
            await loop.run_in_executor(None, os.fsync, fh.fileno())

    async def follow() -> None:
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            # Only the last lines matter (the result or the error); progress lines are many.
            err_lines.append(line)
            del err_lines[:-20]
            await _report_progress(line, on_progress, guard)

    work: asyncio.Future[Any] = asyncio.gather(copy(), follow())
    try:
        await _until_done_or_stalled(work, guard)
        work.result()
        await asyncio.wait_for(proc.wait_closed(), stall_timeout)
    except TimeoutError:
        raise NodeCommandError(f"'{argv[0]}' did not exit") from None
    except (OSError, asyncssh.Error) as exc:
        raise SSHUnavailable(f"connection lost during '{argv[0]}': {exc}") from None
    finally:
        proc.close()
    status = _exit_status(argv, proc.exit_status, proc.exit_signal)
    # The result line is on stderr (stdout is the image): read it as the helper's JSON output.
    result = helper_result(argv, status, b"".join(err_lines).decode("utf-8", "replace"), "")
    return result, total, sha.hexdigest()


async def read_helper_output_to_file(
    conn: asyncssh.SSHClientConnection,
    argv: Sequence[str],
    dest: Path,
    *,
    max_bytes: int,
    timeout: float,
) -> int:
    """Save a command's binary stdout (an archive) to `dest` (created 0600); NodeCommandError on
    failure."""
    out = open_private(dest)
    try:
        proc = await _start_binary(conn, argv)
    except BaseException:
        out.close()
        raise
    total = 0
    loop = asyncio.get_running_loop()

    async def copy() -> bytes:
        nonlocal total
        with out as fh:
            while True:
                chunk = await proc.stdout.read(1 << 18)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise NodeCommandError(f"'{' '.join(argv[:2])}' sent more than {max_bytes} bytes")
                await loop.run_in_executor(None, fh.write, chunk)
        return bytes(await proc.stderr.read())

    try:
        stderr = await asyncio.wait_for(copy(), timeout)
        await asyncio.wait_for(proc.wait_closed(), timeout)
    except TimeoutError:
        raise NodeCommandError(f"'{' '.join(argv[:2])}' did not finish within {timeout:.0f} s") from None
    except (OSError, asyncssh.Error) as exc:
        raise SSHUnavailable(f"connection lost during '{argv[0]}': {exc}") from None
    finally:
        proc.close()
    status = _exit_status(argv, proc.exit_status, proc.exit_signal)
    if status != 0:
        helper_result(argv, status, "", stderr.decode("utf-8", "replace"))
    return total
