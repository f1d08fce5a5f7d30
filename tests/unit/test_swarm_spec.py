"""A planned flow-run container as a Swarm service (no Docker): every host_config key the agent can plan is
translated into its service form or refused by name; and a service's task read back as the port's status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import docker.types
import pytest

from agent.api.models import FlowRun
from agent.launch.plan import Identity, plan_container
from agent.runtime.docker_types import ContainerCreateError, ContainerInfo, ContainerSpec
from agent.runtime.swarm_spec import UNSUPPORTED, service_networks, service_spec
from agent.runtime.swarm_streams import TaskEvents
from agent.runtime.swarm_types import (
    IMAGE_LABEL,
    SwarmOptions,
    latest_task,
    service_info,
    unscheduled_for,
)
from agent.settings import Settings

PINNED = "sha256:" + "b" * 64
LABELS = {"io.prefect.flow-run-id": "run-1", "io.local-agent.agent": "a"}


def spec_of(host_config: dict[str, Any] | None = None, **fields: Any) -> ContainerSpec:
    base: dict[str, Any] = {"name": "prefect-run-1", "image": "flows/etl:1",
                            "command": ["prefect", "execute", "flow-run"], "environment": {"A": "1"},
                            "labels": dict(LABELS), "host_config": host_config or {}}
    return ContainerSpec(**{**base, **fields})


def translate(host_config: dict[str, Any] | None = None, options: SwarmOptions | None = None,
              **fields: Any) -> dict[str, Any]:
    return service_spec(spec_of(host_config, **fields), options or SwarmOptions(), PINNED)


def container_of(kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(kwargs["task_template"]["ContainerSpec"])


def refusal(host_config: dict[str, Any], options: SwarmOptions | None = None) -> ContainerCreateError:
    with pytest.raises(ContainerCreateError) as caught:
        translate(host_config, options)
    assert caught.value.transient is False
    return caught.value


# ------------------------------------------------------------------------------------------------ the job
def test_a_run_is_a_one_shot_replicated_job_with_its_labels_env_and_args() -> None:
    kwargs = translate(extra_hosts={"host.docker.internal": "host-gateway"})
    assert kwargs["name"] == "prefect-run-1"
    assert kwargs["mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert kwargs["labels"] == {**LABELS, IMAGE_LABEL: "flows/etl:1"}
    template = kwargs["task_template"]
    assert template["RestartPolicy"]["Condition"] == "none"
    assert template["Networks"] == [{"Target": "local-agent-flows"}]
    assert "Placement" not in template and "Resources" not in template and "LogDriver" not in template
    container = container_of(kwargs)
    assert container["Image"] == PINNED
    assert container["Args"] == ["prefect", "execute", "flow-run"]
    assert container["Command"] is None  # the image's ENTRYPOINT stays
    assert container["Env"] == ["A=1"]
    assert container["Labels"] == LABELS
    assert container["Hosts"] == ["host-gateway host.docker.internal"]
    assert container["StopGracePeriod"] == 30 * 10**9


def test_an_empty_command_keeps_the_images_cmd() -> None:
    assert container_of(translate(command=[]))["Args"] is None


def test_the_runs_networks_win_over_the_flow_network() -> None:
    assert service_networks(spec_of(networks=["overlay-a", "overlay-b"]), SwarmOptions()) == [
        "overlay-a", "overlay-b"]
    assert service_networks(spec_of(), SwarmOptions(network="")) == []
    assert "Networks" not in translate(options=SwarmOptions(network=""))["task_template"]


def test_placement_stop_grace_come_from_the_options() -> None:
    options = SwarmOptions(constraints=("node.role==worker", "node.labels.pool==flows"),
                           preferences=("node.labels.zone",), stop_grace=7.5)
    kwargs = translate(options=options)
    assert kwargs["task_template"]["Placement"] == {
        "Constraints": ["node.role==worker", "node.labels.pool==flows"],
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]}
    assert container_of(kwargs)["StopGracePeriod"] == 7_500_000_000


# ------------------------------------------------------------------------------------------------ resources
def test_limits_are_also_reservations_with_pids() -> None:
    kwargs = translate({"mem_limit": 512 * 2**20, "memswap_limit": 512 * 2**20, "nano_cpus": 1_500_000_000,
                        "pids_limit": 200})
    assert kwargs["task_template"]["Resources"] == {
        "Limits": {"MemoryBytes": 512 * 2**20, "NanoCPUs": 1_500_000_000, "Pids": 200},
        "Reservations": {"MemoryBytes": 512 * 2**20, "NanoCPUs": 1_500_000_000}}


def test_a_memory_reservation_given_is_the_reservation() -> None:
    resources = translate({"mem_limit": 2**30, "mem_reservation": 2**28})["task_template"]["Resources"]
    assert resources == {"Limits": {"MemoryBytes": 2**30}, "Reservations": {"MemoryBytes": 2**28}}


def test_unlimited_pids_and_zero_limits_ask_for_nothing() -> None:
    assert "Resources" not in translate({"pids_limit": -1, "mem_limit": 0, "nano_cpus": 0})["task_template"]


def test_swap_other_than_none_is_refused() -> None:
    assert "memswap_limit" in str(refusal({"mem_limit": 2**20, "memswap_limit": 2**22}))
    assert "memswap_limit" in str(refusal({"mem_limit": 2**20, "memswap_limit": -1}))


def test_gpus_need_a_generic_resource_kind() -> None:
    request = docker.types.DeviceRequest(count=2, capabilities=[["gpu"]])
    assert "SWARM_GPU_RESOURCE" in str(refusal({"device_requests": [request]}))
    options = SwarmOptions(gpu_resource="NVIDIA-GPU")
    named = docker.types.DeviceRequest(device_ids=["GPU-1", "GPU-2"], capabilities=[["gpu"]])
    resources = translate({"device_requests": [request, named]}, options)["task_template"]["Resources"]
    assert resources["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}},
        {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-1"}},
        {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-2"}}]


@pytest.mark.parametrize("request_", [
    docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]]),  # all of them
    docker.types.DeviceRequest(count=1, capabilities=[["gpu", "compute"]]),
    docker.types.DeviceRequest(count=1, capabilities=[["gpu"]], options={"x": "y"}),
])
def test_gpu_requests_swarm_cannot_reserve_are_refused(request_: Any) -> None:
    error = refusal({"device_requests": [request_]}, SwarmOptions(gpu_resource="NVIDIA-GPU"))
    assert "host_config.device_requests" in str(error)


# ------------------------------------------------------------------------------------------------ mounts
def test_binds_volumes_mounts_and_tmpfs_become_service_mounts() -> None:
    mount = docker.types.Mount("/cache", "cache-vol", type="volume", read_only=True, no_copy=True)
    kwargs = translate({
        "volumes": ["/srv/data:/data:ro", "named:/named:rw", "/srv/shared:/shared:rw,rslave"],
        "mounts": [mount], "tmpfs": {"/scratch": "rw,noexec,nosuid,size=64m,mode=1777", "/ro": "ro"}})
    mounts = container_of(kwargs)["Mounts"]
    assert mounts[0] == {"Target": "/data", "Source": "/srv/data", "Type": "bind", "ReadOnly": True}
    assert mounts[1] == {"Target": "/named", "Source": "named", "Type": "volume", "ReadOnly": False}
    assert mounts[2]["BindOptions"] == {"Propagation": "rslave"} and mounts[2]["Type"] == "bind"
    assert mounts[3] is mount
    assert mounts[4] == {"Target": "/scratch", "Source": "", "Type": "tmpfs", "ReadOnly": False,
                         "TmpfsOptions": {"SizeBytes": 64 * 2**20, "Mode": 0o1777}}
    assert mounts[5]["ReadOnly"] is True and mounts[5]["Type"] == "tmpfs"


@pytest.mark.parametrize("options", ["exec", "suid", "dev", "uid=1000"])
def test_tmpfs_options_a_service_cannot_set_are_refused(options: str) -> None:
    assert f"option {options!r}" in str(refusal({"tmpfs": {"/scratch": options}}))


# ------------------------------------------------------------------------------------------------ container
def test_container_options_swarm_expresses_are_kept() -> None:
    kwargs = translate({
        "init": True, "read_only": True, "group_add": ["audio", "1001"], "cap_add": ["NET_ADMIN"],
        "cap_drop": ["MKNOD"], "sysctls": {"net.core.somaxconn": "1024"}, "isolation": "default",
        "dns": ["10.0.0.2"], "dns_search": ["corp.example"], "dns_opt": ["ndots:2"],
        "ulimits": [docker.types.Ulimit(name="nofile", soft=1024, hard=2048)],
        "log_config": docker.types.LogConfig(type="json-file", config={"max-size": "10m"}),
        "extra_hosts": {"db": "10.0.0.5"},
    })
    container = container_of(kwargs)
    assert (container["Init"], container["ReadOnly"], container["Groups"]) == (True, True, ["audio", "1001"])
    assert (container["CapabilityAdd"], container["CapabilityDrop"]) == (["NET_ADMIN"], ["MKNOD"])
    assert container["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert container["Isolation"] == "default"
    assert container["DNSConfig"] == {"Nameservers": ["10.0.0.2"], "Search": ["corp.example"],
                                      "Options": ["ndots:2"]}
    assert container["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert container["Hosts"] == ["10.0.0.5 db"]
    assert kwargs["task_template"]["LogDriver"] == {"Name": "json-file", "Options": {"max-size": "10m"}}


def test_exposed_ports_need_nothing_published_ones_are_refused() -> None:
    assert "EndpointSpec" not in translate({"ports": {"8080/tcp": []}})
    error = refusal({"ports": {"8080/tcp": [("127.0.0.1", 8080)], "9090/tcp": []}})
    assert "host_config.port_bindings (8080/tcp" in str(error)


UNSUPPORTED_VALUES: dict[str, Any] = {
    "privileged": True, "devices": ["/dev/fuse:/dev/fuse:rwm"], "device_cgroup_rules": ["c 1:3 mr"],
    "runtime": "runsc", "pid_mode": "host", "ipc_mode": "host", "uts_mode": "host", "userns_mode": "host",
    "network_mode": "host", "shm_size": 2**28, "links": ["db:db"], "volumes_from": ["other"],
    "cgroup_parent": "flows", "volume_driver": "local", "publish_all_ports": True,
    "port_bindings": {"80/tcp": [("", 80)]}, "oom_kill_disable": True, "oom_score_adj": 500,
    "cpu_shares": 512, "cpuset_cpus": "0", "cpuset_mems": "0", "blkio_weight": 300, "mem_swappiness": 0,
    "storage_opt": {"size": "1G"}, "security_opt": ["no-new-privileges"], "memswap_limit": 2**30,
    "cpu_quota": 50_000, "cpu_period": 100_000, "auto_remove": True, "restart_policy": {"Name": "always"},
}


@pytest.mark.parametrize("key", sorted(UNSUPPORTED))
def test_what_a_service_cannot_express_is_refused_by_name(key: str) -> None:
    message = str(refusal({key: UNSUPPORTED_VALUES[key]}))
    assert f"host_config.{key} ({UNSUPPORTED[key]}" in message
    assert "Swarm cannot grant" in message and "ENGINE=docker" in message


def test_unknown_keys_are_refused_and_every_refusal_is_named_at_once() -> None:
    message = str(refusal({"privileged": True, "runtime": "runsc", "kernel_memory": 1}))
    for key in ("privileged", "runtime", "kernel_memory"):
        assert f"host_config.{key}" in message


# ------------------------------------------------------------------------------------------------ planned
def test_a_plan_under_the_policy_translates(clean_prefect_env: None) -> None:
    run = FlowRun.model_validate({
        "id": "run-1", "version": 1,
        "run_config": {"type": "DockerRun", "host_config": {
            "mem_limit": "256m", "tmpfs": {"/scratch": "size=16m"}, "cap_drop": ["ALL"], "init": True,
            "mounts": [{"Type": "volume", "Source": "cache", "Target": "/cache"}], "dns": ["10.0.0.2"],
            "ulimits": [{"Name": "nofile", "Soft": 100, "Hard": 100}],
            "log_config": {"Type": "json-file", "Config": {"max-size": "1m"}}}},
        "flow": {"id": "f", "name": "flow", "core_version": "1.4.1",
                 "storage": {"type": "Docker", "image_name": "img", "image_tag": "1"}}})
    settings = Settings(cpus=0.5, pids_limit=100, volumes=["/srv/in:/in:ro"],
                        allowed_run_overrides=["volumes", "ulimits", "log_config"])
    planned = plan_container(run, "img:1", settings, Identity("a", [], "t", "http://api:4200", []))
    kwargs = service_spec(planned.spec, SwarmOptions(), PINNED)
    resources = kwargs["task_template"]["Resources"]
    assert resources["Limits"] == {"MemoryBytes": 256 * 2**20, "NanoCPUs": 500_000_000, "Pids": 100}
    container = container_of(kwargs)
    assert [m["Target"] for m in container["Mounts"]] == ["/in", "/cache", "/scratch"]
    assert container["Hosts"] == ["host-gateway host.docker.internal"]
    assert container["Labels"]["io.prefect.flow-run-id"] == "run-1"


def test_the_agents_gpu_and_runtime_settings_are_refused_under_swarm(clean_prefect_env: None) -> None:
    settings = Settings(gpus="all", runtime="nvidia")
    run = FlowRun.model_validate({"id": "run-1", "version": 1, "run_config": None,
                                  "flow": {"id": "f", "name": "flow", "core_version": "1.4.1",
                                           "storage": {"type": "Docker", "image_name": "img"}}})
    planned = plan_container(run, "img", settings, Identity("a", [], "t", "http://api:4200", []))
    with pytest.raises(ContainerCreateError, match="host_config.device_requests.*host_config.runtime"):
        service_spec(planned.spec, SwarmOptions(), PINNED)


# ------------------------------------------------------------------------------------------------ tasks
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


SERVICE = {"ID": "svc1", "CreatedAt": stamp(60),
           "Spec": {"Name": "prefect-run-1", "Labels": {**LABELS, IMAGE_LABEL: "flows/etl:1"},
                    "TaskTemplate": {"ContainerSpec": {"Image": PINNED}}}}


def task(state: str, *, exit_code: int | None = None, err: str = "", created: float = 30,
         message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"State": state, "Timestamp": stamp(1), "Err": err, "Message": message}
    if exit_code is not None:
        status["ContainerStatus"] = {"ContainerID": "c1", "ExitCode": exit_code}
    return {"ID": f"t-{state}", "CreatedAt": stamp(created), "Status": status}


@pytest.mark.parametrize(("state", "exit_code", "err", "expected"), [
    ("pending", None, "no suitable node", ("running", None, None)),
    ("preparing", None, "", ("running", None, None)),
    ("running", None, "", ("running", None, None)),
    ("complete", 0, "", ("exited", 0, None)),
    ("failed", 3, "task: non-zero exit (3)", ("exited", 3, "task: non-zero exit (3)")),
    ("rejected", None, "No such image: sha256:bb", ("exited", None, "No such image: sha256:bb")),
    ("shutdown", 143, "", ("exited", 143, "shutdown")),  # Swarm's Message when there is no Err
    ("orphaned", None, "", ("exited", None, "orphaned")),
])
def test_task_states_map_onto_the_ports_status(state: str, exit_code: int | None, err: str,
                                                expected: tuple[Any, ...]) -> None:
    message = state if state in ("shutdown", "orphaned") else ""
    info = service_info(SERVICE, task(state, exit_code=exit_code, err=err, message=message))
    assert (info.status, info.exit_code, info.error) == expected
    assert (info.id, info.name, info.image, info.image_id) == ("svc1", "prefect-run-1", "flows/etl:1", PINNED)
    assert info.finished_at == (stamp(1) if expected[0] == "exited" else None)


def test_a_task_without_swarms_words_is_named_by_its_state() -> None:
    assert service_info(SERVICE, task("shutdown", exit_code=143)).error == "task shutdown"
    assert service_info(SERVICE, None).error is None  # no task (yet): running, nothing to explain


def test_no_task_yet_is_running() -> None:
    info = service_info(SERVICE, None)
    assert (info.status, info.exit_code, info.labels) == ("running", None, SERVICE["Spec"]["Labels"])


def test_the_local_container_tells_oom_kills_and_times() -> None:
    container = {"Image": "sha256:cc", "State": {"OOMKilled": True, "ExitCode": 137,
                                                 "StartedAt": stamp(10), "FinishedAt": stamp(2)}}
    info = service_info(SERVICE, task("failed", exit_code=137), container)
    assert (info.exit_code, info.oom_killed, info.started_at, info.finished_at, info.image_id) == (
        137, True, stamp(10), stamp(2), "sha256:cc")


def test_the_wait_for_a_node_counts_from_the_unplaced_task_or_the_service() -> None:
    assert unscheduled_for(SERVICE, task("pending", created=30), NOW) == 30
    assert unscheduled_for(SERVICE, None, NOW) == 60
    assert unscheduled_for(SERVICE, task("running"), NOW) is None


def test_the_newest_task_is_the_runs() -> None:
    old, new = task("failed", exit_code=1, created=50), task("running", created=5)
    assert latest_task([new, old]) is new and latest_task([]) is None


# ------------------------------------------------------------------------------------------------ events
def info_of(service_id: str, status: str, started: bool = True) -> ContainerInfo:
    ended = status == "exited"
    return ContainerInfo(id=service_id, name=service_id, status=status, labels={},
                         exit_code=0 if ended and started else None, oom_killed=False, created="",
                         finished_at=stamp(0) if ended else None, started_at=None)


def test_polled_task_phases_become_start_and_die_events() -> None:
    polls = iter([
        [(info_of("old", "exited"), "complete"), (info_of("a", "running", False), "pending")],
        [(info_of("a", "running"), "running"), (info_of("b", "running"), "running")],
        [(info_of("a", "exited"), "complete"), (info_of("c", "exited"), "failed"),
         (info_of("d", "exited", started=False), "rejected")],
        [],
    ])
    stream = TaskEvents(lambda: next(polls), since=None, interval=0)
    seen: list[tuple[str, str]] = []
    for event in stream:
        seen.append((event["Action"], event["id"]))
        if len(seen) == 7:
            stream.close()
    # `old` had ended before the stream was opened; `c` started and ended between two polls, `d` never
    # started; `b` vanished
    assert seen == [("start", "a"), ("start", "b"), ("die", "a"), ("start", "c"), ("die", "c"),
                    ("die", "d"), ("die", "b")]


@pytest.mark.parametrize(("host_config", "key"), [
    ({"tmpfs": {"/scratch": "size=50%"}}, "tmpfs"),  # the policy allows it; a service tmpfs needs bytes
    ({"volumes": ["cache:/cache:rw,rprivate"]}, "volumes"),  # docker-py: no propagation on a named volume
])
def test_values_docker_py_cannot_express_for_a_service_are_refusals_not_crashes(
        host_config: dict[str, Any], key: str) -> None:
    assert f"host_config.{key}" in str(refusal(host_config))
