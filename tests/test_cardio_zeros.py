"""The card's zero test (cardio.is_zero) and the sparse write built on it (`pwrite_nonzero`)."""

from __future__ import annotations

import os
from pathlib import Path

from piseduce.node import cardio

BLOCK = cardio.HOLE_BLOCK


def test_is_zero_sees_one_nonzero_byte_anywhere_in_a_block() -> None:
    for size in (BLOCK, BLOCK - 1, 1, 4096):
        zeros = bytearray(size)
        assert cardio.is_zero(zeros) and cardio.is_zero(memoryview(zeros)) and cardio.is_zero(bytes(zeros))
        for at in {0, size // 2, size - 1}:
            block = bytearray(size)
            block[at] = 1
            assert not cardio.is_zero(block) and not cardio.is_zero(memoryview(block)), (size, at)


def test_pwrite_nonzero_skips_only_the_zero_blocks_aligned_on_the_card(tmp_path: Path) -> None:
    """Data arriving at an unaligned offset, in a view of a larger buffer: the blocks are the card's."""
    card = tmp_path / "card"
    card.write_bytes(b"")
    os.truncate(card, 8 * BLOCK)
    data = bytearray(4 * BLOCK)
    data[BLOCK + 7] = 0xA5  # the card's 2nd block holds it (offset BLOCK // 2 below)
    data[-1] = 0x5A  # the last, partial block
    with cardio.open_card(card, write=True) as io:
        skipped = io.pwrite_nonzero(memoryview(data)[: 4 * BLOCK], BLOCK // 2)
        io.flush()
    # Card blocks touched: [B/2, B) zero, [B, 2B) zero, [2B, 3B) holds the byte, [3B, 4B) zero,
    # [4B, 4B + B/2) holds the last byte.
    assert skipped == BLOCK // 2 + BLOCK + BLOCK
    got = card.read_bytes()
    assert got[BLOCK // 2: BLOCK // 2 + len(data)] == data and got.count(0) == len(got) - 2
