"""The closed `host_config` model and the policy over it: each attack that once worked, and what is built.

No Docker: `plan_container` builds the create kwargs; tests/security creates them on the real daemon.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker.types
import pytest

from agent.api.models import FlowRun
from agent.launch.plan import Identity, plan_container
from agent.policy.container_options import _HANDLERS, IGNORED_KEYS, NAMESPACE_KEYS, OVERRIDE_KEYS, PLAIN_KEYS
from agent.policy.host_config import KNOWN_KEYS, case_collisions, parse_host_config
from agent.policy.host_paths import HostPathError, clean, resolve
from agent.policy.rules import OVERRIDES, Policy, PolicyDenied
from agent.settings import Settings

IDENTITY = Identity("agent-x", [], "tenant-1", "http://host.docker.internal:4200", [])
STORAGE = {"type": "Docker", "image_name": "img", "image_tag": "1", "registry_url": None}

pytestmark = pytest.mark.usefixtures("clean_prefect_env")


def plan(
    host_config: Any, overrides: tuple[str, ...] = (), paths: tuple[str, ...] = (), host_root: str = ""
) -> Any:
    run = FlowRun.model_validate(
        {
            "id": "run-1",
            "version": 1,
            "run_config": {"type": "DockerRun", "host_config": host_config},
            "flow": {"id": "f", "name": "flow", "core_version": "1.4.1", "storage": STORAGE},
        }
    )
    settings = Settings(
        allowed_run_overrides=list(overrides), allowed_host_paths=list(paths), host_root=host_root
    )
    return plan_container(run, "img:1", settings, IDENTITY)


def denied(host_config: Any, **kwargs: Any) -> str:
    with pytest.raises(PolicyDenied) as error:
        plan(host_config, **kwargs)
    return str(error.value)


def hint(override: str) -> str:
    return f"--allowed-run-overrides {override}"


# ------------------------------------------------------------------------------------------------ attack 1
@pytest.mark.parametrize(
    "host_config",
    [
        {"mounts": [{"Type": "volume", "type": "bind", "Source": "cache", "source": "/", "Target": "/h"}]},
        {"mem_limit": "1g", "Mem_Limit": "64g"},
        {"log_config": {"Type": "json-file", "type": "syslog"}},
        {
            "mounts": [
                {
                    "Type": "bind",
                    "Source": "/data",
                    "Target": "/d",
                    "BindOptions": {"Propagation": "rprivate", "propagation": "rshared"},
                }
            ]
        },
        {"binds": {"/data": {"bind": "/d", "Bind": "/e"}}},
        {"port_bindings": {8080: ["127.0.0.1", 1], "8080": ["127.0.0.1", 2]}},
    ],
)
def test_a_key_spelled_twice_in_any_case_at_any_depth_is_denied(host_config: dict[str, Any]) -> None:
    message = denied(host_config, overrides=tuple(OVERRIDES), paths=("/",))
    assert "are the same key to Docker" in message


def test_the_case_walk_names_where_the_collision_is() -> None:
    found = case_collisions({"mounts": [{"a": {"X": 1, "x": 2}}]})
    assert found == ["host_config.mounts[0].a: keys 'X' and 'x' are the same key to Docker"]


@pytest.mark.parametrize(
    "request_",
    [
        {"DeviceIDs": ["0"], "device_ids": ["1"]},
        {"Count": 1, "count": 2},
    ],
)
def test_alternative_spellings_of_one_field_are_denied(request_: dict[str, Any]) -> None:
    assert "twice" in denied({"device_requests": [request_]}, overrides=("gpus",)) or "same key" in denied(
        {"device_requests": [request_]}, overrides=("gpus",)
    )


def test_only_exact_spellings_are_accepted() -> None:
    assert "unknown field" in denied({"mounts": [{"type": "tmpfs", "target": "/t"}]})
    assert "not supported by this agent" in denied({"Privileged": True})
    lowercase = plan({"log_config": {"type": "json-file", "config": {"max-size": "1m"}}}, ("log_config",))
    assert lowercase.spec.host_config["log_config"] == {"Type": "json-file", "Config": {"max-size": "1m"}}


# ------------------------------------------------------------------------------------------------ attack 2
def test_volume_driver_options_are_a_bind_in_disguise() -> None:
    driver = {"Name": "local", "Options": {"o": "bind", "device": "/etc", "type": "none"}}
    mount = {"Type": "volume", "Source": "etc", "Target": "/h", "VolumeOptions": {"DriverConfig": driver}}
    message = denied({"mounts": [mount]}, overrides=("volumes",))
    assert hint("volume_options") in message
    assert hint("volume_options") in denied({"volume_driver": "local"})
    (built,) = plan({"mounts": [mount]}, overrides=("volumes", "volume_options")).spec.host_config["mounts"]
    assert built["VolumeOptions"]["DriverConfig"] == driver
    plain = {"Type": "volume", "Source": "etc", "Target": "/h", "VolumeOptions": {"NoCopy": True}}
    assert plan({"mounts": [plain]}, overrides=("volumes",)).spec.host_config["mounts"][0][
        "VolumeOptions"
    ] == {"NoCopy": True}


# ------------------------------------------------------------------------------------------------ attack 3
def test_log_config_needs_its_override() -> None:
    syslog = {"Type": "syslog", "Config": {"syslog-address": "unix:///var/run/docker.sock"}}
    assert hint("log_config") in denied({"log_config": syslog})
    built = plan({"log_config": syslog}, ("log_config",)).spec.host_config["log_config"]
    assert isinstance(built, docker.types.LogConfig) and built == syslog


@pytest.mark.parametrize(
    ("value", "allowed"), [(-1, False), (-1000, False), (0, True), (500, True), (1000, True)]
)
def test_only_a_negative_oom_score_adj_needs_its_override(value: int, allowed: bool) -> None:
    if allowed:
        assert plan({"oom_score_adj": value}).spec.host_config["oom_score_adj"] == value
    else:
        assert hint("oom_score_adj") in denied({"oom_score_adj": value})
        assert plan({"oom_score_adj": value}, ("oom_score_adj",)).spec.host_config["oom_score_adj"] == value
    assert "less than or equal to 1000" in denied({"oom_score_adj": 1001})


def test_ulimits_need_their_override_and_are_built_as_ulimits() -> None:
    ulimit = {"Name": "nofile", "Soft": 1024, "Hard": 2048}
    assert hint("ulimits") in denied({"ulimits": [ulimit]})
    (built,) = plan({"ulimits": [ulimit]}, ("ulimits",)).spec.host_config["ulimits"]
    assert isinstance(built, docker.types.Ulimit) and built == ulimit
    assert "unknown field" in denied({"ulimits": [{**ulimit, "Max": 1}]}, overrides=("ulimits",))


# ------------------------------------------------------------------------------------------ attack 4, paths
@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("//var/run/docker.sock", "/var/run/docker.sock"),
        ("///var//run/./docker.sock/", "/var/run/docker.sock"),
        ("/data/../var/run", "/var/run"),
        ("/../../etc", "/etc"),
        ("/data/", "/data"),
        ("//", "/"),
    ],
)
def test_paths_are_cleaned_as_go_filepath_clean_does(path: str, cleaned: str) -> None:
    assert clean(path) == cleaned


@pytest.mark.parametrize(
    "source",
    [
        "//var/run/docker.sock",
        "/run//docker.sock",
        "/data/../var/run/docker.sock",
        "/var/run/docker.sock/",
        "//",
        "//run",
        "/var/run/",
        "/data/../var",
        "/proc/1/root",
        "/proc/self/root/var/run",
        "//proc/../proc/1/cwd",
    ],
)
def test_the_socket_and_its_directories_need_docker_socket_however_spelled(source: str) -> None:
    for host_config in (
        {"binds": [f"{source}:/s"]},
        {"mounts": [{"Type": "bind", "Source": source, "Target": "/s"}]},
    ):
        assert hint("docker_socket") in denied(host_config, paths=("/",))


def test_dot_dot_and_trailing_slashes_cannot_leave_an_allowed_root() -> None:
    assert "outside the allowed host paths" in denied({"binds": ["/data/../etc:/x"]}, paths=("/data",))
    assert "outside the allowed host paths" in denied({"binds": ["/datax:/x"]}, paths=("/data/",))
    spec = plan({"binds": ["/data//in/:/in:ro"]}, paths=("/data/",)).spec
    assert spec.host_config["volumes"] == ["/data/in:/in:ro"]


def fake_host(tmp_path: Path) -> Path:
    """A host root with /data (allowed) holding symlinks to /etc, the socket and a relative escape."""
    root = tmp_path / "host"
    for directory in ("data/real", "etc", "run", "var"):
        (root / directory).mkdir(parents=True)
    (root / "run" / "docker.sock").touch()
    (root / "var" / "run").symlink_to("../run")
    (root / "data" / "etc").symlink_to("/etc")
    (root / "data" / "sock").symlink_to("/var/run/docker.sock")
    (root / "data" / "up").symlink_to("../../../../../etc")  # `..` cannot climb above the root
    (root / "data" / "inside").symlink_to("real")
    (root / "data" / "loop").symlink_to("loop")
    return root


def test_symlinks_under_an_allowed_root_are_resolved_inside_host_root(tmp_path: Path) -> None:
    root = str(fake_host(tmp_path))
    assert resolve("/data/etc/passwd", root) == "/etc/passwd"
    assert resolve("/data/sock", root) == "/run/docker.sock"
    assert resolve("/data/up", root) == "/etc"
    assert resolve("/data/inside/x/../y", root) == "/data/real/y"  # cleaned first, as dockerd does
    assert resolve("/data/missing/deeper", root) == "/data/missing/deeper"  # checked lexically
    assert resolve("/data/etc", "") == "/data/etc"  # no HOST_ROOT: nothing to resolve against
    with pytest.raises(HostPathError, match="symbolic links"):
        resolve("/data/loop", root)
    message = denied({"binds": ["/data/etc:/x"]}, paths=("/data",), host_root=root)
    assert "/data/etc (resolves to /etc), outside the allowed host paths" in message
    assert hint("docker_socket") in denied(
        {"mounts": [{"Type": "bind", "Source": "/data/sock", "Target": "/s"}]},
        paths=("/data",),
        host_root=root,
    )
    assert "symbolic links" in denied({"binds": ["/data/loop:/x"]}, paths=("/data",), host_root=root)


def test_docker_is_given_the_resolved_path(tmp_path: Path) -> None:
    root = str(fake_host(tmp_path))
    spec = plan(
        {
            "binds": ["/data/inside:/in"],
            "mounts": [{"Type": "bind", "Source": "/data/inside/", "Target": "/m", "ReadOnly": True}],
        },
        paths=("/data",),
        host_root=root,
    ).spec
    assert spec.host_config["volumes"] == ["/data/real:/in:rw"]
    assert spec.host_config["mounts"][0]["Source"] == "/data/real"


def test_the_allowed_roots_are_not_resolved(tmp_path: Path) -> None:
    """A flow that can write /data must not widen `/data/x` by making it a symlink to `/`."""
    root = fake_host(tmp_path)
    os.symlink("/", root / "data" / "x")
    assert "outside the allowed host paths" in denied(
        {"binds": ["/data/x/etc:/e"]}, paths=("/data/x",), host_root=str(root)
    )


# ---------------------------------------------------------------------------------------------- closed model
@pytest.mark.parametrize(
    "host_config",
    [
        {"mounts": [{"Type": "bind", "Source": "/data", "Target": "/d", "Propagation": "rshared"}]},
        {"mounts": [{"Type": "volume", "Source": "v", "Target": "/d", "VolumeOptions": {"Driver": "x"}}]},
        {
            "mounts": [
                {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1, "Options": [["dev"]]}}
            ]
        },
        {"log_config": {"Type": "json-file", "Labels": {}}},
        {"device_requests": [{"Count": 1, "Drivers": "nvidia"}]},
        {"restart_policy": {"Name": "always", "Max": 1}},
        {"binds": {"/data": {"bind": "/d", "mode": "rw", "extra": 1}}},
        {"port_bindings": {"80": {"HostIp": "127.0.0.1", "HostPort": "80", "Proto": "tcp"}}},
    ],
)
def test_unknown_nested_fields_are_denied(host_config: dict[str, Any]) -> None:
    assert "unknown field" in denied(host_config, overrides=tuple(OVERRIDES), paths=("/data",))


@pytest.mark.parametrize(
    "host_config",
    [
        {"privileged": "false"},
        {"privileged": 0},
        {"init": "true"},
        {"mem_limit": True},
        {"mem_limit": [1]},
        {"pids_limit": "100"},
        {"nano_cpus": 1.5},
        {"oom_score_adj": "-500"},
        {"cap_add": "SYS_ADMIN"},
        {"binds": "/data:/d"},
        {"mounts": {"Type": "bind"}},
        {"mounts": [{"Type": "bind", "Source": "/data", "Target": "/d", "ReadOnly": "yes"}]},
        {"tmpfs": {"/t": 64}},
        {"dns": ["not-an-ip"]},
        {"extra_hosts": {"h": "nowhere"}},
        {"sysctls": ["a=b"]},
        {"security_opt": "no-new-privileges"},
        {"ulimits": [{"Name": "nofile", "Soft": "1", "Hard": 2}]},
        {"port_bindings": {"eighty": 80}},
        {"network_mode": "bad name"},
        {"mounts": [{"Type": "npipe", "Source": "x", "Target": "/x"}]},
        {"mounts": [{"Type": "tmpfs", "Source": "/etc", "Target": "/t"}]},
        {"mounts": [{"Type": "bind", "Source": "/data", "Target": "/d", "VolumeOptions": {"NoCopy": True}}]},
        {"mounts": [{"Type": "volume", "Source": "/etc", "Target": "/d"}]},
        {"binds": ["/data:/d:rw,z"]},
        {"binds": ["./rel:/d"]},
        {"binds": ["/data:relative"]},
    ],
)
def test_wrong_types_and_shapes_are_denied_never_dropped(host_config: dict[str, Any]) -> None:
    message = denied(host_config, overrides=tuple(OVERRIDES), paths=("/",))
    assert "host_config" in message and "requests" not in message  # a validation error, not an override


def test_every_known_key_has_a_handler_and_a_row_in_the_docs() -> None:
    handled = PLAIN_KEYS | set(OVERRIDE_KEYS) | set(NAMESPACE_KEYS) | set(_HANDLERS)
    assert handled == KNOWN_KEYS and set(IGNORED_KEYS) <= KNOWN_KEYS
    docs = (Path(__file__).resolve().parents[2] / "docs" / "run-options.md").read_text()
    missing = [key for key in sorted(KNOWN_KEYS) if f"| `{key}` |" not in docs]
    assert not missing, f"docs/run-options.md has no row for {missing}"
    assert not [name for name in OVERRIDES if f"`{name}`" not in docs]


def test_a_host_config_that_is_not_an_object_is_denied() -> None:
    assert parse_host_config(["privileged"])[1] == ["host_config must be an object, not list"]


# ----------------------------------------------------------------------------------------- ports, tmpfs, opts
@pytest.mark.parametrize(
    ("binding", "allowed"),
    [
        (["127.0.0.1", 8080], True),
        (["127.9.9.9", 8080], True),
        (["::1", 8080], True),
        ({"HostIp": "127.0.0.1", "HostPort": "8080"}, True),
        (["127.0.0.1"], True),
        (["0.0.0.0", 8080], False),
        (["::", 8080], False),
        (8080, False),
        ("8080", False),
        (None, False),
        ({"HostPort": "8080"}, False),
        (["192.168.1.5", 8080], False),
        ([["127.0.0.1", 1], 2], False),
    ],
)
def test_ports_are_published_on_loopback_unless_allowed(binding: Any, allowed: bool) -> None:
    host_config = {"port_bindings": {"8080/tcp": binding}}
    if allowed:
        ports = plan(host_config).spec.host_config["ports"]["8080/tcp"]
        assert all(isinstance(p, tuple) and p[0] in ("127.0.0.1", "127.9.9.9", "::1") for p in ports)
    else:
        assert hint("published_ports") in denied(host_config)
        plan(host_config, ("published_ports",))
    assert hint("published_ports") in denied({"publish_all_ports": True})
    assert "publish_all_ports" not in plan({"publish_all_ports": False}).spec.host_config


@pytest.mark.parametrize(
    ("bindings", "allowed"),
    [
        ({"8080/tcp": ["127.0.0.1", 18080]}, True),
        ({f"{8000 + i}/tcp": ["127.0.0.1", 18000 + i] for i in range(32)}, True),
        ({f"{8000 + i}/tcp": ["127.0.0.1", 18000 + i] for i in range(33)}, False),
        ({"1-65535/tcp": ["127.0.0.1", "1-65535"]}, False),
        ({"8000-8040/tcp": ["127.0.0.1", ""]}, False),
    ],
)
def test_more_than_32_loopback_ports_need_published_ports(bindings: dict[str, Any], allowed: bool) -> None:
    if allowed:
        plan({"port_bindings": bindings})
    else:
        assert hint("published_ports") in denied({"port_bindings": bindings})
        plan({"port_bindings": bindings}, ("published_ports",))


@pytest.mark.parametrize(
    "source",
    ["/var/lib/docker", "/var/lib/docker/volumes/x/_data", "/run/containerd/containerd.sock", "/run/docker",
     "/var/lib", "/run"],
)
def test_the_engines_own_files_need_docker_socket_even_inside_an_allowed_root(source: str) -> None:
    assert hint("docker_socket") in denied({"binds": [f"{source}:/e"]}, paths=("/var", "/run"))
    plan({"binds": [f"{source}:/e"]}, ("docker_socket",), paths=("/var", "/run"))


def test_the_socket_the_agent_talks_to_is_the_socket_too() -> None:
    settings = Settings(base_url="unix:///srv/engine/docker.sock", allowed_host_paths=["/srv"])
    policy = Policy.from_settings(settings)
    assert policy.reaches_daemon("/srv/engine") and policy.reaches_daemon("/srv/engine/docker.sock")
    assert not policy.reaches_daemon("/srv/data")


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ("size=64m,mode=1777,uid=1000,gid=1000,nr_inodes=1k,nr_blocks=10,noexec,nosuid,nodev", True),
        ("rw,exec", True),
        ("", True),
        ("dev", False),
        ("suid", False),
        ("size=64m,dev", False),
        ("mpol=default", False),
        ("size=lots", False),
        ("mode=999", False),
        ("uid=0=0", False),
    ],
)
def test_tmpfs_options_outside_the_safe_set_need_tmpfs_options(options: str, allowed: bool) -> None:
    for host_config in ({"tmpfs": {"/t": options}}, {"tmpfs": [f"/t:{options}"]}):
        if allowed:
            assert plan(host_config).spec.host_config["tmpfs"] == {"/t": options}
        else:
            assert hint("tmpfs_options") in denied(host_config)
            assert plan(host_config, ("tmpfs_options",)).spec.host_config["tmpfs"] == {"/t": options}


def test_tmpfs_mounts_take_only_size_and_mode() -> None:
    mount = {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1 << 20, "Mode": 0o1777}}
    (built,) = plan({"mounts": [mount]}).spec.host_config["mounts"]
    assert built == {
        "Type": "tmpfs",
        "Target": "/t",
        "Source": "",
        "ReadOnly": False,
        "TmpfsOptions": {"SizeBytes": 1 << 20, "Mode": 0o1777},
    }


@pytest.mark.parametrize(
    ("propagation", "allowed"),
    [
        ("private", True),
        ("rprivate", True),
        ("shared", False),
        ("rshared", False),
        ("slave", False),
        ("rslave", False),
    ],
)
def test_bind_propagation_other_than_private_needs_mount_propagation(propagation: str, allowed: bool) -> None:
    forms = [
        {"binds": [f"/data:/d:ro,{propagation}"]},
        {"binds": {"/data": {"bind": "/d", "propagation": propagation}}},
        {
            "mounts": [
                {
                    "Type": "bind",
                    "Source": "/data",
                    "Target": "/d",
                    "BindOptions": {"Propagation": propagation},
                }
            ]
        },
    ]
    for host_config in forms:
        if allowed:
            plan(host_config, paths=("/data",))
        else:
            assert hint("mount_propagation") in denied(host_config, paths=("/data",))
            plan(host_config, ("mount_propagation",), paths=("/data",))


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        (["no-new-privileges"], True),
        (["no-new-privileges:true"], True),
        (["no-new-privileges=true"], True),
        (["no-new-privileges:false"], False),
        (["seccomp=unconfined"], False),
        (["apparmor=unconfined"], False),
        (["label=disable"], False),
        (["no-new-privileges", "seccomp=unconfined"], False),
    ],
)
def test_security_opt_allows_only_no_new_privileges(options: list[str], allowed: bool) -> None:
    if allowed:
        assert plan({"security_opt": options}).spec.host_config["security_opt"] == options
    else:
        assert hint("security_opt") in denied({"security_opt": options})


# --------------------------------------------------------------------------------------------- what is built
def test_the_payload_holds_only_values_the_agent_built() -> None:
    mount = {
        "Type": "bind",
        "Source": "/data//in/",
        "Target": "/in/",
        "ReadOnly": True,
        "BindOptions": {"Propagation": "rprivate", "NonRecursive": True},
    }
    raw = {
        "mounts": [mount],
        "dns": ["1.1.1.1"],
        "sysctls": {"net.core.somaxconn": "1024"},
        "extra_hosts": ["db:10.0.0.5"],
        "storage_opt": {"size": "1G"},
    }
    spec = plan(raw, ("sysctls",), paths=("/data",)).spec
    (built,) = spec.host_config["mounts"]
    assert type(built) is docker.types.Mount and built is not mount
    assert built == {
        "Type": "bind",
        "Source": "/data/in",
        "Target": "/in",
        "ReadOnly": True,
        "BindOptions": {"Propagation": "rprivate", "NonRecursive": True},
    }
    assert spec.host_config["dns"] == ["1.1.1.1"] and spec.host_config["dns"] is not raw["dns"]
    assert spec.host_config["sysctls"] is not raw["sysctls"]
    assert spec.extra_hosts == {"db": "10.0.0.5", "host.docker.internal": "host-gateway"}
    seen = {id(v) for v in _walk(raw)}
    assert not [v for v in _walk(spec.host_config) if isinstance(v, dict | list) and id(v) in seen]


def _walk(value: Any) -> list[Any]:
    found = [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else []
    for item in items:
        found += _walk(item)
    return found


def test_namespaces_default_modes_are_left_to_docker() -> None:
    config = plan({"pid_mode": "private", "uts_mode": "", "ipc_mode": "shareable"}).spec.host_config
    assert "pid_mode" not in config and "uts_mode" not in config and config["ipc_mode"] == "shareable"
    assert hint("host_pid") in denied({"pid_mode": "container:other"})
    assert "not a mode Docker accepts" in denied({"uts_mode": "container:x"}, overrides=("host_uts",))


def test_the_agent_settings_go_through_the_same_typed_binds() -> None:
    with pytest.raises(ValueError):
        Settings(volumes=["/data:/d:rw,z"])
    spec = plan(None).spec
    assert "volumes" not in spec.host_config
    settings = Settings(volumes=["//srv//data/:/data:ro"], host_root="")
    run = FlowRun.model_validate(
        {"id": "r", "version": 1, "flow": {"id": "f", "name": "n", "storage": STORAGE}}
    )
    assert plan_container(run, "img:1", settings, IDENTITY).spec.host_config["volumes"] == [
        "/srv/data:/data:ro"
    ]


def test_host_root_defaults_to_what_the_agent_can_see(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agent.policy import host_paths

    monkeypatch.setattr(host_paths, "CONTAINER_MARKERS", (tmp_path / ".dockerenv",))
    assert Settings().host_root == "/"
    (tmp_path / ".dockerenv").touch()
    assert Settings().host_root == ""
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__HOST_ROOT", "/host")
    assert Settings().host_root == "/host" and Policy.from_settings(Settings()).host_root == "/host"
    with pytest.raises(ValueError):
        Settings(host_root="relative")
