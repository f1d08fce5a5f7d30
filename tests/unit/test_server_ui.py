"""The web UI's routes and bundle, in process (aiohttp's test server on the real app, no subprocess).

What is checked here is what keeps an attacker-controlled string (a run name, a label, a log line) inert:
the Content-Security-Policy on every UI response, a bundle with no inline script or style and no markup
built from data, and nothing loaded from elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from importlib.resources import files
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import build_app
from server.ui import routes
from tests.support.server_fixtures import InProcessServer

Client = TestClient[web.Request, web.Application]
STATIC = files("server.ui").joinpath("static")
APP_JS = STATIC.joinpath("app.js").read_text(encoding="utf-8")
INDEX = STATIC.joinpath("index.html").read_text(encoding="utf-8")
APP_CSS = STATIC.joinpath("app.css").read_text(encoding="utf-8")
# Every data-testid the shared plan names (the browser tests are written against them).
PLAN_TESTIDS = {
    "login-token", "login-submit", "login-error", "logout", "run-row", "run-state", "filter-state",
    "filter-flow", "filter-label", "page-older", "page-newer", "run-title", "state-history", "state-item",
    "task-runs", "run-logs", "log-line", "run-error", "cancel-run", "action-error", "flow-row", "create-run",
    "run-parameters", "run-name", "create-run-submit", "agent-row",
}


@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    server = InProcessServer(tmp_path_factory.mktemp("ui"), auth="token")
    yield server
    server.close()


@pytest.fixture
async def client(inproc: InProcessServer) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(inproc.services))) as test_client:
        yield test_client


@pytest.mark.parametrize(("path", "content_type", "text"), [
    ("/ui/", "text/html", "<script src=\"app.js\" defer></script>"),
    ("/ui/app.js", "text/javascript", "GRAPHQL-QUERIES-BEGIN"),
    ("/ui/app.css", "text/css", ".state-failed"),
])
async def test_each_file_is_served_with_its_type_and_the_security_headers(
        client: Client, path: str, content_type: str, text: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"] == f"{content_type}; charset=utf-8"
    assert text in await response.text()
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    again = await client.get(path, headers={"If-None-Match": response.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""


@pytest.mark.parametrize("path", ["/ui/index.html", "/ui/nothing.js", "/ui/..%2Fapp.py",
                                  "/ui/%2e%2e/schema.graphql", "/ui/static/app.js"])
async def test_nothing_but_the_bundle_is_served(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 404


async def test_a_browser_asking_for_the_root_goes_to_the_ui(client: Client) -> None:
    page = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml"}, allow_redirects=False)
    assert (page.status, page.headers["Location"]) == (302, "/ui/")
    bare = await client.get("/ui", allow_redirects=False)
    assert (bare.status, bare.headers["Location"]) == (302, "/ui/")


@pytest.mark.parametrize(("path", "accept"),
                         [("/", "application/json"), ("/", "*/*"), ("/graphql", "text/html")])
async def test_other_gets_keep_the_method_not_allowed_answer(
        client: Client, path: str, accept: str) -> None:
    response = await client.get(path, headers={"Accept": accept}, allow_redirects=False)
    assert response.status == 405
    assert (await response.json())["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"


async def test_graphql_over_post_is_unchanged(client: Client) -> None:
    response = await client.post("/", json={"query": "query { api { auth_mode } }"})
    assert (response.status, await response.json()) == (200, {"data": {"api": {"auth_mode": "token"}}})


def test_the_bundle_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere() -> None:
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", INDEX, re.S)
    assert scripts == [""]  # the one script is app.js, by src
    assert "<style" not in INDEX and not re.search(r"\sstyle=", INDEX)
    assert not re.search(r"\son[a-z]+=", INDEX)  # no inline event handlers
    for text in (INDEX, APP_JS, APP_CSS):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), "an external resource"
        assert "@import" not in text and "url(" not in text


def test_the_script_never_builds_markup_from_strings() -> None:
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute(\"on", "javascript:"):
        assert sink not in APP_JS, sink
    # Strings passed to setTimeout would be evaluated too: every call gets a function.
    assert not re.search(r"setTimeout\(\s*[\"'`]", APP_JS)


def test_the_token_is_kept_in_session_storage_only() -> None:
    assert "localStorage" not in APP_JS and "document.cookie" not in APP_JS
    assert 'const TOKEN_KEY = "local-agent-token";' in APP_JS and "sessionStorage.setItem(TOKEN_KEY" in APP_JS


def test_every_test_id_of_the_plan_is_in_the_bundle() -> None:
    used = set(re.findall(r'testid: "([a-z-]+)"', APP_JS)) | set(re.findall(r'errorBox\("([a-z-]+)"', APP_JS))
    used |= set(re.findall(r'data-testid="([a-z-]+)"', INDEX))
    assert PLAN_TESTIDS <= used, PLAN_TESTIDS - used


def test_the_bundle_is_package_data() -> None:
    """`pip install .` ships it: the setuptools rule names the three files' patterns."""
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"server.ui" = ["static/*.html", "static/*.js", "static/*.css"]' in pyproject
    assert set(routes.CONTENT_TYPES) == {p.name for p in Path(str(STATIC)).iterdir()}
