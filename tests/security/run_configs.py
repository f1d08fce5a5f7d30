"""Whole hostile `DockerRun` run configs: a `host_config` around one key in focus, built from `strategies`.

Every key docker-py's `create_host_config` takes that matters here, a few it does not take (which the
daemon would, under their Engine names), each with hostile values, sometimes the wrong type, sometimes
written twice in two spellings.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from tests.security.strategies import (
    JUNK,
    ONE_IN,
    VOLUME_PREFIX,
    binds,
    device_requests,
    log_config,
    mount,
    port_bindings,
    respelling,
    spelling,
    tmpfs,
    ulimits,
)


def _modes(*extra: str) -> SearchStrategy[Any]:
    return (
        st.sampled_from(["host", "Host", "HOST", "container:lasec-none", "private", "", *extra]) | st.none()
    )


def _memory() -> SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(["64m", "4g", "1G", "512M", "-1", "0", "lots", "1k"]), st.integers(-1, 1 << 33)
    )


HOST_CONFIG: dict[str, SearchStrategy[Any]] = {
    "privileged": st.sampled_from([True, False, "true", 1, 0, None]),
    "cap_add": st.lists(st.sampled_from(["SYS_ADMIN", "ALL", "CAP_NET_ADMIN", "sys_ptrace"]), max_size=2),
    "cap_drop": st.just(["ALL"]),
    "network_mode": _modes("bridge", "none", "default", "lasec-net"),
    "pid_mode": _modes(),
    "ipc_mode": _modes("shareable", "none"),
    "uts_mode": _modes(),
    "userns_mode": _modes(),
    "devices": st.lists(st.sampled_from(["/dev/sda:/dev/sda:rwm", "/dev/null", "/dev/kmsg"]), max_size=2),
    "device_cgroup_rules": st.lists(st.sampled_from(["a *:* rwm", "c 1:3 r"]), max_size=1),
    "device_requests": device_requests(),
    "binds": binds(),
    "volumes": binds(),
    "mounts": st.lists(mount(), min_size=1, max_size=2),
    "tmpfs": tmpfs(),
    "log_config": log_config(),
    "oom_score_adj": st.one_of(st.integers(-1000, 1000), st.sampled_from(["-500", "10"])),
    "oom_kill_disable": st.booleans(),
    "security_opt": st.lists(
        st.sampled_from(
            [
                "seccomp=unconfined",
                "apparmor=unconfined",
                "no-new-privileges",
                "label=disable",
                "no-new-privileges:true",
            ]
        ),
        max_size=2,
    ),
    "sysctls": st.dictionaries(
        st.sampled_from(["net.ipv4.ip_forward", "kernel.shm_rmid_forced"]),
        st.sampled_from(["1", "0"]),
        max_size=1,
    ),
    "ulimits": ulimits(),
    "port_bindings": port_bindings(),
    "publish_all_ports": st.booleans(),
    "runtime": st.sampled_from(["runc", "io.containerd.runc.v2", "nvidia", ""]),
    "cgroup_parent": st.sampled_from(["", "/", "system.slice", "lasec"]),
    "volumes_from": st.lists(st.just(f"{VOLUME_PREFIX}ctr"), max_size=1),
    "links": st.one_of(st.just([f"{VOLUME_PREFIX}ctr:db"]), st.just({f"{VOLUME_PREFIX}ctr": "db"})),
    "mem_limit": _memory(),
    "memswap_limit": _memory(),
    "mem_reservation": _memory(),
    "nano_cpus": st.one_of(st.integers(-1, 8 * 10**9), st.just("2000000000")),
    "cpu_quota": st.one_of(st.integers(-1, 800_000), st.just("400000")),
    "cpu_period": st.sampled_from([100_000, 50_000, 1000, 0, "100000"]),
    "pids_limit": st.one_of(st.integers(-1, 100_000), st.just("64")),
    "init": st.booleans(),
    "shm_size": st.sampled_from(["64m", 1 << 20, "2g"]),
    "read_only": st.booleans(),
    "extra_hosts": st.just({"db": "10.0.0.2"}),
    "auto_remove": st.booleans(),
    "restart_policy": st.just({"Name": "always"}),
    "storage_opt": st.just({"size": "1G"}),
    # not docker-py keyword names: the daemon would take them, a policy that passes them on must not
    "volume_driver": st.just("local"),
    "cgroupns": st.just("host"),
    "Privileged": st.just(True),
    "NetworkMode": st.just("host"),
    "Binds": st.just(["/:/h"]),
}


UNKNOWN_KEYS = ("volume_driver", "cgroupns", "Privileged", "NetworkMode", "Binds")
KNOWN_KEYS = tuple(sorted(set(HOST_CONFIG) - set(UNKNOWN_KEYS)))
_ANY_KEY = st.sampled_from(sorted(HOST_CONFIG))
_PORTS = st.lists(st.sampled_from([8080, "9000/udp", "x"]), max_size=2) | JUNK


@st.composite
def _host_config(draw: st.DrawFn, focus: SearchStrategy[str]) -> dict[str, Any]:
    """One key in focus, often alone (so that configs pass the policy and reach the daemon), sometimes with
    a few more, the same key again in another spelling, or a key docker-py does not know."""
    names = [draw(focus)]
    while len(names) < 5 and draw(ONE_IN[3]) == 0:
        names.append(draw(_ANY_KEY))
    pairs = [
        (
            draw(spelling(name)) if draw(ONE_IN[8]) == 0 else name,
            draw(HOST_CONFIG[name] if draw(ONE_IN[12]) else JUNK),
        )
        for name in names
    ]
    if draw(ONE_IN[6]) == 0:  # the same key again, later, in another spelling
        index = draw(st.integers(0, len(pairs) - 1))
        pairs.append((draw(respelling(pairs[index][0])), draw(HOST_CONFIG[names[index]])))
    return dict(pairs)


@st.composite
def _run_config(draw: st.DrawFn, host_config: SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = {"type": "DockerRun", "host_config": draw(host_config)}
    if draw(ONE_IN[8]) == 0:
        config["ports"] = draw(_PORTS)
    return config


_RUN_CONFIGS: dict[tuple[str, ...], SearchStrategy[dict[str, Any]]] = {}


def run_config(focus: tuple[str, ...] = KNOWN_KEYS) -> SearchStrategy[dict[str, Any]]:
    """A whole `DockerRun` run config as the backend stores it; `focus`: the keys each config is built
    around (the ones a policy under test allows something of), others join at random."""
    if focus not in _RUN_CONFIGS:
        _RUN_CONFIGS[focus] = _run_config(_host_config(st.sampled_from(focus)))
    return _RUN_CONFIGS[focus]
