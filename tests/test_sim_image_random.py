"""The benchmark images can hold incompressible data (bench_rpi --random-mb): the compressed image
is then as big as that data, and a size that leaves no room for it is refused with the size to give."""

from __future__ import annotations

from pathlib import Path

import pytest

from piseduce.sim.images import ImageBuildError, build_environment


def test_an_image_with_random_data_does_not_compress_and_a_too_small_size_says_what_to_give(
    tmp_path: Path,
) -> None:
    env = build_environment(tmp_path / "img", "raspios", size_mb=80, compress="gz", random_mb=16)
    assert env["size"] == 80 << 20
    assert (tmp_path / "img" / env["image"]).stat().st_size >= 16 << 20
    with pytest.raises(ImageBuildError, match="size_mb must be at least 72 for 16 MB of random data"):
        build_environment(tmp_path / "small", "raspios", size_mb=71, random_mb=16)
    build_environment(tmp_path / "least", "raspios", size_mb=72, compress=None, random_mb=16)  # it fits
