"""Which board of a chain the agent cuts as stalled (`Group.stalled`), from the counts the boards
report: the first stalled board, never one whose source went quiet too.

The case that made test_rpi_chain's loose-cable test flaky: the board after the unplugged one had
gone quiet a little before it (its last progress line came sooner), so a rule that compared each
board's own silence with the window alone cut the innocent successor first ("pi-3 stalled ... 0
of 67108864 bytes") and never reached the board whose cable was out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from piseduce.agent.drivers.raspberry.distribution import Group, Member

STALL = 8.0
SIZE = 64 << 20


def _chain(tmp_path: Path, n: int) -> tuple[Group, list[Member]]:
    image = tmp_path / "image.img"
    with image.open("wb") as f:
        f.truncate(SIZE)
    group = Group(("owner", "bin", "env", "0" * 64), image, "0" * 64)
    members = [Member(cast(Any, None), f"pi-{i + 1}", f"10.0.0.{i + 2}", cast(Any, None), port=4000 + i)
               for i in range(n)]
    group.members = members
    for prev, m in zip([None, *members], members, strict=False):
        m.upstream = prev
    return group, members


def _at(m: Member, received: int, done: int, quiet: float, now: float) -> None:
    m.received, m.done, m.grew_at = received, done, now - quiet


async def test_the_source_that_went_quiet_is_cut_not_its_successor_that_went_quiet_first(
        tmp_path: Path) -> None:
    group, (head, middle, last) = _chain(tmp_path, 3)
    now = 1000.0
    _at(head, SIZE, SIZE // 2, 0.0, now)
    _at(middle, 16 << 20, 16 << 20, STALL - 1, now)  # its cable is out: quiet, not yet for the window
    _at(last, 15 << 20, 15 << 20, STALL + 1, now)  # quiet for longer, but its source is quiet too
    assert group.stalled(STALL, now) is None
    assert group.stalled(STALL, now + 2) is middle


async def test_a_board_whose_source_moves_is_cut_once_its_window_passes(tmp_path: Path) -> None:
    group, (head, middle, last) = _chain(tmp_path, 3)
    now = 1000.0
    _at(head, SIZE, SIZE // 2, 0.0, now)
    _at(middle, 40 << 20, 30 << 20, 0.5, now)
    _at(last, 0, 0, STALL - 0.5, now)  # nothing at all from a moving source
    assert group.stalled(STALL, now) is None
    assert group.stalled(STALL, now + 1) is last


async def test_a_board_whose_card_stops_with_bytes_to_write_is_cut_whatever_its_source(
        tmp_path: Path) -> None:
    group, (head, middle) = _chain(tmp_path, 2)
    now = 1000.0
    _at(head, SIZE, SIZE, 0.0, now)
    head.wrote = True
    _at(middle, SIZE, 20 << 20, STALL + 1, now)  # everything received, its card stuck
    assert group.stalled(STALL, now) is middle


async def test_boards_that_wrote_or_are_caught_up_with_a_quiet_source_are_left_alone(tmp_path: Path) -> None:
    group, (head, middle, last) = _chain(tmp_path, 3)
    now = 1000.0
    _at(head, SIZE, SIZE, STALL * 3, now)
    head.wrote = True
    _at(middle, 30 << 20, 30 << 20, STALL + 1, now)  # stuck: its source (the head) wrote
    _at(last, 30 << 20, 30 << 20, STALL * 2, now)  # has all its source has
    assert group.stalled(STALL, now) is middle
    middle.failed = "cut"
    last.upstream = head
    last.grew_at = now  # re-fed: a new window
    assert group.stalled(STALL, now + 1) is None
