"""Debian's Chromium under Playwright: the one launch recipe for the browser tests and bench.

`playwright install` downloads a browser and cannot work here; Debian's package does. The flags
keep Chromium from reaching the network (this machine has none) and from needing a GPU.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # several pages load at once in the class test: background pages must not be throttled
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
]


def launch(playwright):
    """Start headless Debian Chromium with the flags above."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
