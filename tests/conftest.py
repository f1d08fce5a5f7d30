"""Shared pytest wiring: fixture plugins, the docker marker, and CI's "Docker is required" rule."""

from __future__ import annotations

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
