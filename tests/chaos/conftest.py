"""Fixtures of the chaos tests: a fault proxy per test and the environment the scenarios run in."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from tests.support.agent_fixtures import AgentProcess
from tests.support.chaos import CHAOS_LABEL
from tests.support.chaos_scenarios import ChaosEnv, agent_settings, new_tag
from tests.support.docker_fixtures import remove_containers
from tests.support.fault_proxy import FaultProxy
from tests.support.server_fixtures import ServerHandle


@pytest.fixture
def fault_proxy(docker_client: docker.DockerClient) -> Iterator[FaultProxy]:
    """A fault proxy in front of the daemon (seeded, so a failure replays the same fault sequence)."""
    proxy = FaultProxy(seed=20261205)
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def chaos_env(server: ServerHandle, fault_proxy: FaultProxy, stand_in_image: str,
              agent_factory: Callable[..., AgentProcess], docker_client: docker.DockerClient,
              ) -> Iterator[ChaosEnv]:
    """The scenarios' world: agents are `agent_factory` processes with `agent_settings` (same labels)."""
    tag = new_tag()
    settings: dict[str, Any] = agent_settings(fault_proxy, tag)

    spawned: dict[str, AgentProcess] = {}

    def spawn(name: str | None) -> AgentProcess:
        if name in spawned:  # a restart under the same name reuses the log file: keep the first one's output
            earlier = spawned[name].log_path
            shutil.copyfile(earlier, earlier.with_suffix(".before-restart.log"))
        agent = agent_factory(server, name=name, **settings)
        spawned[agent.name] = agent
        return agent

    yield ChaosEnv(server=server, proxy=fault_proxy, image=stand_in_image, spawn=spawn, tag=tag)
    remove_containers(docker_client, f"{CHAOS_LABEL}={tag}")
