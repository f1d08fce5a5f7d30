"""A successful run's container is gone within seconds of the run's end, against the real daemon and server.

The cleanup sweep is set to an hour, so only the watcher's prompt removal can take it; a failed run's
container stays (KEEP_FAILED_CONTAINERS_HOURS), and so does a successful one under
KEEP_SUCCESSFUL_CONTAINERS_HOURS.
"""

from __future__ import annotations

from collections.abc import Callable

import docker

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.ops_helpers import containers_of, eventually, has_log, stand_in_flow, state
from tests.support.runtime_fixtures import RUN_ID
from tests.support.server_fixtures import ServerHandle

SLEEP = {"STAND_IN_SLEEP": "120"}  # ended by the test (`killall sleep`): the stand-in then exits 0


def finish_successfully(server: ServerHandle, client: docker.DockerClient, run_id: str) -> None:
    """What a flow runner does: report Success, then exit 0."""
    assert "errors" not in api.set_flow_run_state(server, run_id, state("Success", "All reference tasks "
                                                                         "succeeded."))
    (container,) = containers_of(client, run_id)
    container.exec_run(["killall", "sleep"])


def test_successful_container_is_removed_at_the_runs_end_failed_and_kept_ones_stay(
    server: ServerHandle, agent_factory: Callable[..., AgentProcess], docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    flow_id = stand_in_flow(server, stand_in_image, "prompt-removal")
    removing, keeping = f"remove-{RUN_ID}", f"keep-{RUN_ID}"

    def run(label: str, **env: str) -> str:
        config = {"type": "DockerRun", "env": env}
        return api.create_flow_run(server, flow_id, labels=[label], run_config=config)

    failed, succeeded, kept = run(removing, STAND_IN_EXIT="3"), run(removing, **SLEEP), run(keeping, **SLEEP)
    settings = {"watch_interval": 0.5, "cleanup_interval": 3600}
    agent = agent_factory(server, labels=[removing], **settings)
    keeper = agent_factory(server, labels=[keeping], keep_successful_containers_hours=1, **settings)
    api.wait_for_state(server, failed, "Failed", timeout=30)
    for run_id, by in ((succeeded, agent), (kept, keeper)):
        eventually(lambda r=run_id: has_log(server, r, "Submitted for execution"), 30, by.output)
        finish_successfully(server, docker_client, run_id)

    eventually(lambda: not containers_of(docker_client, succeeded), 15, agent.output)
    assert f"({succeeded}) ended: Success, exit code 0" in agent.output()  # read before it went
    eventually(lambda: f"({kept}) ended: Success, exit code 0" in keeper.output(), 15, keeper.output)
    assert keeper.stop() == 0 and agent.stop() == 0
    # The failed run settled before the successful one, whose removal came within seconds: it stays.
    assert [c.status for r in (failed, kept) for c in containers_of(docker_client, r)] == ["exited", "exited"]
