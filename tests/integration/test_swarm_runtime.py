"""The Swarm runtime on a real single-node swarm: a flow run is a replicated-job service, read back through
the same port the Docker runtime serves (status, exit code, OOM kill, output, stop, remove, events)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.api.models import FlowRun
from agent.launch.plan import Identity, plan_container
from agent.policy.rules import PolicyDenied
from agent.runtime.docker_types import FLOW_RUN_LABEL, ContainerCreateError, ContainerInfo, ContainerSpec
from agent.runtime.engines import swarm_options
from agent.runtime.swarm import SwarmRuntime
from agent.runtime.swarm_types import SERVICE_ID_LABEL, SwarmOptions
from agent.settings import Settings
from tests.support.docker_fixtures import RUN_ID, TEST_RUN_LABEL, docker_unavailable, test_labels
from tests.support.swarm_fixtures import SwarmManager, remove_network

pytestmark = [pytest.mark.swarm, pytest.mark.docker]

BUSYBOX = "local/busybox:latest"
PYTHON = "local/python:3.11-slim"
AGENT_LABEL = "io.local-agent.agent"
NETWORK = f"la-swarm-runtime-{RUN_ID}"


@pytest.fixture(scope="module")
def manager(swarm_manager: SwarmManager) -> Iterator[docker.DockerClient]:
    """The daemon as a swarm manager (`swarm_manager` creates and leaves the swarm when it must)."""
    client = docker.from_env(timeout=60)
    for image in (BUSYBOX, PYTHON):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            docker_unavailable(f"{image} is not on this host")
    yield client
    label = f"{TEST_RUN_LABEL}={RUN_ID}"
    for service in client.services.list(filters={"label": label}):
        service.remove()
    for container in client.containers.list(all=True, filters={"label": label}):
        try:
            container.remove(force=True, v=True)  # Swarm leaves a finished job's task containers behind
        except docker.errors.APIError:
            pass
    remove_network(client, NETWORK, attempts=40)
    client.close()


def options(**overrides: Any) -> SwarmOptions:
    base: dict[str, Any] = {"network": NETWORK, "schedule_timeout": 30.0, "stop_grace": 2.0,
                            "network_labels": test_labels()}
    return SwarmOptions(**{**base, **overrides})


@pytest.fixture(scope="module")
def runtime(manager: docker.DockerClient) -> Iterator[SwarmRuntime]:
    rt = SwarmRuntime(timeout=30, options=options())
    yield rt
    rt.close()


def spec_of(command: list[str], *, image: str = BUSYBOX, run_id: str | None = None,
            host_config: dict[str, Any] | None = None, **labels: str) -> ContainerSpec:
    run_id = run_id or str(uuid.uuid4())
    return ContainerSpec(
        name=f"prefect-{run_id}", image=image, command=command, environment={"RUN": run_id},
        labels=test_labels(**{FLOW_RUN_LABEL: run_id, AGENT_LABEL: "swarm-test", **labels}),
        host_config=host_config or {})


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll until `check()` is truthy; a deadline only so a broken runtime fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def exited(rt: SwarmRuntime, service_id: str) -> ContainerInfo:
    def check() -> ContainerInfo | None:
        info = rt.inspect(service_id)
        return info if info is not None and info.exited else None
    result: ContainerInfo = wait_for(check, f"service {service_id} to finish")
    return result


def task_states(client: docker.DockerClient, service_id: str) -> list[str]:
    return [t["Status"]["State"] for t in client.api.tasks(filters={"service": service_id})]


def test_a_run_is_a_labelled_replicated_job_pinned_to_the_local_image(
        runtime: SwarmRuntime, manager: docker.DockerClient) -> None:
    spec = spec_of(["sh", "-c", "echo hello from $RUN"])
    seen_before: list[Any] = []
    result = runtime.launch(spec, before_start=lambda name: seen_before.append(runtime.inspect(name)))
    assert seen_before == [None]  # the launch record is written before the service exists
    assert result.created and result.started
    info = exited(runtime, result.container_id)
    assert (info.status, info.exit_code, info.oom_killed, info.error) == ("exited", 0, False, None)
    assert info.name == spec.name and info.image == BUSYBOX
    attrs = manager.api.inspect_service(result.container_id)
    assert spec.labels.items() <= attrs["Spec"]["Labels"].items()
    assert attrs["Spec"]["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    template = attrs["Spec"]["TaskTemplate"]
    assert template["RestartPolicy"]["Condition"] == "none"
    assert template["ContainerSpec"]["Args"] == spec.command
    assert "Command" not in template["ContainerSpec"]  # the image's ENTRYPOINT stays
    assert template["ContainerSpec"]["Image"] == manager.images.get(BUSYBOX).id  # no pull on any node
    (container,) = manager.containers.list(all=True, filters={"label": f"{SERVICE_ID_LABEL}={info.id}"})
    assert spec.labels.items() <= container.labels.items()
    assert f"hello from {spec.labels[FLOW_RUN_LABEL]}" in runtime.logs_tail(info.id)


def test_a_non_zero_exit_keeps_its_code_and_output(runtime: SwarmRuntime) -> None:
    result = runtime.launch(spec_of(["sh", "-c", "echo boom; exit 3"]))
    info = exited(runtime, result.container_id)
    assert (info.status, info.exit_code, info.oom_killed) == ("exited", 3, False)
    assert "non-zero exit (3)" in (info.error or "")
    assert "boom" in runtime.logs_tail(result.container_id)


def test_an_oom_kill_is_reported_from_the_task_container(runtime: SwarmRuntime) -> None:
    spec = spec_of(["python", "-c", "x = bytearray(256 * 2**20); print('survived')"], image=PYTHON,
                   host_config={"mem_limit": 16 * 2**20, "memswap_limit": 16 * 2**20})
    info = exited(runtime, runtime.launch(spec).container_id)
    assert (info.exit_code, info.oom_killed) == (137, True)


def test_an_unplaceable_task_fails_with_swarms_reason_and_its_service_goes(
        manager: docker.DockerClient) -> None:
    rt = SwarmRuntime(timeout=30, options=options(constraints=("node.labels.nope==1",), schedule_timeout=3))
    try:
        spec = spec_of(["true"])
        result = rt.launch(spec)
        assert rt.inspect(result.container_id).status == "running"  # type: ignore[union-attr]
        info = exited(rt, result.container_id)
        assert info.exit_code is None
        assert "could not place the task within 3s" in (info.error or "")
        assert "no suitable node" in (info.error or "")
        with pytest.raises(docker.errors.NotFound):
            manager.api.inspect_service(result.container_id)
        assert rt.inspect(spec.name) == info  # remembered, by id and by name
        assert [i.id for i in rt.find({FLOW_RUN_LABEL: spec.labels[FLOW_RUN_LABEL]})] == [info.id]
    finally:
        rt.close()


def test_a_second_launch_adopts_the_service_and_replace_exited_relaunches(
        runtime: SwarmRuntime, manager: docker.DockerClient) -> None:
    spec = spec_of(["sleep", "1"])
    first = runtime.launch(spec)
    calls: list[str] = []
    second = runtime.launch(spec, before_start=calls.append)
    assert (second.container_id, second.created, calls) == (first.container_id, False, [])
    run_label = f"{FLOW_RUN_LABEL}={spec.labels[FLOW_RUN_LABEL]}"
    assert len(manager.services.list(filters={"label": run_label})) == 1
    exited(runtime, first.container_id)
    assert runtime.launch(spec).status == "exited"  # a finished run is reported, not run again
    third = runtime.launch(spec, replace_exited=True)
    assert third.created and third.container_id != first.container_id
    assert [s.id for s in manager.services.list(filters={"label": run_label})] == [third.container_id]


def test_a_name_held_by_another_runs_service_is_refused(runtime: SwarmRuntime) -> None:
    spec = spec_of(["sleep", "5"])
    runtime.launch(spec)
    intruder = spec_of(["true"], run_id=str(uuid.uuid4()))
    intruder = ContainerSpec(name=spec.name, image=BUSYBOX, command=["true"], environment={},
                             labels=intruder.labels)
    with pytest.raises(ContainerCreateError, match="does not belong to flow run"):
        runtime.launch(intruder)


def test_stop_ends_the_task_once_and_keeps_its_exit_code(
        runtime: SwarmRuntime, manager: docker.DockerClient) -> None:
    result = runtime.launch(spec_of(["sleep", "60"]))
    wait_for(lambda: task_states(manager, result.container_id) == ["running"], "the task to run")
    runtime.stop(result.container_id, timeout=2)
    info = runtime.inspect(result.container_id)
    assert info is not None and info.exited and info.exit_code in (143, 137)
    time.sleep(1.5)  # a restart would create a second task within this
    assert len(task_states(manager, result.container_id)) == 1


def test_remove_takes_the_task_container_along_and_is_idempotent(
        runtime: SwarmRuntime, manager: docker.DockerClient) -> None:
    service_id = runtime.launch(spec_of(["true"])).container_id
    exited(runtime, service_id)
    runtime.remove(service_id)
    runtime.remove(service_id)
    assert runtime.inspect(service_id) is None
    assert not manager.containers.list(all=True, filters={"label": f"{SERVICE_ID_LABEL}={service_id}"})
    runtime.stop(service_id, timeout=1)  # a missing service is fine too


def test_count_counts_live_runs(runtime: SwarmRuntime) -> None:
    batch = {"io.local-agent.batch": uuid.uuid4().hex}
    ids = [runtime.launch(spec_of(["sleep", "30"], **batch)).container_id for _ in range(2)]
    done = runtime.launch(spec_of(["true"], **batch)).container_id
    exited(runtime, done)
    assert runtime.count(batch) == 2
    runtime.remove(ids[0])
    assert runtime.count(batch) == 1
    assert {i.id for i in runtime.find(batch, all=False)} == {ids[1]}
    assert {i.id for i in runtime.find(batch)} == {ids[1], done}


def test_the_event_stream_yields_start_and_die_and_ends_on_close(runtime: SwarmRuntime) -> None:
    batch = {"io.local-agent.batch": uuid.uuid4().hex}
    stream = runtime.events(batch)
    events: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: events.extend(stream), daemon=True)
    reader.start()
    service_id = runtime.launch(spec_of(["sleep", "2"], **batch)).container_id
    wait_for(lambda: any(e["Action"] == "die" for e in events), "the die event")
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert [(e["Action"], e["id"]) for e in events] == [("start", service_id), ("die", service_id)]


def test_follow_logs_ends_when_the_task_does(runtime: SwarmRuntime) -> None:
    result = runtime.launch(spec_of(["sh", "-c", "echo one; sleep 1; echo two"]))
    chunks: list[bytes] = []
    stream = runtime.follow_logs(result.container_id)
    reader = threading.Thread(target=lambda: chunks.extend(stream), daemon=True)
    reader.start()
    reader.join(20)
    alive = reader.is_alive()
    stream.close()
    assert not alive
    assert b"".join(chunks) == b"one\ntwo\n"


def test_what_a_service_cannot_grant_is_refused_before_anything_is_created(
        runtime: SwarmRuntime, manager: docker.DockerClient) -> None:
    spec = spec_of(["true"], host_config={"privileged": True})
    with pytest.raises(ContainerCreateError, match="host_config.privileged") as caught:
        runtime.launch(spec)
    assert caught.value.transient is False
    assert not manager.services.list(filters={"name": spec.name})


def test_the_manager_identifies_the_cluster(runtime: SwarmRuntime, manager: docker.DockerClient) -> None:
    runtime.check_manager()
    assert runtime.host_identity() == f"swarm:{manager.info()['Swarm']['Cluster']['ID']}"


def test_the_flow_network_is_created_with_its_labels_and_again_when_removed(
        manager: docker.DockerClient) -> None:
    network = f"la-swarm-runtime-b-{RUN_ID}"
    rt = SwarmRuntime(timeout=30, options=options(network=network))
    try:
        first = rt.launch(spec_of(["true"]))
        attrs = manager.api.inspect_network(network, scope="swarm")
        assert (attrs["Scope"], attrs["Attachable"]) == ("swarm", True)
        assert test_labels().items() <= attrs["Labels"].items()
        exited(rt, first.container_id)
        rt.remove(first.container_id)
        wait_for(lambda: _removed(manager, network), f"network {network} to be removable")
        with pytest.raises(ContainerCreateError, match=f"network {network} not found") as caught:
            rt.launch(spec_of(["true"]))
        assert caught.value.transient  # the pipeline's retry in place recreates it
        exited(rt, rt.launch(spec_of(["true"])).container_id)
    finally:
        for service in manager.services.list(filters={"label": f"{TEST_RUN_LABEL}={RUN_ID}"}):
            rt.remove(service.id, force=True)
        wait_for(lambda: _removed(manager, network), f"network {network} to be removable")
        rt.close()


def _removed(client: docker.DockerClient, name: str) -> bool:
    try:
        client.networks.get(name).remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False
    return True


NEVER = "node.labels.local-agent-never==1"  # the operator's constraint no node satisfies
HOSTILE_CONSTRAINT = st.builds(
    lambda key, op, value: f"{key}{op}{value}",
    st.sampled_from(["node.role", "node.labels.local-agent-never", "node.hostname", "node.id",
                     "node.platform.os", "engine.labels.x"]),
    st.sampled_from(["==", "!="]),
    st.one_of(st.sampled_from(["manager", "worker", "1", "linux", "*", "vm"]),
              st.text(st.characters(codec="ascii", exclude_characters=", \t\r\n\x0b\x0c"), min_size=1,
                      max_size=12)),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(HOSTILE_CONSTRAINT, min_size=1, max_size=4))
def test_no_run_placement_gets_a_task_past_the_agents_constraints(
        manager: docker.DockerClient, constraints: list[str]) -> None:
    """Judged by Swarm itself: whatever a run adds, its task is never placed where the agent's constraint
    forbids (here: nowhere). Swarm either refuses the spec or leaves the task pending, never assigned."""
    settings_ = Settings(engine="swarm", swarm_constraints=[NEVER], swarm_network=NETWORK,
                         container_labels=test_labels())
    run = FlowRun.model_validate({
        "id": str(uuid.uuid4()), "version": 1,
        "run_config": {"type": "DockerRun", "host_config": {"placement": {"constraints": constraints}}},
        "flow": {"id": "f", "name": "flow", "core_version": "1.4.1",
                 "storage": {"type": "Docker", "image_name": "local/busybox", "image_tag": "latest"}}})
    try:
        planned = plan_container(run, BUSYBOX, settings_, Identity("swarm-test", [], "t", "http://api", []))
    except PolicyDenied as denied:  # outside Swarm's grammar: refused before anything is created
        assert "host_config.placement" in str(denied)
        return
    rt = SwarmRuntime(timeout=30, options=swarm_options(settings_))
    try:
        try:
            result = rt.launch(planned.spec)
        except ContainerCreateError as refused:  # Swarm refused the spec: the run fails, nothing runs
            assert refused.transient is False
            return
        pending = wait_for(lambda: [t for t in manager.api.tasks(filters={"service": result.container_id})
                                    if "no suitable node" in (t["Status"].get("Err") or "")],
                           "Swarm to find no node for the task")
        states = task_states(manager, result.container_id)
        assert pending and set(states) <= {"new", "allocated", "pending"}, states
        service = manager.api.inspect_service(result.container_id)
        assert NEVER in service["Spec"]["TaskTemplate"]["Placement"]["Constraints"]
    finally:
        rt.remove(planned.spec.name, force=True)
        rt.close()
