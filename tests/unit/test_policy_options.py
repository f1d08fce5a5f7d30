"""The operator's policy over run configs, and agent settings turned into container options (no Docker)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent.api.models import FlowRun
from agent.launch.plan import Identity, plan_container, pull_policy
from agent.policy.agent_options import agent_options
from agent.policy.container_options import apply_run_config
from agent.policy.host_config import parse_gpus, parse_volume
from agent.policy.rules import Policy, PolicyDenied, image_matches, normalize_image
from agent.settings import Settings

IDENTITY = Identity("agent-x", [], "tenant-1", "http://host.docker.internal:4200", [])
STORAGE = {"type": "Docker", "image_name": "img", "image_tag": "1", "registry_url": None}


pytestmark = pytest.mark.usefixtures("clean_prefect_env")


def run_with(host_config: dict[str, Any] | None = None, **run_config: Any) -> FlowRun:
    config = {"type": "DockerRun", "host_config": host_config, **run_config}
    return FlowRun.model_validate(
        {
            "id": "run-1",
            "version": 1,
            "run_config": config,
            "flow": {"id": "f", "name": "flow", "core_version": "1.4.1", "storage": STORAGE},
        }
    )


def plan(
    host_config: dict[str, Any] | None = None, settings: Settings | None = None, **run_config: Any
) -> Any:
    return plan_container(run_with(host_config, **run_config), "img:1", settings or Settings(), IDENTITY)


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize(
    ("image", "normalized"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
        ("index.docker.io/prefecthq/prefect:1.4.1", "docker.io/prefecthq/prefect:1.4.1"),
        ("127.0.0.1:5000/team/flow:v1", "127.0.0.1:5000/team/flow:v1"),
        ("ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io/o/r@sha256:" + "a" * 64),
    ],
)
def test_images_are_normalized_before_matching(image: str, normalized: str) -> None:
    assert normalize_image(image) == normalized


@pytest.mark.parametrize(
    ("image", "pattern", "allowed"),
    [
        ("busybox", "busybox", True),  # a repository pattern allows all its tags
        ("busybox:1", "docker.io/library/busybox:*", True),
        ("evil/busybox", "busybox", False),  # PR #3026 matched the first path component only
        ("registry.example.com/team/flow:1", "registry.example.com/team/*", True),
        ("registry.example.com.evil.io/team/flow:1", "registry.example.com/*", False),
        ("registry.example.com/other/flow:1", "registry.example.com/team/*", False),
        ("anything/at:all", "*", True),
        ("local-agent-stand-in:latest", "local-agent-stand-in:*", True),  # wildcard in the tag, no registry
        ("local-agent-stand-in:latest", "local-agent-*", True),
    ],
)
def test_image_allow_list_globs(image: str, pattern: str, allowed: bool) -> None:
    assert image_matches(image, pattern) is allowed


def test_disallowed_image_names_the_setting_and_option() -> None:
    policy = Policy(allowed_images=("registry.example.com/*",))
    assert policy.check_image("registry.example.com/x:1") == "registry.example.com/*"
    with pytest.raises(PolicyDenied, match="PREFECT__CLOUD__AGENT__ALLOWED_IMAGES.*--allowed-images"):
        policy.check_image("busybox")


# ------------------------------------------------------------------------------------------------ denials
@pytest.mark.parametrize(
    ("host_config", "override"),
    [
        ({"privileged": True}, "privileged"),
        ({"cap_add": ["SYS_ADMIN"]}, "cap_add"),
        ({"network_mode": "host"}, "host_network"),
        ({"pid_mode": "host"}, "host_pid"),
        ({"ipc_mode": "host"}, "host_ipc"),
        ({"binds": ["/var/run/docker.sock:/var/run/docker.sock"]}, "docker_socket"),
        ({"mounts": [{"Type": "bind", "Source": "/run/docker.sock", "Target": "/s"}]}, "docker_socket"),
        ({"devices": ["/dev/sda:/dev/sda"]}, "devices"),
        ({"device_requests": [{"Count": -1, "Capabilities": [["gpu"]]}]}, "gpus"),
        ({"binds": {"cache": {"bind": "/cache", "mode": "rw"}}}, "volumes"),
        ({"network_mode": "other-net"}, "networks"),
    ],
)
def test_hostile_requests_are_denied_naming_the_override(host_config: dict[str, Any], override: str) -> None:
    with pytest.raises(PolicyDenied) as denied:
        plan(host_config)
    message = str(denied.value)
    assert f"'{override}' to PREFECT__CLOUD__AGENT__ALLOWED_RUN_OVERRIDES" in message
    assert f"--allowed-run-overrides {override}" in message
    allowed = Settings(allowed_run_overrides=[override], allowed_host_paths=["/var/run/docker.sock"])
    plan(host_config, allowed)  # the named override lets exactly this through


def test_host_binds_need_the_host_path_allow_list_and_all_denials_are_listed() -> None:
    with pytest.raises(PolicyDenied) as denied:
        plan({"binds": ["/etc:/host-etc:ro", "/data/in/../../etc/x:/x"], "privileged": True})
    message = str(denied.value)
    assert message.count("outside the allowed host paths") == 2 and "/etc/x" in message  # normalized
    assert "PREFECT__CLOUD__AGENT__ALLOWED_HOST_PATHS" in message and "privileged" in message
    settings = Settings(allowed_host_paths=["/data"])
    spec = plan({"binds": {"/data/in": {"bind": "/in", "mode": "ro"}}}, settings).spec
    assert spec.host_config["volumes"] == ["/data/in:/in:ro"]
    with pytest.raises(PolicyDenied, match="/datax"):
        plan({"binds": ["/datax:/x"]}, settings)  # a sibling with the same prefix is not below /data


def test_a_directory_holding_the_socket_needs_docker_socket_even_when_the_path_is_allowed() -> None:
    with pytest.raises(PolicyDenied, match="docker_socket"):
        plan({"binds": ["/var/run:/host-run"]}, Settings(allowed_host_paths=["/var"]))


def test_unknown_keys_are_denied_and_ignored_keys_leave_a_notice() -> None:
    with pytest.raises(PolicyDenied, match=r"\['kernel_module'\] are not supported"):
        plan({"kernel_module": "x"})
    result = plan({"auto_remove": True, "privileged": False, "shm_size": "1g"})
    assert "auto_remove" not in result.spec.host_config and result.spec.host_config["shm_size"] == 1 << 30
    assert any("auto_remove ignored" in notice for notice in result.notices)


# ------------------------------------------------------------------------------------------------ limits
def test_limits_within_maxima_pass_and_above_are_clamped_with_a_notice() -> None:
    settings = Settings(memory="64m", max_memory="1g", cpus=0.5, max_cpus=2, max_pids_limit=100)
    default = plan(None, settings).spec.host_config
    assert (default["mem_limit"], default["memswap_limit"]) == (64 << 20, 64 << 20)
    assert (default["nano_cpus"], default["pids_limit"]) == (500_000_000, 100)  # no default: the max applies
    result = plan(
        {"mem_limit": "4g", "cpu_quota": 400_000, "cpu_period": 100_000, "pids_limit": -1}, settings
    )
    config = result.spec.host_config
    assert (config["mem_limit"], config["memswap_limit"]) == (1 << 30, 1 << 30)
    assert (config["nano_cpus"], config["pids_limit"]) == (2_000_000_000, 100)
    assert "cpu_quota" not in config  # converted, so the maximum holds and Docker sees one CPU knob
    assert len(result.notices) == 3 and "clamped to 1g" in result.notices[0]
    assert "PREFECT__CLOUD__AGENT__MAX_MEMORY" in result.notices[0]
    assert plan({"mem_limit": "256m"}, settings).spec.host_config["mem_limit"] == 256 << 20


def test_run_env_and_loopback_ports_are_allowed_and_fixed_variables_win() -> None:
    with pytest.raises(PolicyDenied, match="--allowed-run-overrides api_env"):
        plan(env={"A": "1", "PREFECT__CONTEXT__FLOW_RUN_ID": "x"})
    spec = plan(
        {"port_bindings": {8080: ["127.0.0.1", 18080]}},
        Settings(allowed_run_overrides=["api_env"]),
        env={"A": "1", "PREFECT__CONTEXT__FLOW_RUN_ID": "x"},
        ports=[9000],
    ).spec
    assert spec.environment["A"] == "1" and spec.environment["PREFECT__CONTEXT__FLOW_RUN_ID"] == "run-1"
    assert spec.host_config["ports"] == {"9000/tcp": [], "8080/tcp": [("127.0.0.1", 18080)]}
    with pytest.raises(PolicyDenied, match="--allowed-run-overrides published_ports"):
        plan({"port_bindings": {8080: 18080}})  # no HostIp: every interface of the host


# ------------------------------------------------------------------------------------------------ agent level
def test_agent_level_options_become_create_kwargs() -> None:
    settings = Settings(
        volumes=["/srv/data:/data:ro", "cache:/cache"],
        network=["a", "b"],
        gpus="device=0,1",
        runtime="nvidia",
        pids_limit=64,
    )
    options = agent_options(settings, settings.network)
    assert options.host_config["volumes"] == ["/srv/data:/data:ro", "cache:/cache:rw"]
    assert options.named_volumes == ["cache"] and options.networks == ["a", "b"]
    assert options.extra_hosts == {"host.docker.internal": "host-gateway"}
    (request,) = options.host_config["device_requests"]
    assert request["DeviceIDs"] == ["0", "1"] and request["Capabilities"] == [["gpu"]]
    assert options.host_config["runtime"] == "nvidia" and options.host_config["pids_limit"] == 64


def test_host_network_mode_keeps_the_loopback_api_and_drops_the_gateway() -> None:
    settings = Settings(api="http://127.0.0.1:4200", network=["host"])
    identity = Identity("a", [], "t", "http://host.docker.internal:4200", ["host"])
    spec = plan_container(run_with(None), "img:1", settings, identity).spec
    assert spec.host_config["network_mode"] == "host" and spec.networks == [] and spec.extra_hosts == {}
    assert spec.environment["PREFECT__CLOUD__API"] == "http://127.0.0.1:4200"
    assert agent_options(Settings(host_gateway=False), []).extra_hosts == {}


def test_flow_containers_get_an_init_unless_turned_off_and_a_run_config_may_choose() -> None:
    assert agent_options(Settings(), []).host_config["init"] is True
    assert "init" not in agent_options(Settings(init=False), []).host_config
    identity = Identity("a", [], "t", "http://host.docker.internal:4200", [])
    spec = plan_container(run_with({"init": False}), "img:1", Settings(), identity).spec
    assert spec.host_config["init"] is False


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("all", {"Count": -1}),
        ("2", {"Count": 2}),
        ("device=GPU-1", {"DeviceIDs": ["GPU-1"]}),
    ],
)
def test_gpus_syntax(text: str, fields: dict[str, Any]) -> None:
    request = parse_gpus(text)
    assert {k: request[k] for k in fields} == fields


@pytest.mark.parametrize(
    "bad",
    [
        {"volumes": ["/a"]},
        {"volumes": ["./rel:/x"]},
        {"volumes": ["/a:/b:rx"]},
        {"memory": "lots"},
        {"memory": "2g", "max_memory": "1g"},
        {"cpus": 4, "max_cpus": 2},
        {"allowed_run_overrides": ["privileged", "root"]},
        {"network": ["host", "other"]},
        {"gpus": "0"},
        {"allowed_host_paths": ["data"]},
        {"no_pull": True, "pull_policy": "always"},
        {"registry_credentials": '{"r": {"username": "u"}}'},
    ],
)
def test_invalid_options_are_configuration_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_pull_policy_setting_and_no_pull() -> None:
    assert pull_policy(Settings(pull_policy="always")).value == "always"
    assert pull_policy(Settings(no_pull=True)).value == "never"
    assert pull_policy(Settings()).value == "default"


def test_volume_syntax() -> None:
    assert parse_volume("name:/x").named and not parse_volume("/h:/x:ro").named
    assert apply_run_config(agent_options(Settings(), []), None, Policy()) is None
