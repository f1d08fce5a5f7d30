"""Browser fixtures: one headless Chromium for tests/browser, a fresh page per test that fails the test on any
JavaScript error, CSP violation, console error or request leaving the server's origin, and the module's
real stack (tests/browser/stack.py). Without Playwright or Chromium the tests skip (fail in CI): see
`pytest_runtest_setup` in tests/conftest.py."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import pytest

from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS, VIEWPORT
from tests.browser.problems import PageProblems
from tests.browser.stack import UiStack, ui_stack
from tests.support.images import REPO_ROOT
from tests.support.prefect_fixtures import PrefectVenv

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

if importlib.util.find_spec("playwright") is None and os.environ.get("LOCAL_AGENT_REQUIRE_DOCKER") != "1":
    # The test modules import Playwright; without it they are not collected (tests/conftest.py reports the
    # skip reason for browser tests). In CI the import error fails the run instead.
    collect_ignore_glob = ["test_*.py"]

SCREENSHOTS_DIR = REPO_ROOT / "docs" / "ui"
# Reported by the page itself, so a violation fails the test even where Chromium logs it differently.
CSP_REPORTER = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`));"""


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright (its own browser download is never used); one for the
    browser tests, closed after the last of them rather than idling through the rest of the suite."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui(prefect_venv: PrefectVenv, docker_client: docker.DockerClient, flow_image: str,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    """The module's server + agent + registered example flows (the flow image exists before the agent)."""
    with ui_stack(prefect_venv, docker_client, tmp_path_factory.mktemp("ui-stack")) as stack:
        yield stack


@pytest.fixture(scope="module")
def ui_origin(ui: UiStack) -> str:
    """The origin the page may talk to; a module with its own server overrides this fixture."""
    return str(ui.server.url)


@pytest.fixture
def page_problems(ui_origin: str) -> PageProblems:
    return PageProblems(ui_origin)


@pytest.fixture
def page(browser: Browser, page_problems: PageProblems) -> Iterator[Page]:
    """A fresh context (its own sessionStorage, so its own login) at 1280x800; checked after the test."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.add_init_script(CSP_REPORTER)
    page = context.new_page()
    page.set_default_timeout(10_000)
    expect.set_options(timeout=10_000)  # the UI polls every 2 s: a few rounds, not Playwright's 5 s
    page.on("console", page_problems.on_console)
    page.on("pageerror", page_problems.on_page_error)
    page.on("request", page_problems.on_request)
    yield page
    context.close()
    unexpected = page_problems.unexpected()
    if unexpected:
        pytest.fail("the page misbehaved:\n" + "\n".join(unexpected), pytrace=False)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """docs/ui/ with LOCAL_AGENT_UPDATE_SCREENSHOTS=1 (to refresh the README's pictures), else tmp_path."""
    if os.environ.get("LOCAL_AGENT_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS_DIR
    return tmp_path
