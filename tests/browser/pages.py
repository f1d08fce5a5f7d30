"""Small page helpers for the browser tests, written against the data-testid contract of the web UI."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from playwright.sync_api import expect

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

FINISHED = {"Success", "Failed", "Cancelled", "TimedOut"}


def login(page: Page, ui_url: str, token: str) -> None:
    """Log in through the form, as a user does; sessionStorage keeps the token for this tab only."""
    page.goto(ui_url)
    page.get_by_test_id("login-token").fill(token)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("logout")).to_be_visible()


def open_route(page: Page, ui_url: str, route: str) -> None:
    """A hash route (`runs`, `runs/<id>`, `flows`, `agents`) in the logged-in tab."""
    page.goto(f"{ui_url}#/{route}")


def run_row(page: Page, run_id: str) -> Locator:
    return page.locator(f'[data-testid="run-row"][data-run-id="{run_id}"]')


def record_states(page: Page, badge: Locator, until: set[str], timeout_s: float = 120.0) -> list[str]:
    """The badge texts the page shows, in order (repeats collapsed), read from the DOM every 100 ms while the
    page keeps running its own polling; returns once a state in `until` is shown."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = (badge.text_content() or "").strip() if badge.count() else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if text in until:
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"the badge never showed any of {sorted(until)} in {timeout_s} s; it showed {seen}")


STRAY_VALUES_JS = """() => {
  const stray = new Set(["null", "undefined", "NaN", "[object Object]", "Invalid Date"]);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const found = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (stray.has(node.nodeValue.trim())) found.push(node.parentElement.outerHTML.slice(0, 200));
  }
  return found;
}"""


def assert_no_stray_values(page: Page) -> None:
    """No JavaScript value rendered as text where data was missing ("null", "undefined", "NaN"...)."""
    found = page.evaluate(STRAY_VALUES_JS)
    assert not found, f"the page shows JavaScript values instead of data: {found}"
