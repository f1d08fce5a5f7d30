"""The real parts behind the browser tests: one server (`--auth token`, on 0.0.0.0 so flow containers reach
it), the example flows registered by the real Prefect 1.4.1 client, and one agent launching them as
containers of the real flow image. One stack per test module: the flow runs it starts are shared."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from tests.support import api
from tests.support.agent_fixtures import AGENT_LABEL, AgentProcess, agent_env
from tests.support.docker_fixtures import RUN_ID, TEST_RUN_LABEL
from tests.support.prefect_fixtures import PrefectBackend, PrefectVenv, register_examples, running_backend

FLOWS = ("hello", "failing", "sleepy")


@dataclass
class UiStack:
    """What a browser test needs: the UI's address, the tokens, the flows and the module's shared runs."""

    backend: PrefectBackend
    agent: AgentProcess
    flow_ids: dict[str, str]
    runs: dict[str, str] = field(default_factory=dict)  # purpose -> flow run id, created at module start

    @property
    def server(self) -> Any:
        return self.backend.server

    @property
    def ui_url(self) -> str:
        return f"{self.server.url}/ui/"

    @property
    def user_token(self) -> str:
        assert self.backend.user_token
        return self.backend.user_token

    def create_run(self, flow: str, *, name: str, **kwargs: Any) -> str:
        """A run of an example flow, due now: the agent launches it at once."""
        flow_id = self.flow_ids[flow]
        return api.create_flow_run(self.server, flow_id, token=self.user_token, name=name, **kwargs)


def start_agent(server: Any, token: str, workdir: Path, **settings: Any) -> AgentProcess:
    """`python -m agent start` as tests.support.agent_fixtures.agent_factory starts it, for a whole module."""
    name = f"browser-agent-{RUN_ID}-{workdir.name}"
    home = workdir / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    settings = {"level": "DEBUG", "drain_timeout": 10, **settings, "name": name,
                "container_labels": {TEST_RUN_LABEL: RUN_ID}}
    env = agent_env(server, token, home, settings)
    return AgentProcess([sys.executable, "-m", "agent", "start"], env, workdir / f"{name}.log", name)


def remove_agent_containers(client: docker.DockerClient, agent_name: str) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{AGENT_LABEL}={agent_name}"}):
        try:
            container.remove(force=True)
        except docker.errors.APIError:  # gone already (auto-remove, concurrent cleanup)
            pass


@contextmanager
def ui_stack(prefect_venv: PrefectVenv, client: docker.DockerClient, workdir: Path) -> Iterator[UiStack]:
    """Server, agent (started first: it comes up while the client registers) and the example flows."""
    with running_backend("cloud", workdir / "server", host="0.0.0.0") as backend:
        assert backend.runner_token
        agent = start_agent(backend.server, backend.runner_token, workdir,
                            watch_interval=0.5, cancel_grace_seconds=10)
        try:
            args = [arg for flow in FLOWS for arg in ("--flow", flow)]
            summary = register_examples(prefect_venv, backend.env(), *args)
            flow_ids = {name: summary["flows"][name]["flow_id"] for name in FLOWS}
            yield UiStack(backend, agent, flow_ids)
        finally:
            agent.kill()
            remove_agent_containers(client, agent.name)
