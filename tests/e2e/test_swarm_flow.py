"""End to end on Docker Swarm: the agent with `PREFECT__CLOUD__AGENT__ENGINE=swarm` runs every flow run as a
replicated-job service on a real single-node swarm (the test daemon, made a manager by `swarm_manager`).

One server (on 0.0.0.0: flow tasks reach it through `host.docker.internal` from the agent's overlay
network) serves the whole module; each test's runs carry their own label, so only that test's agents take
them. Services are counted through the Docker API by the run label, container starts from the daemon's live
event stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.docker_fixtures import RUN_ID, TEST_RUN_LABEL
from tests.support.ops_helpers import eventually, stand_in_flow, state
from tests.support.prefect_fixtures import PrefectBackend, PrefectVenv, register_examples, running_backend
from tests.support.swarm_fixtures import FLOW_RUN_LABEL, ContainerStarts, SwarmManager

pytestmark = pytest.mark.e2e

AGENT_LABEL = "io.local-agent.agent"
BURST = 20
TERMINAL = ("Success", "Failed", "Cancelled")


@pytest.fixture(scope="module")
def swarm_backend(swarm_manager: SwarmManager, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[PrefectBackend]:
    with running_backend("server", tmp_path_factory.mktemp("swarm-server"), host="0.0.0.0") as backend:
        yield backend


@pytest.fixture(scope="module")
def flows_network(swarm_manager: SwarmManager) -> str:
    """The overlay flow services join (created by the agent if missing), removed with the module."""
    return swarm_manager.network_name("flows")


def swarm_agent(factory: Callable[..., AgentProcess], backend: PrefectBackend, network: str, label: str,
                **settings: Any) -> AgentProcess:
    """An agent on the swarm engine taking only runs labelled `label`; services kept for the assertions
    unless the test says otherwise."""
    settings.setdefault("keep_successful_containers_hours", 1)
    return factory(backend.server, engine="swarm", swarm_network=network, labels=[label], watch_interval=0.5,
                   cleanup_interval=3600, **settings)


def create_runs(backend: PrefectBackend, flow_id: str, label: str, count: int = 1, **env: str) -> list[str]:
    return [api.create_flow_run(backend.server, flow_id, labels=[label],
                                run_config={"type": "DockerRun", "env": env}) for _ in range(count)]


def final_states(backend: PrefectBackend, run_ids: list[str], agents: list[AgentProcess],
                 timeout: float = 90) -> dict[str, str]:
    """Every run's state once terminal; on timeout the agents' output is in the failure."""
    try:
        return {r: api.wait_for_state(backend.server, r, TERMINAL, timeout=timeout)["state"] for r in run_ids}
    except AssertionError as exc:
        outputs = "\n".join(f"--- {a.name}\n{a.output()[-6000:]}" for a in agents)
        raise AssertionError(f"{exc}\n{outputs}") from exc


def error_log(backend: PrefectBackend, run_id: str) -> str:
    errors = [log["message"] for log in api.run_logs(backend.server, run_id) if log["level"] == "ERROR"]
    assert len(errors) == 1, api.run_logs(backend.server, run_id)
    return str(errors[0])


def assert_one_service_each(manager: SwarmManager, starts: ContainerStarts, run_ids: list[str]) -> None:
    """Exactly one service per run (API, by run label) with one task, and one container start per run."""
    services = {r: manager.services_of(r) for r in run_ids}
    assert {r: len(s) for r, s in services.items()} == dict.fromkeys(run_ids, 1), services
    tasks = {r: len(manager.tasks_of(s[0].id)) for r, s in services.items()}
    assert tasks == dict.fromkeys(run_ids, 1), tasks
    eventually(lambda: all(starts.of(run_ids).values()), 10, lambda: str(starts.of(run_ids)))
    assert starts.of(run_ids) == dict.fromkeys(run_ids, 1)


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("overlay", [True, False], ids=["overlay", "no-overlay"])
def test_prefect_flow_runs_to_success_as_a_swarm_service(
    swarm_manager: SwarmManager, swarm_backend: PrefectBackend, flows_network: str, flow_image: str,
    prefect_venv: PrefectVenv, agent_factory: Callable[..., AgentProcess], overlay: bool,
) -> None:
    """On the agent's overlay, or (SWARM_NETWORK="") on the node's default bridge: either way the flow
    reaches the API (host.docker.internal on the host-gateway) and ends Success."""
    network = flows_network if overlay else ""
    label = f"swarm-hello-{'overlay' if overlay else 'bridge'}-{RUN_ID}"
    summary = register_examples(prefect_venv, swarm_backend.env(), "--flow", "hello", "--create-run",
                                "--label", label)
    (run_id,) = summary["flows"]["hello"]["runs"]
    agent = swarm_agent(agent_factory, swarm_backend, network, label)
    (final,) = final_states(swarm_backend, [run_id], [agent], timeout=150).values()
    run = api.flow_run(swarm_backend.server, run_id)
    assert final == "Success", f"{run['serialized_state']}\n{agent.output()[-6000:]}"
    assert run["task_runs"] and all(tr["state"] == "Success" for tr in run["task_runs"]), run["task_runs"]
    logs = api.wait_for_log(swarm_backend.server, run_id, "greeting: HELLO, WORLD!")  # may follow Success
    assert any("Submitted for execution" in log["message"] for log in logs), logs

    (service,) = swarm_manager.services_of(run_id)
    spec = service.attrs["Spec"]
    expected = {FLOW_RUN_LABEL: run_id, "io.prefect.flow-id": run["flow_id"], "io.prefect.flow-name": "hello",
                AGENT_LABEL: agent.name, "io.local-agent.flow-run-name": run["name"], TEST_RUN_LABEL: RUN_ID}
    for labels in (spec["Labels"], spec["TaskTemplate"]["ContainerSpec"]["Labels"]):
        assert {k: labels.get(k) for k in expected} == expected, labels
    assert "ReplicatedJob" in spec["Mode"], spec["Mode"]
    def task() -> dict[str, Any] | None:  # Success is reported a moment before the container exits
        (only,) = swarm_manager.tasks_of(service.id)
        return only if only["Status"]["State"] not in ("running", "starting") else None

    finished = eventually(task, 30, lambda: str(swarm_manager.tasks_of(service.id)))
    assert finished["Status"]["State"] == "complete", finished["Status"]
    attached = {n["Network"]["Spec"]["Name"] for n in finished.get("NetworksAttachments") or []}
    assert (flows_network in attached) if overlay else not attached, attached


def test_exit_code_oom_cancel_and_unplaceable_runs(
    swarm_manager: SwarmManager, swarm_backend: PrefectBackend, flows_network: str, stand_in_image: str,
    agent_factory: Callable[..., AgentProcess], docker_client: docker.DockerClient,
) -> None:
    server = swarm_backend.server
    flow_id = stand_in_flow(server, stand_in_image, f"swarm-ops-{RUN_ID}")
    label, nope = f"swarm-ops-{RUN_ID}", f"swarm-nope-{RUN_ID}"
    (crash,) = create_runs(swarm_backend, flow_id, label, STAND_IN_EXIT="3")
    (oom,) = create_runs(swarm_backend, flow_id, label, STAND_IN_ALLOC_MB="96", STAND_IN_SLEEP="30")
    (cancelled,) = create_runs(swarm_backend, flow_id, label, STAND_IN_SLEEP="120")
    (unplaced,) = create_runs(swarm_backend, flow_id, nope)
    agents = [
        swarm_agent(agent_factory, swarm_backend, flows_network, label, memory="32m", cancel_grace_seconds=2),
        swarm_agent(agent_factory, swarm_backend, flows_network, nope,
                    swarm_constraints="node.labels.nope==1", swarm_schedule_timeout=5),
    ]

    def running_task() -> bool:
        services = swarm_manager.services_of(cancelled)
        return bool(services) and any(t["Status"]["State"] == "running"
                                      for t in swarm_manager.tasks_of(services[0].id))

    eventually(running_task, 60, lambda: "\n".join(a.output()[-4000:] for a in agents), interval=0.2)
    version = api.flow_run(server, cancelled)["version"]
    answer = api.set_flow_run_state(server, cancelled, state("Running", "Running flow."), version)
    assert "errors" not in answer, answer
    assert api.cancel_flow_run(server, cancelled) == "Cancelling"

    states = final_states(swarm_backend, [crash, oom, cancelled, unplaced], agents)
    assert states == {crash: "Failed", oom: "Failed", cancelled: "Cancelled", unplaced: "Failed"}, states

    report = error_log(swarm_backend, crash)
    assert "Exit code: 3" in report and "OOMKilled: false" in report, report
    assert "stand-in: exiting 3" in report and "prefect execute flow-run" in report, report  # output tail
    assert "exited with code 3" in api.flow_run(server, crash)["state_message"]
    report = error_log(swarm_backend, oom)
    assert "OOMKilled: true" in report and "Exit code: 137" in report, report
    assert "STAND_IN_ALLOC_MB=96" in report, report  # the output tail of the killed task

    api.wait_for_log(server, cancelled, "flow run marked Cancelled")
    running = docker_client.containers.list(filters={"label": f"{FLOW_RUN_LABEL}={cancelled}"})
    assert running == [], running
    for service in swarm_manager.services_of(cancelled):  # removed, or its one task stopped
        assert all(t["Status"]["State"] != "running" for t in swarm_manager.tasks_of(service.id))

    report = error_log(swarm_backend, unplaced)
    assert "no suitable node" in report, report  # Swarm's own reason
    assert "did not run" in api.flow_run(server, unplaced)["state_message"]
    assert swarm_manager.services_of(unplaced) == []


def test_two_agents_racing_start_every_run_once(
    swarm_manager: SwarmManager, swarm_backend: PrefectBackend, flows_network: str, reporter_image: str,
    agent_factory: Callable[..., AgentProcess], container_starts: ContainerStarts,
) -> None:
    label = f"swarm-race-{RUN_ID}"
    flow_id = stand_in_flow(swarm_backend.server, reporter_image, label)
    run_ids = create_runs(swarm_backend, flow_id, label, BURST)
    agents = [swarm_agent(agent_factory, swarm_backend, flows_network, label) for _ in range(2)]
    states = final_states(swarm_backend, run_ids, agents)
    assert states == dict.fromkeys(run_ids, "Success"), states
    assert_one_service_each(swarm_manager, container_starts, run_ids)
    launched_by = {s.attrs["Spec"]["Labels"][AGENT_LABEL]
                   for r in run_ids for s in swarm_manager.services_of(r)}
    assert launched_by <= {a.name for a in agents}, launched_by


def test_a_successful_runs_service_is_removed_at_its_end(
    swarm_manager: SwarmManager, swarm_backend: PrefectBackend, flows_network: str, reporter_image: str,
    agent_factory: Callable[..., AgentProcess],
) -> None:
    label = f"swarm-removed-{RUN_ID}"
    flow_id = stand_in_flow(swarm_backend.server, reporter_image, label)
    (run_id,) = create_runs(swarm_backend, flow_id, label)
    agent = swarm_agent(agent_factory, swarm_backend, flows_network, label,
                        keep_successful_containers_hours=0)
    assert final_states(swarm_backend, [run_id], [agent]) == {run_id: "Success"}
    eventually(lambda: not swarm_manager.services_of(run_id), 30, agent.output)  # (the sweep: in an hour)
    assert f"flow run {run_id}: removed service" in agent.wait_for_output(f"flow run {run_id}: removed")


def test_agent_killed_mid_burst_restarts_without_doubling_or_losing_runs(
    swarm_manager: SwarmManager, swarm_backend: PrefectBackend, flows_network: str, reporter_image: str,
    agent_factory: Callable[..., AgentProcess], container_starts: ContainerStarts,
) -> None:
    label = f"swarm-burst-{RUN_ID}"
    flow_id = stand_in_flow(swarm_backend.server, reporter_image, label)
    run_ids = create_runs(swarm_backend, flow_id, label, BURST, STAND_IN_SLEEP="1")
    name = f"swarm-burst-{RUN_ID}"
    first = swarm_agent(agent_factory, swarm_backend, flows_network, label, name=name,
                        max_concurrent_launches=2)  # a slower burst, so the kill lands inside it

    def launched() -> int:
        return len(swarm_manager.client.services.list(filters={"label": f"{AGENT_LABEL}={name}"}))

    eventually(lambda: launched() >= 3, 60, first.output, interval=0.05)
    first.kill()  # SIGKILL: no drain, no log flush
    at_kill = launched()
    assert at_kill < BURST, "the burst was over before the kill; nothing was tested"
    second = swarm_agent(agent_factory, swarm_backend, flows_network, label, name=name)
    states = final_states(swarm_backend, run_ids, [first, second], timeout=120)
    assert states == dict.fromkeys(run_ids, "Success"), states
    assert_one_service_each(swarm_manager, container_starts, run_ids)
    print(f"services at the kill: {at_kill} of {BURST}")
