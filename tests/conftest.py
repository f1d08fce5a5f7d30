"""Shared pytest wiring: fixture plugins, the docker marker, CI's "Docker is required" rule, a clean env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.server_fixtures",
    "tests.support.docker_fixtures",
    "tests.support.prefect_fixtures",
    "tests.support.agent_fixtures",
    "tests.support.runtime_fixtures",
]

DOCKER_FIXTURES = {"docker_client", "flow_image", "busybox_image", "registry", "stand_in_image", "runtime"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a Docker fixture are marked `docker`, so the marker cannot drift from fixture use."""
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.fixture
def clean_prefect_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PREFECT__* from the developer's shell; Prefect's home is the test's tmp_path (returned)."""
    for name in list(os.environ):
        if name.startswith("PREFECT__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT__HOME_DIR", str(tmp_path))
    return tmp_path
