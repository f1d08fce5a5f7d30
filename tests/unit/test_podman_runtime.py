"""The pure rules of the Podman runtime (agent/runtime/podman.py): engine detection, the host's facts,
event narrowing, `host-gateway`, unapplied limits and OOM inference. Their behaviour against a real Podman
service is tested in tests/podman/."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.ops.health import HealthState, _engine
from agent.runtime.docker import DockerRuntime
from agent.runtime.docker_types import ContainerCreateError, ContainerInfo, ContainerSpec
from agent.runtime.engines import open_runtime
from agent.runtime.podman import (
    PodmanEvents,
    PodmanHost,
    PodmanRuntime,
    gateway_hosts,
    inferred_oom,
    is_podman,
    parse_uptime,
    unapplied_limits,
)
from agent.settings import Settings

PODMAN_VERSION = {"Platform": {"Name": "linux/amd64/debian-12"}, "Version": "4.3.1",
                  "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}, {"Name": "Conmon"}]}
DOCKER_VERSION = {"Platform": {"Name": "Docker Engine - Community"}, "Version": "20.10.24",
                  "Components": [{"Name": "Engine", "Version": "20.10.24"}, {"Name": "containerd"}]}
LIBPOD_INFO = {"version": {"Version": "4.3.1"},
               "host": {"hostname": "vm", "uptime": "13h 42m 44.00s (Approximately 0.54 days)",
                        "cgroupVersion": "v1", "cgroupControllers": [], "security": {"rootless": True}},
               "store": {"graphRoot": "/tmp/x/storage"}}


def test_podman_is_told_from_docker_by_its_version_components() -> None:
    assert is_podman(PODMAN_VERSION)
    assert not is_podman(DOCKER_VERSION)
    assert is_podman({"Platform": {"Name": "Podman Engine"}})
    assert not is_podman({})


@pytest.mark.parametrize("engine, detected, expected", [
    ("docker", "podman", PodmanRuntime), ("docker", "docker", DockerRuntime), ("docker", None, DockerRuntime),
    ("podman", None, PodmanRuntime),
])
def test_open_runtime_builds_the_runtime_of_the_detected_engine(
    monkeypatch: pytest.MonkeyPatch, engine: str, detected: str | None, expected: type[DockerRuntime],
) -> None:
    asked: list[str | None] = []

    def detect(base_url: str | None, timeout: float) -> str | None:
        asked.append(base_url)
        return detected

    monkeypatch.setattr("agent.runtime.engines.detect_engine", detect)
    runtime = open_runtime(Settings(engine=engine, base_url="unix:///tmp/engine.sock"))
    assert type(runtime) is expected
    assert asked == ([] if engine == "podman" else ["unix:///tmp/engine.sock"])


def test_uptime_is_read_in_hours_minutes_and_seconds() -> None:
    assert parse_uptime("13h 42m 44.00s (Approximately 0.54 days)") == 13 * 3600 + 42 * 60 + 44
    assert parse_uptime("0h 5m 3.5s") == 303.5
    assert parse_uptime("") is None and parse_uptime("soon") is None


def test_rootless_cgroups_v1_host_warns_that_limits_and_the_gateway_do_not_hold() -> None:
    host = PodmanHost.from_libpod_info(LIBPOD_INFO)
    assert host.describe() == "Podman 4.3.1 (rootless, cgroups v1)"
    assert not host.limits_enforced
    limits, network = host.warnings()
    assert "does not enforce resource limits" in limits and "MAX_MEMORY" in limits
    assert "NETWORK=host" in network
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert host.booted_at(now) == now - timedelta(hours=13, minutes=42, seconds=44)
    host_info = {**LIBPOD_INFO["host"], "cgroupControllers": ["cpu", "memory", "pids"],
                 "security": {"rootless": False}}
    rootful = PodmanHost.from_libpod_info({**LIBPOD_INFO, "host": host_info})
    assert rootful.limits_enforced and rootful.warnings() == ()
    assert rootful.describe() == "Podman 4.3.1 (rootful, cgroups v1)"


def test_host_identity_is_stable_and_tells_storage_roots_apart() -> None:
    one = PodmanHost.from_libpod_info(LIBPOD_INFO)
    other = PodmanHost.from_libpod_info({**LIBPOD_INFO,
                                         "store": {"graphRoot": "/var/lib/containers/storage"}})
    assert one.identity() == PodmanHost.from_libpod_info(LIBPOD_INFO).identity()
    assert one.identity() != other.identity() and one.identity().startswith("podman:vm:")


class FakeStream:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events, self.closed = events, False

    def __iter__(self) -> Any:
        return iter(self.events)

    def close(self) -> None:
        self.closed = True


def event(action: str, **labels: str) -> dict[str, Any]:
    return {"Type": "container", "Action": action, "status": action, "id": "c1",
            "Actor": {"ID": "c1", "Attributes": {"image": "x", **labels}}}


def test_events_keep_start_and_die_of_containers_carrying_the_label_keys() -> None:
    stream = FakeStream([event("start", agent="a"), event("died", agent="a"), event("die", agent="a"),
                         event("start"), event("init", agent="a"), event("cleanup", agent="a")])
    narrowed = PodmanEvents(stream, ("agent",), ("start", "die"))
    kept = [(e["Action"], e["status"]) for e in narrowed]
    assert kept == [("start", "start"), ("die", "die"), ("die", "die")]
    narrowed.close()
    assert stream.closed


def spec(network: str | None = None, api: str = "http://host.docker.internal:4200",
         hosts: dict[str, str] | None = None) -> ContainerSpec:
    host_config = {"network_mode": network} if network else {}
    return ContainerSpec(name="prefect-x", image="i", command=["true"], labels={},
                         environment={"PREFECT__CLOUD__API": api}, host_config=host_config,
                         extra_hosts={"host.docker.internal": "host-gateway"} if hosts is None else hosts)


def test_host_gateway_becomes_the_network_gateway_or_the_loopback_or_a_clear_refusal() -> None:
    assert gateway_hosts(spec(), "10.88.0.1") == {"host.docker.internal": "10.88.0.1"}
    assert gateway_hosts(spec("host"), None) == {"host.docker.internal": "127.0.0.1"}
    assert gateway_hosts(spec("host", hosts={}), None) == {"host.docker.internal": "127.0.0.1"}
    assert gateway_hosts(spec("host", api="http://10.0.0.5:4200", hosts={}), None) == {}
    assert gateway_hosts(spec(hosts={"db": "10.1.1.1"}), None) == {"db": "10.1.1.1"}
    with pytest.raises(ContainerCreateError, match="NETWORK=host"):
        gateway_hosts(spec(), None)


def test_device_requests_are_refused_before_anything_is_created() -> None:
    runtime = PodmanRuntime("unix:///nonexistent/podman.sock", 1)
    gpu = ContainerSpec(name="prefect-x", image="i", command=["true"], labels={}, environment={},
                        host_config={"device_requests": [{"Count": -1, "Capabilities": [["gpu"]]}]})
    with pytest.raises(ContainerCreateError, match="drops device requests"):
        runtime.create(gpu)


def test_limits_asked_for_but_not_in_podmans_record_are_named() -> None:
    asked = {"mem_limit": 64 * 2**20, "memswap_limit": 64 * 2**20, "nano_cpus": 10**9, "init": True}
    assert unapplied_limits(asked, {"Memory": 0, "MemorySwap": 0, "NanoCpus": 0}) == [
        "mem_limit", "memswap_limit", "nano_cpus"]
    assert unapplied_limits(asked, {"Memory": 1, "MemorySwap": 1, "NanoCpus": 1}) == []
    assert unapplied_limits({"init": True}, {}) == []


def info(exit_code: int | None, oom: bool = False) -> ContainerInfo:
    return ContainerInfo(id="c1", name="n", status="exited", labels={}, exit_code=exit_code, oom_killed=oom,
                         created="", finished_at=None)


def test_a_sigkill_nobody_sent_under_a_memory_limit_is_an_oom_kill() -> None:
    assert inferred_oom(info(137), 32 * 2**20, stopped_by_agent=False)
    assert not inferred_oom(info(137), 32 * 2**20, stopped_by_agent=True)  # the agent's own stop escalated
    assert not inferred_oom(info(137), 0, stopped_by_agent=False)  # no limit: someone else's SIGKILL
    assert not inferred_oom(info(3), 32 * 2**20, stopped_by_agent=False)
    assert inferred_oom(info(137, oom=True), 0, stopped_by_agent=True)  # Podman's own word stands


def test_health_reports_the_engine_and_check_prints_it() -> None:
    state = HealthState(poll_window=60, liveness_window=120, engine="Podman 4.3.1 (rootless, cgroups v1)")
    _, body = state.liveness()
    assert body["engine"] == "Podman 4.3.1 (rootless, cgroups v1)"
    assert _engine(json.dumps(body).encode()) == "; Engine: Podman 4.3.1 (rootless, cgroups v1)"
    assert _engine(b'{"engine": null}') == "" and _engine(b"nonsense") == ""


def test_a_missing_init_binary_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Podman's own words when catatonit is missing (measured on a host without it), raised by the start."""
    def refuse(self: DockerRuntime, *args: Any, **kwargs: Any) -> Any:
        raise ContainerCreateError("Docker created container prefect-x but could not start it: "
                                   "container-init binary not found on the host", status_code=500)

    monkeypatch.setattr(DockerRuntime, "launch", refuse)
    with pytest.raises(ContainerCreateError, match="apt-get install catatonit") as caught:
        PodmanRuntime("unix:///nonexistent/podman.sock", 1).launch(spec())
    assert "INIT=false" in caught.value.message and not caught.value.transient
