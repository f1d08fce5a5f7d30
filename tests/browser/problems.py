"""What a page must never do in the browser tests; collected from Playwright's page events."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Request


class PageProblems:
    """Everything on a page that must not happen: JS errors, console errors (CSP violations are logged as
    console errors), requests to any other origin. `allow(pattern)` accepts console errors a test expects."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.problems: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def on_console(self, message: ConsoleMessage) -> None:
        if message.location.get("url", "") == self.origin + "/favicon.ico":
            return  # the browser's own request for an icon the UI does not ship, not the page's doing
        if message.type == "error":
            self.problems.append(f"console error: {message.text} ({message.location.get('url', '')})")

    def on_page_error(self, error: Exception) -> None:
        self.problems.append(f"JavaScript error: {error}")

    def on_request(self, request: Request) -> None:
        if not request.url.startswith((self.origin + "/", "data:", "blob:", "about:")):
            self.problems.append(f"request off the server's origin: {request.method} {request.url}")

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(a.search(p) for a in self.allowed)]
