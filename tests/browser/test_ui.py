"""The web UI in a real browser (headless Chromium) against the real server (`--auth token`, over HTTP on
127.0.0.1), the real agent and real Prefect 1.4.1 flow runs in containers of the example flow image.

One stack per module (tests/browser/conftest.py `ui`); the failing and the long-sleeping run start with the
module, so their containers work while the first tests run. Each test logs in through the form in a fresh
browser context. The browser is the judge of safety: any JavaScript error, console error, CSP violation or
off-origin request fails the test (the `page` fixture)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.pages import FINISHED, assert_no_stray_values, login, open_route, record_states, run_row
from tests.browser.problems import PageProblems
from tests.browser.stack import UiStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LIFECYCLE = ["Scheduled", "Submitted", "Running", "Success"]
RUN_ID_ROUTE = re.compile(r"#/runs/[0-9a-f-]{36}$")


@pytest.fixture(scope="module", autouse=True)
def background_runs(ui: UiStack) -> dict[str, str]:
    """Runs that work while the first tests run: one that fails, one that sleeps until it is cancelled."""
    ui.runs["failed"] = ui.create_run("failing", name="nightly-report")
    ui.runs["sleepy"] = ui.create_run("sleepy", name="long-import", parameters={"seconds": 600})
    return ui.runs


def test_a_wrong_token_shows_the_reason_and_a_user_token_logs_in(
    page: Page, page_problems: PageProblems, ui: UiStack, screenshots: Path
) -> None:
    page_problems.allow(r"status of 401")  # Chromium logs the API's 401 answer to the wrong token
    page.goto(ui.ui_url)
    expect(page.get_by_test_id("login-token")).to_be_visible()
    page.screenshot(path=screenshots / "login.png")
    page.get_by_test_id("login-token").fill("las_not-a-token-of-this-server")
    page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(page.get_by_test_id("logout")).to_be_hidden()
    assert page.evaluate("() => sessionStorage.getItem('local-agent-token')") is None

    page.get_by_test_id("login-token").fill(ui.user_token)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("logout")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('local-agent-token')") == ui.user_token
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-token")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('local-agent-token')") is None


def test_a_run_goes_live_to_success_without_reload(
    page: Page, ui: UiStack, screenshots: Path
) -> None:
    login(page, ui.ui_url, ui.user_token)
    # Its task sleeps longer than the page's polling interval, so the page certainly shows it Running.
    run_id = ui.create_run("sleepy", name="quick-nap", parameters={"seconds": 4})
    page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page reloaded
    open_route(page, ui.ui_url, "runs")
    states = record_states(page, run_row(page, run_id).get_by_test_id("run-state"), FINISHED)
    print(f"states the runs page showed: {states}")  # e.g. ['Submitted', 'Running', 'Success']
    assert states[-1] == "Success", states
    assert "Running" in states, f"the page never showed the run Running: {states}"
    assert [s for s in LIFECYCLE if s in states] == states, f"unexpected states or order: {states}"
    assert page.evaluate("() => window.__sameDocument") is True, "the page reloaded"
    expect(run_row(page, run_id).get_by_test_id("run-state")).to_have_class(re.compile(r"\bstate-success\b"))
    page.screenshot(path=screenshots / "runs.png")
    assert_no_stray_values(page)


def test_create_a_run_with_parameters_from_the_flows_page_and_read_its_logs(
    page: Page, ui: UiStack, screenshots: Path
) -> None:
    login(page, ui.ui_url, ui.user_token)
    open_route(page, ui.ui_url, "flows")
    row = page.locator(f'[data-testid="flow-row"][data-flow-id="{ui.flow_ids["hello"]}"]')
    expect(row).to_contain_text("hello")
    page.screenshot(path=screenshots / "flows.png")
    assert_no_stray_values(page)
    row.get_by_test_id("create-run").click()
    parameters = page.get_by_test_id("run-parameters")
    expect(parameters).to_have_value(re.compile(r"^\s*\{\s*\}\s*$"))
    parameters.fill('{"name": "browser"}')
    page.get_by_test_id("run-name").fill("hello-from-the-browser")
    page.get_by_test_id("create-run-submit").click()

    expect(page).to_have_url(RUN_ID_ROUTE)
    expect(page.get_by_test_id("run-title")).to_have_text("hello-from-the-browser")
    expect(page.get_by_test_id("run-state")).to_have_text("Success", timeout=120_000)
    # Prefect sends its last log lines after the final state: the page must still pick them up.
    logs = page.get_by_test_id("run-logs")
    expect(logs).to_contain_text("greeting: HELLO, BROWSER!", timeout=20_000)
    expect(logs).to_contain_text("Submitted for execution")
    expect(page.get_by_test_id("state-item").filter(has_text="Running")).not_to_have_count(0)
    expect(page.get_by_test_id("cancel-run")).to_be_hidden()
    page.screenshot(path=screenshots / "run.png", full_page=True)  # the whole run page, logs included
    assert_no_stray_values(page)


def test_a_failed_run_shows_its_error(page: Page, ui: UiStack) -> None:
    login(page, ui.ui_url, ui.user_token)
    open_route(page, ui.ui_url, f"runs/{ui.runs['failed']}")
    expect(page.get_by_test_id("run-title")).to_have_text("nightly-report")
    expect(page.get_by_test_id("run-state")).to_have_text("Failed", timeout=120_000)
    expect(page.get_by_test_id("run-state")).to_have_class(re.compile(r"\bstate-failed\b"))
    expect(page.get_by_test_id("run-error")).to_contain_text("Some reference tasks failed")
    expect(page.locator('[data-testid="log-line"].level-error')).not_to_have_count(0, timeout=20_000)
    assert_no_stray_values(page)


def test_cancel_a_running_run(page: Page, ui: UiStack) -> None:
    login(page, ui.ui_url, ui.user_token)
    open_route(page, ui.ui_url, f"runs/{ui.runs['sleepy']}")
    badge = page.get_by_test_id("run-state")
    expect(badge).to_have_text("Running", timeout=120_000)
    page.get_by_test_id("cancel-run").click()
    expect(badge).to_have_text("Cancelled", timeout=60_000)
    history = page.get_by_test_id("state-item")
    expect(history.filter(has_text="Cancelling")).to_have_count(1)  # what the button asked for, then the end
    expect(history.filter(has_text="Cancelled")).to_have_count(1)
    expect(badge).to_have_class(re.compile(r"\bstate-cancelled\b"))
    expect(page.get_by_test_id("cancel-run")).to_be_hidden()
    expect(page.get_by_test_id("action-error")).to_be_hidden()
    assert_no_stray_values(page)


def test_the_agents_page_lists_the_agent(page: Page, ui: UiStack, screenshots: Path) -> None:
    login(page, ui.ui_url, ui.user_token)
    open_route(page, ui.ui_url, "agents")
    expect(page.get_by_test_id("agent-row").filter(has_text=ui.agent.name)).to_have_count(1)
    page.screenshot(path=screenshots / "agents.png")
    assert_no_stray_values(page)
