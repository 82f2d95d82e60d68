"""The steps that move a card's worth of data: write the image, read it back, wipe the card.

Each runs one `piseduce-node` command with progress (bytes done of a total, see
`piseduce.node.meter`), is stalled only when that progress stops growing (`card.stall_seconds`),
and has a time budget that follows the bytes it moves at the documented worst-case card speed
(`card.py`). A lost connection or a power loss of the board is recovered (`recovery.py`).

A compressed image deployed to several boards at once is chained from its raw copy in the
agent's raw cache (`raw_cache.py`, decompressed once); the boards then verify the raw checksum.
One board alone takes the direct path with the compressed image (the board decompresses).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piseduce.agent.drivers.base import StepContext, StepError
from piseduce.agent.drivers.raspberry import card, raw_cache, recovery
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.distribution import Distributor, LeftChain, chain_budget, gather_seconds
from piseduce.agent.drivers.raspberry.progress import PhaseProgress

if TYPE_CHECKING:
    from piseduce.agent.drivers.raspberry.ops import RpiOps


@dataclass(frozen=True)
class EnvInfo:
    name: str
    image: str
    size: int
    ssh_user: str
    checksum: str
    state: str


def image_path(env_dir: Path, image: str) -> Path:
    """The image file of an environment; ValueError when the name leaves env_path."""
    if not image or "\0" in image:
        raise ValueError("image file name is empty")
    root = env_dir.resolve()
    path = (root / image).resolve()
    if path == root or not path.is_relative_to(root):
        raise ValueError(f"image {image!r} is outside env_path")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _image(ops: RpiOps, ctx: StepContext) -> tuple[EnvInfo, Path]:
    env = ops.environment(str(ctx.params.get("environment", "")))
    try:
        path = image_path(ops.env_dir, env.image)
    except ValueError as exc:
        raise StepError(f"environment {env.name}: {exc}") from None
    if not path.is_file():
        raise StepError(f"environment {env.name}: image file {env.image} is missing from env_path")
    return env, path


MB = 1_000_000


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


class Imaging:
    def __init__(self, ops: RpiOps, min_seconds: float) -> None:
        self.ops = ops
        self.min_seconds = min_seconds
        self.distributor = Distributor(ops, card.stall_seconds)
        config = ops.config
        # A failed decompression answers for the boards of its deployment (one gathering window).
        self.raw_cache = raw_cache.RawCache(config.raw_cache_dir, int(config.raw_cache_max_gb * 1e9),
                                            remember_failure=gather_seconds(ops.boot_wait))

    # -- budgets (the engine calls them as the step begins)

    def card_bytes(self, ctx: StepContext) -> int:
        env, path = _image(self.ops, ctx)
        return card.card_bytes_of(path, env.size)

    def write_budget(self, ctx: StepContext) -> float:
        """One board's write; a board that will be in a chain gets the chain's allowance too."""
        env, path = _image(self.ops, ctx)
        nbytes = card.card_bytes_of(path, env.size)
        if self.distributor.expected(ctx, env.name) <= 1:
            return max(self.min_seconds, card.write_seconds(nbytes, self.ops.scale))
        extra = chain_budget(card.stall_seconds(), self.ops.boot_wait)
        if not card.is_raw(path):
            # The chain carries the raw copy: its size, and its decompression unless it is cached.
            entry = raw_cache.lookup(self.raw_cache.folder, env.checksum.lower()) if env.checksum else None
            if entry is not None:
                nbytes = entry.size
            else:
                extra += raw_cache.decompress_seconds(nbytes)
        return max(self.min_seconds, card.write_seconds(nbytes, self.ops.scale) + extra)

    def verify_budget(self, ctx: StepContext) -> float:
        res = ctx.state.get("write_result")
        written = int(res.get("written") or 0) if isinstance(res, dict) else 0
        return max(self.min_seconds, card.read_seconds(written or self.card_bytes(ctx), self.ops.scale))

    # -- steps

    async def write_image(self, ctx: StepContext) -> None:
        env, path = _image(self.ops, ctx)
        # A new system brings new host keys: the previous deployment's pin no longer applies.
        ctx.state.pop("host_key", None)
        ctx.state.pop("write_result", None)
        checksum = env.checksum or await asyncio.to_thread(sha256_file, path)
        # Known wiped: the image's zero blocks need not be written. Forgotten before anything
        # writes the card (committed first: a crash mid-write leaves it forgotten).
        sparse = ctx.node.attrs.get("card_zeroed") is True
        await ctx.save_node_attrs(card_zeroed=False)
        budget = self.write_budget(ctx)
        await ctx.progress(0, f"writing {env.name}: {card.size_words(card.card_bytes_of(path, env.size))} "
                              f"to the card (at most {_minutes(budget)} at the slowest card speed)"
                              f"{'; the card is wiped: zero blocks are skipped' if sparse else ''}")
        progress = PhaseProgress(ctx, env.name)
        result: dict[str, Any] | None = None
        expected, raw_of = checksum, ""
        if await asyncio.to_thread(card.is_raw, path):
            result = await self._chain(ctx, env, path, checksum, sparse, progress)
        elif (known := await self.raw_cache.failure_of(path, checksum)) is not None:
            # Its deployment's other boards failed on it already: the same reason, not a write.
            raise StepError(f"environment {env.name}: the image cannot be prepared for the chain: {known}")
        elif await asyncio.to_thread(self.distributor.expected, ctx, env.name) > 1:
            entry = await self._raw_copy(ctx, env, path, checksum)
            if entry is not None:
                try:
                    result = await self._chain(ctx, env, entry.path, entry.sha256, sparse, progress)
                finally:
                    self.raw_cache.release(checksum)
                if result is not None:  # the boards verified the raw image's checksum
                    expected, raw_of = entry.sha256, checksum.lower()
        if result is None:
            result = await self._direct(ctx, env, path, checksum, sparse, progress)
        written = int(result.get("written") or 0)
        ctx.state["write_result"] = {
            "sha256": str(result.get("sha256", "")),
            "image_sha256": str(result.get("image_sha256", "")),
            "written": written,
            "expected": expected,
            "raw_of": raw_of,
        }
        skipped = int(result.get("skipped_zero") or 0)
        note = f" ({card.size_words(skipped)} of zero blocks skipped)" if skipped else ""
        await ctx.progress(100, f"{card.size_words(written)} written{note}")

    async def _chain(self, ctx: StepContext, env: EnvInfo, path: Path, checksum: str, sparse: bool,
                     progress: PhaseProgress) -> dict[str, Any] | None:
        """The chain's write of the raw image `path`; None when the group is this board alone, or
        when the board was cut out and brought back (issue 10: a power loss mid-write is recovered,
        in a chain too): the direct path then writes it. The others went on without it; it fails
        only when it does not come back (StepError with the reason) or the step's budget runs out."""
        group, member = await self.distributor.join(ctx, env.name, path, checksum, progress)
        if len(group.members) <= 1:
            return None
        place = group.members.index(member) + 1
        await ctx.log(f"distribution: {ctx.node.name} is board {place} of a chain of "
                      f"{len(group.members)} ({', '.join(m.name for m in group.members)})")
        try:
            return await self.distributor.write(group, member, sparse=sparse)
        except LeftChain as exc:
            what = f"write {env.name} on {ctx.node.name}"
            await ctx.log(f"distribution: {exc}; bringing {ctx.node.name} back to write it straight from "
                          "the agent", "warning")
            await recovery.bring_back(self.ops, ctx, what, str(exc))
        await ctx.log(f"distribution: {ctx.node.name} is written straight from the agent (out of the chain)")
        return None

    async def _raw_copy(self, ctx: StepContext, env: EnvInfo, path: Path,
                        checksum: str) -> raw_cache.RawEntry | None:
        """The raw copy of a compressed image, decompressed once for every board that asks; None
        when the cache cannot be written (the direct path then: slower, but the board deploys)."""

        async def report(p: raw_cache.BuildProgress) -> None:
            percent = min(99, p.read * 100 // p.total) if p.total else 0
            await ctx.progress(percent, f"preparing the image for the chain: {p.read // MB} of "
                                        f"{p.total // MB} MB")

        try:
            entry, built = await self.raw_cache.acquire(path, checksum, report)
        except raw_cache.CacheUnavailable as exc:
            await ctx.log(f"distribution: {exc}; {ctx.node.name} gets the image straight from the agent "
                          "instead of a chain", "warning")
            return None
        except raw_cache.CacheError as exc:
            raise StepError(f"environment {env.name}: the image cannot be prepared for the chain: "
                            f"{exc}") from None
        if built:
            used = raw_cache.disk_bytes(entry.path)
            await ctx.log(f"distribution: {env.name} prepared for the chain: "
                          f"{card.size_words(entry.size)} raw ({card.size_words(used)} on the agent's disk), "
                          f"sha256 {entry.sha256[:16]}…")
        return entry

    async def _direct(self, ctx: StepContext, env: EnvInfo, path: Path, checksum: str, sparse: bool,
                      progress: PhaseProgress) -> dict[str, Any]:
        """One board: the agent streams the image over the board's SSH session."""
        argv = ["piseduce-node", "write-image", "--sha256", checksum, "--size", str(path.stat().st_size),
                "--no-verify"]
        if env.size > 0:
            argv += ["--image-size", str(env.size)]
        if sparse:
            argv.append("--sparse")

        async def work(conn: Any) -> dict[str, Any]:
            return await sshc.stream_file_to_helper(conn, argv, path, on_progress=progress,
                                                    stall_timeout=card.stall_seconds())

        return await recovery.on_nfs(self.ops, ctx, f"write {env.name} on {ctx.node.name}", work)

    async def verify(self, ctx: StepContext) -> None:
        res = ctx.state.get("write_result")
        if not isinstance(res, dict) or not res.get("image_sha256"):
            raise StepError("no record of the image write: the deployment must start again")
        env = self.ops.environment(str(ctx.params.get("environment", "")))
        expected = (env.checksum or str(res.get("expected", ""))).lower()
        if res.get("raw_of"):
            # Chained from the raw copy: the boards received the raw image, not the file.
            if env.checksum and env.checksum.lower() != res["raw_of"]:
                raise StepError(f"environment {env.name} was replaced during the deployment: "
                                "the deployment must start again")
            expected = str(res.get("expected", "")).lower()
        if str(res.get("sha256", "")).lower() != expected:
            raise StepError(
                f"image checksum mismatch: the board received {res.get('sha256')}, "
                f"environment {env.name} has {expected}"
            )
        written = int(res.get("written") or 0)
        argv = ["piseduce-node", "verify", "--size", str(written), "--sha256", str(res["image_sha256"])]
        progress = PhaseProgress(ctx, "read-back")

        async def work(conn: Any) -> dict[str, Any]:
            return await sshc.stream_file_to_helper(conn, argv, None, on_progress=progress,
                                                    stall_timeout=card.stall_seconds())

        await recovery.on_nfs(self.ops, ctx, f"read back the card of {ctx.node.name}", work)
        await ctx.log(f"image verified: sha256 {expected[:16]}…, {written} bytes read back from the card")

    async def wipe(self, ctx: StepContext) -> None:
        progress = PhaseProgress(ctx)

        async def work(conn: Any) -> dict[str, Any]:
            return await sshc.stream_file_to_helper(conn, ["piseduce-node", "wipe"], None,
                                                    on_progress=progress, stall_timeout=card.stall_seconds())

        result = await recovery.on_nfs(self.ops, ctx, f"wipe the card of {ctx.node.name}", work)
        ctx.state.pop("host_key", None)
        ctx.state.pop("write_result", None)
        ctx.connection.clear()
        # An all-zero card lets the next deployment skip the image's zero blocks (sparse write).
        await ctx.save_node_attrs(deployed_host_key="", card_zeroed=result.get("card_zeroed") is True)
        await ctx.log("SD card wiped")

