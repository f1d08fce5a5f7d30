"""Shared pytest wiring: fixture plugins, the docker and browser markers, CI's "Docker is required" rule, a
clean env, and the store every server test runs on (SQLite and PostgreSQL)."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

from tests.browser.chromium import chromium_missing

pytest_plugins = [
    "tests.support.api_surface",  # first: the fixture plugins below import it
    "tests.support.server_fixtures",
    "tests.support.docker_fixtures",
    "tests.support.prefect_fixtures",
    "tests.support.agent_fixtures",
    "tests.support.runtime_fixtures",
    "tests.support.postgres",
    "tests.support.database_fixtures",
    "tests.support.swarm_fixtures",
    "tests.support.podman",  # also marks the tests that use a Podman service `podman`
]

DOCKER_FIXTURES = {"docker_client", "flow_image", "busybox_image", "registry", "stand_in_image", "runtime"}
BROWSER_FIXTURES = {"browser"}  # tests/browser/conftest.py: every page fixture depends on it


# Modules whose every test that touches the server's store runs once per backend (ids [sqlite], [postgres]).
BOTH_BACKENDS = ("tests/unit/test_server_*.py", "tests/integration/test_server_*.py",
                 "tests/integration/test_prefect_client_*.py")
TESTS_ROOT = Path(__file__).resolve().parent


def runs_on_both_backends(path: Path) -> bool:
    resolved = path.resolve()
    if not resolved.is_relative_to(TESTS_ROOT):
        return False
    relative = "tests/" + resolved.relative_to(TESTS_ROOT).as_posix()
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in BOTH_BACKENDS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only(reason): a server test about SQLite itself (not run on "
                                       "PostgreSQL); the reason is required")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`db_backend` per test: both backends in the server modules (grouped per module, so a module-scoped
    server starts once per backend), SQLite elsewhere (agent tests do not double)."""
    if "db_backend" not in metafunc.fixturenames or not runs_on_both_backends(metafunc.definition.path):
        return
    sqlite_only = metafunc.definition.get_closest_marker("sqlite_only")
    if sqlite_only is not None and not (sqlite_only.kwargs.get("reason") or sqlite_only.args):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: sqlite_only needs a reason")
    params = [pytest.param("sqlite", id="sqlite")]
    if sqlite_only is None:
        params.append(pytest.param("postgres", id="postgres", marks=pytest.mark.postgres))
    metafunc.parametrize("db_backend", params, indirect=True, scope="module")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a Docker (browser) fixture are marked `docker` (`browser`), so the marker cannot drift
    from fixture use.
    A `sqlite_only` mark on one parameter set (`pytest.param(..., marks=...)`) skips its postgres variant."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if DOCKER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.docker)
        if BROWSER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.browser)
        params = getattr(getattr(item, "callspec", None), "params", {})
        sqlite_only = item.get_closest_marker("sqlite_only")
        if sqlite_only is not None and params.get("db_backend") == "postgres":
            reason = sqlite_only.kwargs.get("reason") or (sqlite_only.args[0] if sqlite_only.args else "")
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A `browser` test without Playwright or Chromium skips on a developer machine and fails in CI
    (LOCAL_AGENT_REQUIRE_DOCKER=1), where a skipped suite would look green; checked before any fixture."""
    if item.get_closest_marker("browser") is None:
        return
    reason = chromium_missing()
    if reason is None:
        return
    from tests.support.docker_fixtures import docker_required  # a plugin: imported once pytest registered it

    if docker_required():
        pytest.fail(f"Chromium is required (LOCAL_AGENT_REQUIRE_DOCKER=1): {reason}")
    pytest.skip(reason)


@pytest.fixture
def clean_prefect_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PREFECT__* from the developer's shell; Prefect's home is the test's tmp_path (returned)."""
    for name in list(os.environ):
        if name.startswith("PREFECT__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT__HOME_DIR", str(tmp_path))
    return tmp_path
