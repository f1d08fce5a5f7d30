"""Hostile run configs: the policy denies each one, or the container Docker created from it is within policy.

The judge (`judge.py`) reads only what the daemon made of an accepted config, so these tests hold the policy
to what reaches the host, not to what the policy believes it let through. Its own tests come first: each
escape created directly (bypassing the policy) must be reported, and a harmless container must not be.
"""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit
from hypothesis import HealthCheck, given, seed, settings

from agent.runtime.docker import DockerRuntime
from agent.settings import Settings
from tests.security.bench import Bench, Escape, Outcome, PolicyCase, clean_prefect_env
from tests.security.cases import BENIGN, DATA, HOSTILE, VOLUME
from tests.security.judge import NANO, JudgePolicy
from tests.security.run_configs import KNOWN_KEYS, run_config
from tests.security.strategies import ALLOWED_DIR, SYMLINKS, VOLUME_PREFIX
from tests.support.docker_fixtures import test_labels

pytestmark = pytest.mark.docker

EXAMPLES = int(os.environ.get("LOCAL_AGENT_SECURITY_EXAMPLES", "1200"))  # per policy; CI-sized by default
HYPOTHESIS = settings(  # reproducible: a fixed seed per policy (@seed below), no example database
    max_examples=EXAMPLES,
    derandomize=False,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
PATH_KEYS = ("binds", "volumes", "mounts", "tmpfs")
POLICIES: dict[str, tuple[dict[str, Any], JudgePolicy, tuple[str, ...]]] = {
    "default": ({}, JudgePolicy(), KNOWN_KEYS),
    "host_path": ({"allowed_host_paths": [ALLOWED_DIR]}, JudgePolicy(host_paths=(ALLOWED_DIR,)), PATH_KEYS),
    "overrides": (
        {
            "allowed_run_overrides": ["volumes", "networks"],
            "allowed_host_paths": [ALLOWED_DIR],
            "max_memory": "256m",
            "max_cpus": 1,
            "max_pids_limit": 128,
        },
        JudgePolicy(frozenset({"volumes", "networks"}), (ALLOWED_DIR,), 256 << 20, NANO, 128),
        (
            *PATH_KEYS,
            "mounts",
            "network_mode",
            "links",
            "volumes_from",
            "mem_limit",
            "memswap_limit",
            "nano_cpus",
            "cpu_quota",
            "pids_limit",
        ),
    ),
    "root": ({"allowed_host_paths": ["/"]}, JudgePolicy(host_paths=("/",)), PATH_KEYS),
}


@pytest.fixture(scope="module")
def allowed_dir() -> Iterator[str]:
    """The allowed host path: a real directory on this host (the daemon's), with symlinks out of it."""
    os.makedirs(f"{DATA}", exist_ok=True)
    for link, points_to in SYMLINKS.items():
        os.symlink(points_to, f"{ALLOWED_DIR}/{link}")
    yield ALLOWED_DIR
    shutil.rmtree(ALLOWED_DIR, ignore_errors=True)
    shutil.rmtree(f"{ALLOWED_DIR}x", ignore_errors=True)  # a sibling a hostile bind may have created


@pytest.fixture(scope="module")
def cases(allowed_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PolicyCase]:
    with clean_prefect_env(str(tmp_path_factory.mktemp("prefect-home"))):
        return {
            # host_root "/": the daemon shares this machine's filesystem, as an agent run on the host does
            # (inside a container the default is empty; docs/run-options.md says what that cannot see).
            name: PolicyCase(name, Settings(container_labels=test_labels(), host_root="/", **options), judged)
            for name, (options, judged, _) in POLICIES.items()
        }


@pytest.fixture(scope="module")
def bench(
    runtime: DockerRuntime, docker_client: docker.DockerClient, busybox_image: str, allowed_dir: str
) -> Iterator[Bench]:
    bench = Bench(runtime, docker_client, busybox_image)
    yield bench
    bench.close()
    print(f"\nsecurity bench outcomes: {bench.stats.counts}")


def within_policy(outcome: Outcome) -> bool:
    """Denied, refused by Docker, or created without a violation; a crash of the policy is a failure."""
    return not outcome.violations


# ------------------------------------------------------------------------------------------------ the judge
ESCAPES: list[tuple[str, dict[str, Any], str]] = [
    ("privileged", {"privileged": True}, "privileged"),
    ("cap_add", {"cap_add": ["SYS_ADMIN"]}, "cap_add"),
    ("host_network", {"network_mode": "host"}, "host_network"),
    ("host_pid", {"pid_mode": "host"}, "host_pid"),
    ("host_ipc", {"ipc_mode": "host"}, "host_ipc"),
    ("host_uts", {"uts_mode": "host"}, "host_uts"),
    ("host_userns", {"userns_mode": "host"}, "host_userns"),
    ("devices", {"devices": ["/dev/null:/dev/xnull:rwm"]}, "devices"),
    ("device_cgroup_rules", {"device_cgroup_rules": ["c 1:3 r"]}, "devices"),
    ("gpus", {"device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])]}, "gpus"),
    ("bind_etc", {"volumes": ["/etc:/h:ro"]}, "allowed_host_paths"),
    ("socket", {"volumes": ["/var/run/docker.sock:/s"]}, "docker_socket"),
    ("socket_slashes", {"volumes": ["//var/run/docker.sock:/s"]}, "docker_socket"),
    ("run_dir", {"volumes": ["/run:/r"]}, "docker_socket"),
    ("symlink_etc", {"volumes": [f"{ALLOWED_DIR}/etc-link:/h"]}, "allowed_host_paths"),
    ("symlink_socket", {"volumes": [f"{ALLOWED_DIR}/sock-link:/s"]}, "docker_socket"),
    ("named_volume", {"volumes": [f"{VOLUME}:/v"]}, "volumes"),
    (
        "driver_options",
        {
            "mounts": [
                Mount(
                    "/v",
                    VOLUME,
                    driver_config={
                        "Name": "local",
                        "Options": {"o": "bind", "device": "/etc", "type": "none"},
                    },
                )
            ]
        },
        "volume_options",
    ),
    ("log_driver", {"log_config": LogConfig(type="none")}, "log_config"),
    ("log_options", {"log_config": LogConfig(type="json-file", config={"max-size": "1m"})}, "log_config"),
    ("oom_score_adj", {"oom_score_adj": -500}, "oom_score_adj"),
    ("oom_kill_disable", {"oom_kill_disable": True}, "oom_kill_disable"),
    ("security_opt", {"security_opt": ["seccomp=unconfined"]}, "security_opt"),
    ("sysctls", {"sysctls": {"net.ipv4.ip_forward": "1"}}, "sysctls"),
    ("ulimits", {"ulimits": [Ulimit(name="nofile", soft=1024, hard=2048)]}, "ulimits"),
    ("tmpfs_suid", {"tmpfs": {"/t": "size=1m,suid,dev"}}, "tmpfs_options"),
    ("ports_everywhere", {"ports": {"8080/tcp": 18080}}, "published_ports"),
    ("ports_any_ip", {"ports": {"8080/tcp": ("0.0.0.0", 18080)}}, "published_ports"),
    ("publish_all", {"publish_all_ports": True}, "published_ports"),
    ("propagation", {"mounts": [Mount("/h", DATA, type="bind", propagation="rshared")]}, "mount_propagation"),
    ("runtime", {"runtime": "io.containerd.runc.v2"}, "runtime"),
    ("cgroup_parent", {"cgroup_parent": "lasec"}, "cgroup_parent"),
    ("no_memory_limit", {}, "max_memory"),
    ("memory_above", {"mem_limit": "1g"}, "max_memory"),
    ("swap_unlimited", {"mem_limit": "64m", "memswap_limit": -1}, "max_memory"),
    ("cpus_above", {"nano_cpus": 2 * NANO}, "max_cpus"),
    ("quota_above", {"cpu_quota": 200_000, "cpu_period": 100_000}, "max_cpus"),
    ("pids_unlimited", {"pids_limit": -1}, "max_pids_limit"),
]
MAXIMA = JudgePolicy(host_paths=(ALLOWED_DIR,), max_memory=256 << 20, max_nano_cpus=NANO, max_pids=128)


@pytest.mark.parametrize(("kwargs", "need"), [pytest.param(k, n, id=i) for i, k, n in ESCAPES])
def test_the_judge_reports_each_escape_docker_created(
    bench: Bench, kwargs: dict[str, Any], need: str
) -> None:
    policy = MAXIMA if need.startswith("max_") else JudgePolicy(host_paths=(ALLOWED_DIR,))
    found = created_directly(bench, kwargs, policy)
    assert need in {v.need for v in found}, found


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="plain"),
        pytest.param({"volumes": [f"{DATA}:/d:ro"], "tmpfs": {"/t": "size=1m,noexec,nosuid"}}, id="allowed"),
        pytest.param(
            {"ports": {"8080/tcp": ("127.0.0.1", 18080)}, "security_opt": ["no-new-privileges"]},
            id="loopback",
        ),
        pytest.param(
            {"network_mode": "none", "ipc_mode": "private", "oom_score_adj": 100, "cap_drop": ["ALL"]},
            id="private",
        ),
        pytest.param(
            {"mem_limit": "64m", "memswap_limit": "64m", "nano_cpus": NANO // 2, "pids_limit": 64},
            id="within-maxima",
        ),
    ],
)
def test_the_judge_passes_a_container_within_policy(bench: Bench, kwargs: dict[str, Any]) -> None:
    limits = {"mem_limit": "64m", "nano_cpus": NANO // 2, "pids_limit": 64}  # within MAXIMA
    assert created_directly(bench, {**limits, **kwargs}, MAXIMA) == []


def test_the_judge_reports_volumes_from_links_and_networks(
    bench: Bench, docker_client: docker.DockerClient
) -> None:
    other = docker_client.containers.create(bench.image, labels=test_labels())
    network = docker_client.networks.create(f"{VOLUME_PREFIX}net", labels=test_labels())
    try:
        for kwargs in (
            {"volumes_from": [other.id]},
            {"links": {other.name: "db"}},
            {"network": network.name},
            {"network_mode": f"container:{other.id}"},
        ):
            needs = {v.need for v in created_directly(bench, kwargs, JudgePolicy())}
            assert needs & {"volumes", "networks"}, kwargs
    finally:
        other.remove(force=True)
        network.remove()


def created_directly(bench: Bench, kwargs: dict[str, Any], policy: JudgePolicy) -> list[Any]:
    """Create with docker-py directly, bypassing the policy: what the judge says of a known container."""
    container = bench.client.containers.create(bench.image, ["true"], labels=test_labels(), **kwargs)
    try:
        return bench.judge(container.id, policy)
    finally:
        bench.remove(container.id)


# ------------------------------------------------------------------------------------------------ the policy
@pytest.mark.parametrize(("policy", "host_config"), [pytest.param(p, c, id=i) for i, p, c in HOSTILE])
def test_a_hand_written_hostile_config_is_denied_or_harmless(
    bench: Bench, cases: dict[str, PolicyCase], policy: str, host_config: dict[str, Any]
) -> None:
    outcome = bench.verdict(cases[policy], {"type": "DockerRun", "host_config": host_config})
    assert within_policy(outcome), f"policy {policy} let through {host_config!r}: {outcome}"


@pytest.mark.parametrize(("policy", "host_config"), [pytest.param(p, c, id=i) for i, p, c in BENIGN])
def test_a_config_within_policy_is_created_and_judged_clean(
    bench: Bench, cases: dict[str, PolicyCase], policy: str, host_config: dict[str, Any]
) -> None:
    """The other half: the bench really creates what the policy accepts (else every test above is moot)."""
    outcome = bench.verdict(cases[policy], {"type": "DockerRun", "host_config": host_config})
    assert outcome.kind == "created" and not outcome.violations, outcome


@pytest.mark.parametrize("policy", list(POLICIES))
def test_generated_hostile_configs_are_denied_or_harmless(
    bench: Bench, cases: dict[str, PolicyCase], policy: str
) -> None:
    """Thousands of spellings, nestings, paths and types; what passes the policy is created and judged.

    The first pass only submits (workers judge meanwhile); if anything escaped, a second pass replays the
    same derandomized examples one by one so that hypothesis shrinks each kind of escape to a minimal one.
    """
    case, pending = cases[policy], []
    before = dict(bench.stats.counts)

    @HYPOTHESIS
    @seed(zlib.crc32(policy.encode()))
    @given(config=run_config(POLICIES[policy][2]))
    def submit(config: dict[str, Any]) -> None:
        pending.append((config, bench.submit(case, config)))

    submit()
    escapes = [(config, done.result()) for config, done in pending if not within_policy(done.result())]
    counts = {kind: n - before.get(kind, 0) for kind, n in bench.stats.counts.items()}
    print(f"\npolicy {policy}: {len(pending)} examples, {len(escapes)} escaped; unique outcomes {counts}")
    if escapes:
        replay(bench, case, escapes)
    assert counts.get("created", 0) > 0, "no generated config reached the daemon: the judge was never asked"


def replay(bench: Bench, case: PolicyCase, escapes: list[tuple[dict[str, Any], Outcome]]) -> None:
    shortest: dict[str, tuple[dict[str, Any], Outcome]] = {}
    for config, outcome in escapes:
        for need in {v.need for v in outcome.violations}:
            if need not in shortest or len(repr(config)) < len(repr(shortest[need][0])):
                shortest[need] = (config, outcome)
    catalogue = "\n".join(
        f"  {need}: {_without_type(config)!r} -> {outcome}"
        for need, (config, outcome) in sorted(shortest.items())
    )
    summary = f"policy {case.name}: {len(escapes)} generated configs escaped; shortest per kind:\n{catalogue}"

    @HYPOTHESIS
    @seed(zlib.crc32(case.name.encode()))
    @given(config=run_config(POLICIES[case.name][2]))
    def check(config: dict[str, Any]) -> None:
        outcome = bench.verdict(case, config)
        if not within_policy(outcome):
            need = sorted(v.need for v in outcome.violations)[0]
            raise Escape.named(need)(f"policy {case.name} let through {config!r}: {outcome}")

    try:
        check()
    except Exception as shrunk:
        raise AssertionError(summary) from shrunk
    raise AssertionError(f"{summary}\n(not reproduced when replayed one by one)")


def _without_type(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key != "type"}
