"""Where the browser tests' Chromium is and how it starts (no Playwright import: tests/conftest.py uses this
to skip, or fail in CI, before any browser fixture runs).

The browser is Debian's package, never Playwright's download (`playwright install` needs the network)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("LOCAL_AGENT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root in a container, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when Playwright and Chromium are both present."""
    if importlib.util.find_spec("playwright") is None:
        return "the Python package playwright is not installed (the `dev` extra)"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    return None
