"""Debian's Chromium for the browser scenario and the browser tests: where it is, and how it
is started (headless, autoplay allowed, nothing reaching for the network).

Never a browser download: Playwright's bundled driver is given ``executable_path``.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["CHROMIUM_ARGS", "find_chromium"]

CHROMIUM_ARGS = [
    "--autoplay-policy=no-user-gesture-required",  # the pages play sound without a click
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def find_chromium() -> str | None:
    """``$CHROMIUM`` when set (only it: ``CHROMIUM=none`` means none), else Debian's
    ``/usr/bin/chromium``, else one on PATH."""
    if "CHROMIUM" in os.environ:
        candidates: list[str | None] = [os.environ["CHROMIUM"]]
    else:
        candidates = ["/usr/bin/chromium"]
        candidates += [shutil.which(name) for name in ("chromium", "chromium-browser")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None
