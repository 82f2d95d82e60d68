"""Streaming an OS image from stdin onto the card: decompress, write, verify."""

from __future__ import annotations

import hashlib
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

from piseduce.node import cardio
from piseduce.node.disk import DiskError, reread_partitions
from piseduce.node.meter import Meter

CHUNK = 1 << 20
FORMATS = ("auto", "raw", "gz", "xz", "zst", "tar", "tar.gz")


class _HashingReader:
    """Counts and hashes the bytes as they come in (the checksum is of what was sent)."""

    def __init__(self, stream: BinaryIO, head: bytes = b"") -> None:
        self.stream = stream
        self.head = head
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data, self.head = (self.head, b"") if n < 0 or n >= len(self.head) else (
                self.head[:n], self.head[n:])
        else:
            data = self.stream.read(n if n >= 0 else CHUNK)
        self.sha.update(data)
        self.count += len(data)
        return data


def detect_format(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        try:
            inner = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(head, 1024)
        except zlib.error:
            inner = b""
        return "tar.gz" if inner[257:262] == b"ustar" else "gz"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zst"
    if head[257:262] == b"ustar":
        return "tar"
    return "raw"


def _chunks(reader: _HashingReader) -> Iterator[bytes]:
    while True:
        data = reader.read(CHUNK)
        if not data:
            return
        yield data


def _gunzip(reader: _HashingReader) -> Iterator[bytes]:
    # output is bounded per call: a megabyte of compressed zeros is a gigabyte of image
    dec, fed = zlib.decompressobj(zlib.MAX_WBITS | 16), False
    for data in _chunks(reader):
        while data:
            fed = True
            out = dec.decompress(data, CHUNK)
            if out:
                yield out
            if dec.eof:
                # concatenated gzip members are one stream for gzip(1)
                data = dec.unused_data
                dec, fed = zlib.decompressobj(zlib.MAX_WBITS | 16), False
            else:
                data = dec.unconsumed_tail
        while fed and not dec.eof:
            out = dec.decompress(b"", CHUNK)
            if not out:
                break
            yield out
    if fed:
        out = dec.flush()
        if out:
            yield out
        if not dec.eof:
            raise DiskError("the gzip stream is truncated")


def _unxz(reader: _HashingReader) -> Iterator[bytes]:
    dec, fed = lzma.LZMADecompressor(), False
    for data in _chunks(reader):
        while data or (fed and not dec.eof and not dec.needs_input):
            fed = fed or bool(data)
            out = dec.decompress(data, CHUNK)
            data = b""
            if out:
                yield out
            if dec.eof:
                data = dec.unused_data
                dec, fed = lzma.LZMADecompressor(), False
    if fed and not dec.eof:
        raise DiskError("the xz stream is truncated")


def _unzstd(reader: _HashingReader) -> Iterator[bytes]:
    with zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True) as stream:  # type: ignore[arg-type]
        while True:
            data = stream.read(CHUNK)
            if not data:
                return
            yield data


def _untar(reader: _HashingReader, mode: str) -> Iterator[bytes]:
    with tarfile.open(fileobj=reader, mode=mode) as tar:  # type: ignore[call-overload]
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                while True:
                    data = f.read(CHUNK)
                    if not data:
                        break
                    yield data
                # the image is the archive's first regular file; drain the rest for the checksum
                while reader.read(CHUNK):
                    pass
                return
    raise DiskError("the tar archive holds no file")


def decompressed(reader: _HashingReader, fmt: str) -> Iterator[bytes]:
    try:
        if fmt == "raw":
            yield from _chunks(reader)
        elif fmt == "gz":
            yield from _gunzip(reader)
        elif fmt == "xz":
            yield from _unxz(reader)
        elif fmt == "zst":
            yield from _unzstd(reader)
        elif fmt == "tar":
            yield from _untar(reader, "r|")
        elif fmt == "tar.gz":
            yield from _untar(reader, "r|gz")
        else:
            raise DiskError(f"unknown image format {fmt!r}")
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
        raise DiskError(f"the image is not valid {fmt}: {exc}") from exc


def write_image(
    stream: BinaryIO,
    device: Path,
    *,
    expected_sha256: str,
    fmt: str = "auto",
    size_hint: int | None = None,
    image_size: int | None = None,
    device_size: int,
    meter: Meter,
    verify: bool = True,
    sparse: bool = False,
) -> dict[str, object]:
    """Writes the decompressed stream at the start of the device, then (`verify`) re-reads it.
    Progress counts the bytes written of `image_size` (the decompressed size) when it is known,
    else the bytes received of `size_hint` (what the agent sends). `sparse`: the card is known to
    read as zeros (wiped whole), so the image's all-zero blocks are skipped."""
    if fmt not in FORMATS:
        raise DiskError(f"unknown image format {fmt!r}")
    head = stream.read(4096)
    if not head:
        raise DiskError("no image data on stdin")
    if fmt == "auto":
        fmt = detect_format(head)
    reader = _HashingReader(stream, head)
    out_sha = hashlib.sha256()
    written = skipped = 0
    meter.start("write", image_size or size_hint or 0)
    with cardio.open_card(device, write=True) as card:
        for data in decompressed(reader, fmt):
            if not data:
                continue
            if written + len(data) > device_size:
                raise DiskError(f"the image is larger than the card ({device_size} bytes)")
            out_sha.update(data)
            if sparse:
                skipped += card.pwrite_nonzero(data, written)
            else:
                card.pwrite(data, written)
            written += len(data)
            meter.advance(written if image_size else reader.count, received=reader.count)
        card.flush()
    meter.finish(received=reader.count)
    got = reader.sha.hexdigest()
    if got != expected_sha256.lower():
        raise DiskError(f"checksum mismatch: received data has sha256 {got}")
    if written == 0:
        raise DiskError("the image is empty")
    result: dict[str, object] = {"written": written, "sha256": got, "image_sha256": out_sha.hexdigest(),
                                 "verified": False, "format": fmt,
                                 "skipped_zero": skipped}
    if verify:
        verify_card(device, written, out_sha.hexdigest(), meter=meter)
        result["verified"] = True
    reread_partitions(device)
    return result


def verify_card(device: Path, size: int, expected_sha256: str, *, meter: Meter) -> dict[str, object]:
    """Reads the first `size` bytes of the card back (from the card, not the page cache) and
    compares their sha256; DiskError when they differ."""
    if size <= 0:
        raise DiskError("nothing to verify: the size must be positive")
    check = hashlib.sha256()
    done = 0
    meter.start("verify", size)
    with cardio.open_card(device) as card:
        card.flush()  # drop what the page cache still holds of the card
        while done < size:
            data = card.pread(min(CHUNK, size - done), done)
            if not data:
                break
            check.update(data)
            done += len(data)
            meter.advance(done)
    meter.finish()
    if done < size:
        raise DiskError(f"verification failed: the card ends at byte {done}, before {size}")
    if check.hexdigest() != expected_sha256.lower():
        raise DiskError("verification failed: the card does not hold what was written")
    return {"verified": True, "size": size, "sha256": check.hexdigest()}
