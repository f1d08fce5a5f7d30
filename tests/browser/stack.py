"""The real parts behind the browser tests: one server (`--auth token`, on 0.0.0.0 so flow containers reach
it), the example flows registered by the real Prefect 1.4.1 client, and one agent launching them as
containers of the real flow image. One stack per test module: the flow runs it starts are shared."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from tests.support import api
from tests.support.agent_fixtures import AgentProcess, remove_agent_containers, start_agent
from tests.support.docker_fixtures import RUN_ID
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


@contextmanager
def ui_stack(prefect_venv: PrefectVenv, client: docker.DockerClient, workdir: Path) -> Iterator[UiStack]:
    """Server, agent (started first: it comes up while the client registers) and the example flows."""
    with running_backend("cloud", workdir / "server", host="0.0.0.0") as backend:
        assert backend.runner_token
        home = workdir / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        agent = start_agent(backend.server, backend.runner_token, workdir, home,
                            name=f"browser-agent-{RUN_ID}-{workdir.name}", watch_interval=0.5,
                            cancel_grace_seconds=10)
        try:
            args = [arg for flow in FLOWS for arg in ("--flow", flow)]
            summary = register_examples(prefect_venv, backend.env(), *args)
            flow_ids = {name: summary["flows"][name]["flow_id"] for name in FLOWS}
            yield UiStack(backend, agent, flow_ids)
        finally:
            agent.kill()
            remove_agent_containers([agent.name])
