"""What the browser tests share: Debian's Chromium, its flags on this closed network, and where
screenshots go (docs/img, used by the user guide)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "img"
