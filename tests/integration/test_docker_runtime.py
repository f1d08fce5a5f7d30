"""`DockerRuntime` against the real daemon: launch/adopt, start failures, logs, stop, labels, OOM, pulls."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import docker
import pytest

from agent.runtime.docker import (
    ContainerCreateError,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    DockerRuntime,
    ImageNotFound,
    ImagePullError,
)
from tests.support.docker_fixtures import RUN_ID, TEST_RUN_LABEL, test_labels

FLOW_RUN = "io.prefect.flow-run-id"
Namer = Callable[[str], str]


@pytest.fixture
def cleanup(runtime: DockerRuntime) -> Iterator[list[str]]:
    """Container ids or names to force-remove after the test, whatever it did."""
    doomed: list[str] = []
    yield doomed
    for ref in doomed:
        runtime.remove(ref, force=True)


def stand_in(name: str, image: str, env: dict[str, str] | None = None, **fields: object) -> ContainerSpec:
    return ContainerSpec(name=name, image=image, command=["prefect", "execute", "flow-run"],
                         environment={"PREFECT__CONTEXT__FLOW_RUN_ID": name, **(env or {})},
                         labels=test_labels(**{FLOW_RUN: name}), **fields)  # type: ignore[arg-type]


def wait_exited(runtime: DockerRuntime, ref: str, timeout: float = 15) -> ContainerInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = runtime.inspect(ref)
        assert info is not None, f"{ref} disappeared"
        if info.status in ("exited", "dead"):
            return info
        assert time.monotonic() < deadline, f"{ref} still {info.status} after {timeout}s"
        time.sleep(0.05)


def test_ping_and_the_daemons_start_time(runtime: DockerRuntime, docker_client: docker.DockerClient) -> None:
    runtime.ping()
    facts = runtime.daemon_facts()
    bridge = docker_client.networks.get("bridge").attrs["Created"]
    assert facts.started_at is not None and facts.started_at.isoformat()[:19] == bridge[:19]
    assert facts.live_restore is docker_client.info()["LiveRestoreEnabled"]


def test_launch_passes_labels_env_and_extra_hosts(runtime: DockerRuntime, stand_in_image: str,
                                                  docker_client: docker.DockerClient,
                                                  container_name: Namer, cleanup: list[str]) -> None:
    name = container_name("c")
    cleanup.append(name)
    spec = stand_in(name, stand_in_image, {"PREFECT__CLOUD__API": "http://host.docker.internal:4200",
                                           "PREFECT__CLOUD__API_KEY": "s3cret"},
                    extra_hosts={"host.docker.internal": "host-gateway"})
    result = runtime.launch(spec)
    assert result.created and result.status == "running"
    attrs = docker_client.api.inspect_container(result.container_id)
    assert attrs["Name"] == f"/{name}"
    assert attrs["Config"]["Labels"][TEST_RUN_LABEL] == RUN_ID and attrs["Config"]["Labels"][FLOW_RUN] == name
    assert "PREFECT__CLOUD__API=http://host.docker.internal:4200" in attrs["Config"]["Env"]
    assert attrs["HostConfig"]["ExtraHosts"] == ["host.docker.internal:host-gateway"]
    info = wait_exited(runtime, result.container_id)
    assert (info.exit_code, info.oom_killed, info.name) == (0, False, name)
    logs = runtime.logs_tail(result.container_id, lines=50)
    assert logs.startswith("prefect execute flow-run\n")
    assert f"PREFECT__CONTEXT__FLOW_RUN_ID={name}" in logs and "PREFECT__CLOUD__API_KEY=***" in logs
    assert "s3cret" not in logs


def test_second_launch_adopts_instead_of_running_twice(runtime: DockerRuntime, stand_in_image: str,
                                                       container_name: Namer,
                                                       cleanup: list[str]) -> None:
    name = container_name("c")
    cleanup.append(name)
    spec = stand_in(name, stand_in_image, {"STAND_IN_SLEEP": "30"})
    first = runtime.launch(spec)
    second = runtime.launch(spec)
    assert first.created and not second.created
    assert second.container_id == first.container_id and second.status == "running"
    assert [c.id for c in runtime.find_by_label(FLOW_RUN, name)] == [first.container_id]
    started = runtime.inspect(first.container_id)
    assert started is not None and started.running


def test_adopting_a_never_started_container_starts_it(runtime: DockerRuntime, stand_in_image: str,
                                                      docker_client: docker.DockerClient,
                                                      container_name: Namer,
                                                      cleanup: list[str]) -> None:
    """An agent that died between create and start left a `created` container: the retry must run it."""
    name = container_name("c")
    cleanup.append(name)
    spec = stand_in(name, stand_in_image, {"STAND_IN_EXIT": "3"})
    docker_client.containers.create(**spec.create_kwargs())
    result = runtime.launch(spec)
    assert not result.created and result.started  # this launch started it: the launch record is its
    assert wait_exited(runtime, result.container_id).exit_code == 3
    again = runtime.launch(spec)  # an exited container is reported, never restarted
    assert (again.created, again.started, again.status) == (False, False, "exited")
    assert runtime.logs_tail(name).count("prefect execute flow-run") == 1
    replaced = runtime.launch(spec, replace_exited=True)  # a new attempt of the same flow run
    assert replaced.created and replaced.container_id != result.container_id
    assert runtime.inspect(result.container_id) is None


def test_a_name_held_by_another_run_is_refused(runtime: DockerRuntime, stand_in_image: str,
                                               container_name: Namer, cleanup: list[str]) -> None:
    name = container_name("c")
    cleanup.append(name)
    runtime.launch(stand_in(name, stand_in_image))
    other = ContainerSpec(name=name, image=stand_in_image, command=["true"], environment={},
                          labels=test_labels(**{FLOW_RUN: "someone-else"}))
    with pytest.raises(ContainerCreateError, match="does not belong to flow run someone-else"):
        runtime.launch(other)


def test_start_failure_removes_the_container_and_keeps_dockers_message(
        runtime: DockerRuntime, stand_in_image: str, container_name: Namer,
        cleanup: list[str]) -> None:
    name = container_name("c")
    cleanup.append(name)
    spec = ContainerSpec(name=name, image=stand_in_image, command=["no-such-binary"], environment={},
                         labels=test_labels())
    with pytest.raises(ContainerCreateError) as caught:
        runtime.launch(spec)
    assert "executable file not found" in str(caught.value) and not caught.value.transient
    assert runtime.inspect(name) is None


def test_missing_image_and_bad_config_are_permanent(runtime: DockerRuntime, container_name: Namer,
                                                   stand_in_image: str) -> None:
    with pytest.raises(ImageNotFound, match="local-agent-absent:nope"):
        runtime.launch(stand_in(container_name("a"), "local-agent-absent:nope"))
    with pytest.raises(ContainerCreateError, match="invalid container configuration") as caught:
        runtime.launch(stand_in(container_name("b"), stand_in_image, host_config={"no_such_kwarg": 1}))
    assert not caught.value.transient


def test_extra_networks_are_joined_before_start(runtime: DockerRuntime, stand_in_image: str,
                                                docker_client: docker.DockerClient,
                                                container_name: Namer, cleanup: list[str]) -> None:
    nets = [docker_client.networks.create(container_name(f"n{i}"), labels=test_labels()) for i in (1, 2)]
    try:
        name = container_name("c")
        cleanup.append(name)
        result = runtime.launch(stand_in(name, stand_in_image, {"STAND_IN_SLEEP": "30"},
                                         networks=[n.name for n in nets]))
        attrs = docker_client.api.inspect_container(result.container_id)
        assert set(attrs["NetworkSettings"]["Networks"]) == {n.name for n in nets}
        runtime.remove(result.container_id, force=True)
    finally:
        for net in nets:
            net.remove()


def test_logs_tail_stop_and_idempotent_removal(runtime: DockerRuntime, stand_in_image: str,
                                               container_name: Namer, cleanup: list[str]) -> None:
    name = container_name("c")
    cleanup.append(name)
    result = runtime.launch(stand_in(name, stand_in_image, {"STAND_IN_SLEEP": "60"}))
    started = time.monotonic()
    runtime.stop(result.container_id, timeout=10)
    info = wait_exited(runtime, result.container_id)
    assert time.monotonic() - started < 5  # SIGTERM was handled, no wait for the SIGKILL
    assert info.exit_code == 143
    assert runtime.logs_tail(result.container_id, lines=1) == "stand-in: SIGTERM\n"
    assert runtime.find_by_label(FLOW_RUN, name, all=False) == []
    assert [c.id for c in runtime.find_by_label(FLOW_RUN, name)] == [result.container_id]
    runtime.remove(result.container_id)
    runtime.remove(result.container_id)  # already gone: fine
    runtime.stop(result.container_id, timeout=1)  # already gone: fine
    assert runtime.inspect(result.container_id) is None
    with pytest.raises(ContainerNotFound):
        runtime.logs_tail(result.container_id)


def test_stop_escalates_to_sigkill(runtime: DockerRuntime, stand_in_image: str,
                                   container_name: Namer, cleanup: list[str]) -> None:
    name = container_name("c")
    cleanup.append(name)
    env = {"STAND_IN_SLEEP": "60", "STAND_IN_IGNORE_TERM": "1"}
    result = runtime.launch(stand_in(name, stand_in_image, env))
    started = time.monotonic()
    runtime.stop(result.container_id, timeout=1)
    assert wait_exited(runtime, result.container_id).exit_code == 137
    assert 0.9 < time.monotonic() - started < 10


def test_find_by_label_filters_by_value(runtime: DockerRuntime, stand_in_image: str,
                                        container_name: Namer, cleanup: list[str]) -> None:
    names = [container_name(s) for s in ("a", "b")]
    cleanup.extend(names)
    ids = {runtime.launch(stand_in(n, stand_in_image)).container_id for n in names}
    assert {c.id for c in runtime.find_by_label(FLOW_RUN, names[0])} <= ids
    assert len(runtime.find_by_label(FLOW_RUN, names[0])) == 1
    mine = {c.id for c in runtime.find({TEST_RUN_LABEL: RUN_ID, FLOW_RUN: None})}
    assert ids <= mine


def test_oom_is_reported(runtime: DockerRuntime, stand_in_image: str, container_name: Namer,
                         cleanup: list[str]) -> None:
    name = container_name("c")
    cleanup.append(name)
    env = {"STAND_IN_ALLOC_MB": "64", "STAND_IN_SLEEP": "30"}
    result = runtime.launch(stand_in(name, stand_in_image, env,
                                     host_config={"mem_limit": "24m", "memswap_limit": "24m"}))
    info = wait_exited(runtime, result.container_id, timeout=10)  # killed at once, not after the sleep
    assert (info.exit_code, info.oom_killed) == (137, True)


def test_images_present_and_absent(runtime: DockerRuntime, stand_in_image: str) -> None:
    assert runtime.image_present(stand_in_image)
    assert (runtime.image_id(stand_in_image) or "").startswith("sha256:")
    assert not runtime.image_present("local-agent-absent:nope")


def test_pull_from_an_unreachable_registry_keeps_dockers_message(runtime: DockerRuntime) -> None:
    with pytest.raises(ImagePullError) as caught:
        runtime.pull("127.0.0.1:1/local-agent/absent:1")
    assert caught.value.image == "127.0.0.1:1/local-agent/absent:1"
    assert "connection refused" in caught.value.registry_message
    assert caught.value.transient  # a registry that is down may be back in a minute
