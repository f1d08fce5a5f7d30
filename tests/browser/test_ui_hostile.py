"""Hostile strings in the web UI: run names, labels, flow and agent names, parameters and log lines (message
and level) that carry markup are shown as text and execute nothing; the browser is the judge.

Three layers would catch an injection: the probe's own effect (`window.__xss`), the probe's elements in the
DOM, and the `page` fixture, which fails on the CSP violation or the failed image load an injected element
causes. Only the real server is needed here (no agent: these runs stay Scheduled)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from playwright.sync_api import Page, expect

from tests.browser.pages import assert_no_stray_values, login, open_route, run_row
from tests.support import api
from tests.support.server_fixtures import ServerHandle, start_server

PROBE = "window.__xss=(window.__xss||0)+1"
PAYLOADS = (
    f'<img src=x onerror="{PROBE}">',
    f"<script>{PROBE}</script>",
    f'"><svg onload="{PROBE}">',
    f"'><iframe srcdoc=\"<script>parent.{PROBE}</script>\"></iframe>",
    f"javascript:{PROBE}",
    '{{constructor.constructor("' + PROBE + '")()}}',
)
INJECTED = 'img[src="x"], [onerror], [onload], iframe, object, embed, svg[onload]'
AFFIX = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Co", "Cn", "Zs", "Zl", "Zp")), max_size=6)
HOSTILE = st.builds(lambda pre, payload, post: pre + payload + post, AFFIX, st.sampled_from(PAYLOADS), AFFIX)


@dataclass(frozen=True)
class HostileServer:
    server: ServerHandle
    user_token: str
    runner_token: str
    flow_id: str

    @property
    def ui_url(self) -> str:
        return f"{self.server.url}/ui/"

    def run(self, name: str, labels: list[str]) -> str:
        """A run with hostile name, labels and parameters, and a log line with `name` as its message."""
        run_id = api.create_flow_run(self.server, self.flow_id, token=self.user_token, name=name,
                                     labels=labels, parameters={"who": name})
        self.write_logs(run_id, [(name, "INFO")])
        return run_id

    def write_logs(self, run_id: str, lines: list[tuple[str, str]]) -> None:
        """Log lines (message, level) as a flow container writes them, with the RUNNER token."""
        query = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"
        logs = [{"flow_run_id": run_id, "message": message, "level": level, "name": message}
                for message, level in lines]
        api.call(self.server, query, {"input": {"logs": logs}}, self.runner_token)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileServer]:
    server = start_server(tmp_path_factory.mktemp("hostile-server"), auth="token")
    try:
        user = server.create_token("USER", "browser-user")
        runner = server.create_token("RUNNER", "browser-runner")
        project = api.create_project(server, PAYLOADS[0], user)
        flow_id = api.register_docker_flow(server, name=PAYLOADS[1], image_name="local-agent-example-flow",
                                           image_tag="1.4.1", project_id=project, token=user)
        api.register_agent(server, user, name=PAYLOADS[2])
        yield HostileServer(server, user, runner, flow_id)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ui_origin(hostile: HostileServer) -> str:
    return hostile.server.url


def assert_inert(page: Page) -> None:
    """Nothing of a probe ran or became an element."""
    assert page.evaluate("() => window.__xss") is None, "a probe's script ran"
    assert page.locator(INJECTED).count() == 0, page.locator(INJECTED).first.evaluate("e => e.outerHTML")


def test_hostile_names_and_labels_are_text_on_the_list_pages(page: Page, hostile: HostileServer) -> None:
    runs = {hostile.run(payload, [payload]): payload for payload in PAYLOADS}
    login(page, hostile.ui_url, hostile.user_token)
    open_route(page, hostile.ui_url, "runs")
    for run_id, payload in runs.items():
        expect(run_row(page, run_id)).to_contain_text(payload)
        link = run_row(page, run_id).locator(f'a[href$="{run_id}"]').first
        assert link.text_content() == payload
    assert_inert(page)
    open_route(page, hostile.ui_url, "flows")
    expect(page.get_by_test_id("flow-row").first).to_contain_text(PAYLOADS[1])
    expect(page.get_by_test_id("flow-row").first).to_contain_text(PAYLOADS[0])  # the project
    assert_inert(page)
    open_route(page, hostile.ui_url, "agents")
    expect(page.get_by_test_id("agent-row").filter(has_text=PAYLOADS[2])).to_have_count(1)
    assert_inert(page)


def test_log_lines_with_hostile_levels_break_nothing(page: Page, hostile: HostileServer) -> None:
    """The writer of a log (any flow's code) picks its level, which the page turns into a class name."""
    levels = ['"><img src=x>', "WARN ING", "level-x y", "", "\u202eERROR"]
    run_id = hostile.run("odd-levels", ["odd"])
    hostile.write_logs(run_id, [(f"line with level {level!r}", level) for level in levels])
    login(page, hostile.ui_url, hostile.user_token)
    open_route(page, hostile.ui_url, f"runs/{run_id}")
    expect(page.get_by_test_id("run-title")).to_have_text("odd-levels")
    expect(page.get_by_test_id("log-line")).to_have_count(len(levels) + 1)
    for level in levels:
        expect(page.get_by_test_id("run-logs")).to_contain_text(f"line with level {level!r}")
    assert_inert(page)
    assert_no_stray_values(page)


@settings(max_examples=8, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # one page, visited per example
@given(name=HOSTILE, label=HOSTILE)
@example(name=PAYLOADS[0], label=PAYLOADS[1])
def test_generated_hostile_strings_are_text_on_the_run_page(
    page: Page, hostile: HostileServer, name: str, label: str
) -> None:
    run_id = hostile.run(name, [label])
    if not page.get_by_test_id("logout").is_visible():
        login(page, hostile.ui_url, hostile.user_token)
    open_route(page, hostile.ui_url, f"runs/{run_id}")
    title = page.get_by_test_id("run-title")
    expect(title).to_have_text(name)
    assert title.text_content() == name
    expect(page.get_by_test_id("run-logs")).to_contain_text(name)
    expect(page.locator("body")).to_contain_text(label)
    assert_inert(page)
