"""A run's `DockerRun` config applied over the agent's options (`agent_options`), under the policy.

Precedence (docs/run-options.md): agent defaults < run config < what the flow runner needs (env, labels,
name, command: set in `agent.launch.plan`, never overridable). A run's `host_config` is first validated as
a closed model (`agent.policy.host_config`: exact keys, exact types, nothing dropped); each key is then
passed on, checked by the policy (`agent.policy.rules`), clamped to a maximum, ignored with a notice, or
denied. The create kwargs are built from the validated values alone, as fresh docker-py values: nothing of
the run's own dicts reaches Docker, so nothing the policy did not read can either.

Every value records where it came from (`Decision`), which is what `local-agent explain` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import docker.types

from agent.policy.host_config import (
    BindSpec,
    HostConfigSpec,
    HostPortSpec,
    MountSpec,
    PlacementSpec,
    TmpfsSpec,
    parse_host_config,
)
from agent.policy.host_config_types import port_key
from agent.policy.options import RUN, Decision, Options
from agent.policy.rules import (
    NANO,
    SAFE_PROPAGATIONS,
    SAFE_SECURITY_OPTS,
    Policy,
    Violations,
    human_bytes,
    is_loopback,
    unsafe_tmpfs_options,
)

MAX_LOOPBACK_PORTS = 32  # host ports a run may publish on loopback without `published_ports`
# host_config keys passed on as validated: they change the container only, never reach the host.
PLAIN_KEYS = frozenset({
    "init", "shm_size", "dns", "dns_search", "dns_opt", "read_only", "cap_drop", "mem_swappiness",
    "cpu_shares", "cpuset_cpus", "cpuset_mems", "blkio_weight", "storage_opt", "group_add", "isolation",
})
IGNORED_KEYS = {
    "auto_remove": "the agent removes flow containers itself, after reporting how they ended",
    "restart_policy": "a flow run's container must run once; Prefect retries runs itself",
}
# Keys whose mere (non-empty) presence needs an override: key -> override name.
OVERRIDE_KEYS = {
    "privileged": "privileged", "oom_kill_disable": "oom_kill_disable", "cap_add": "cap_add",
    "devices": "devices", "device_cgroup_rules": "devices", "sysctls": "sysctls", "volumes_from": "volumes",
    "links": "networks", "runtime": "runtime", "cgroup_parent": "cgroup_parent", "ulimits": "ulimits",
    "log_config": "log_config", "volume_driver": "volume_options", "device_requests": "gpus",
}
NAMESPACE_KEYS = {"pid_mode": "host_pid", "ipc_mode": "host_ipc", "uts_mode": "host_uts",
                  "userns_mode": "host_userns"}


# ------------------------------------------------------------------------------------------------ run level
Handler = Callable[[Options, Policy, Violations, str, Any], None]


def apply_run_config(options: Options, run_config: Mapping[str, Any] | None, policy: Policy) -> None:
    """Apply a `DockerRun`'s `ports` and `host_config` over the agent's options; raises `PolicyDenied`."""
    run_config = run_config or {}
    violations = Violations()
    ports = run_config.get("ports") or []
    if not isinstance(ports, list):
        violations.other(f"ports must be a list, not {type(ports).__name__}")
        ports = []
    for port in ports:
        try:
            key = port_key(port)
        except ValueError as exc:
            violations.other(f"ports: {exc}")
            continue
        options.host_config.setdefault("ports", {})[key] = []  # exposed, not published (as Prefect)
        options.decisions.append(Decision("ports", key, RUN, "exposed"))
    raw = run_config.get("host_config")
    raw = {} if raw is None else raw
    config, problems = parse_host_config(raw)
    for problem in problems:
        violations.other(problem)
    if config is not None:
        for key in raw:
            value = getattr(config, key)
            if value is not None:
                _handler(key)(options, policy, violations, key, value)
        _cpu_quota(options, policy, config)
        if config.mem_limit is not None and config.memswap_limit is None:
            limit = options.host_config.get("mem_limit")
            if limit:  # no swap unless the run asks: over its limit a flow is OOM-killed, not slowed down
                options.set("memswap_limit", limit, RUN, "follows mem_limit (no swap)")
    violations.raise_if_any()


def _handler(key: str) -> Handler:
    if key in PLAIN_KEYS:
        return _plain
    if key in OVERRIDE_KEYS:
        return _override
    if key in NAMESPACE_KEYS:
        return _namespace
    return _HANDLERS[key]  # every other key of the model has its own handler (a test checks)


def _plain(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    if value != "" or key != "isolation":
        options.set(key, _fresh(value), RUN)


def _fresh(value: Any) -> Any:
    """A copy built here of a validated plain value (lists, dicts, scalars)."""
    if isinstance(value, list):
        return [_fresh(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _fresh(v) for k, v in value.items()}
    return value


def _ignore(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    options.notices.append(f"host_config.{key} ignored: {IGNORED_KEYS[key]}")
    options.decisions.append(Decision(key, None, RUN, f"ignored: {IGNORED_KEYS[key]}"))


def _override(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    if value is False or value in ([], {}, ""):  # privileged=False, cap_add=[]: asks for nothing
        return
    if violations.need(policy, OVERRIDE_KEYS[key], f"host_config.{key}"):
        note = f"allowed by ALLOWED_RUN_OVERRIDES {OVERRIDE_KEYS[key]}"
        options.set(key, _docker_value(key, value), RUN, note)


def _docker_value(key: str, value: Any) -> Any:
    if key == "ulimits":
        return [docker.types.Ulimit(name=u.Name, soft=u.Soft, hard=u.Hard) for u in value]
    if key == "log_config":
        return docker.types.LogConfig(type=value.Type, config=dict(value.options or {}))
    if key == "device_requests":
        return [request.to_docker() for request in value]
    return _fresh(value)


def _namespace(options: Options, policy: Policy, violations: Violations, key: str, mode: str) -> None:
    """Docker's default (`""`, `private`) is left out; `host` and `container:<id>` need an override."""
    what = f"host_config.{key}={mode}"
    if mode in ("", "private") and key != "ipc_mode":
        return
    if mode == "host" or (mode.startswith("container:") and key in ("pid_mode", "ipc_mode")):
        if violations.need(policy, NAMESPACE_KEYS[key], what):
            options.set(key, mode, RUN)
    elif key == "ipc_mode" and mode in ("private", "shareable", "none"):
        options.set(key, mode, RUN)
    elif mode:
        violations.other(f"{what} is not a mode Docker accepts for {key}")


def _oom_score_adj(options: Options, policy: Policy, violations: Violations, key: str, value: int) -> None:
    """0..1000 only makes the container easier to kill; below 0 shields it at the host's expense."""
    if value >= 0 or violations.need(policy, "oom_score_adj", f"host_config.oom_score_adj={value}"):
        options.set(key, value, RUN)


def _security_opt(options: Options, policy: Policy, violations: Violations, key: str,
                  value: list[str]) -> None:
    unsafe = [option for option in value if option not in SAFE_SECURITY_OPTS]
    if unsafe and not violations.need(policy, "security_opt", f"host_config.security_opt {unsafe}"):
        return
    if value:
        options.set(key, list(value), RUN)


def _memory(options: Options, policy: Policy, violations: Violations, key: str, value: int) -> None:
    granted, note = policy.clamp(key, value, policy.max_memory, human_bytes)
    if granted < 0 and key != "memswap_limit":
        granted = 0  # -1 means "no limit"; Docker spells that 0 for memory and reservation
    options.clamp(key, value, granted, note)


def _nano_cpus(options: Options, policy: Policy, violations: Violations, key: str, value: int) -> None:
    granted, note = policy.clamp(key, value, policy.max_nano_cpus, lambda n: f"{n / NANO:g} CPUs")
    options.clamp(key, value, granted, note)


def _cpu_quota(options: Options, policy: Policy, config: HostConfigSpec) -> None:
    """`cpu_quota`/`cpu_period` become `nano_cpus`: Docker refuses both at once; one knob is clampable."""
    quota = config.cpu_quota
    if not quota or quota <= 0:
        return
    period = config.cpu_period or 100_000
    _nano_cpus(options, policy, Violations(), "nano_cpus", quota * NANO // period)


def _later(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    """Handled after the loop, once both halves are known (`_cpu_quota`)."""


def _pids(options: Options, policy: Policy, violations: Violations, key: str, value: int) -> None:
    granted, note = policy.clamp(key, value, policy.max_pids)
    options.clamp(key, value, granted, note)


def _propagation_allowed(policy: Policy, violations: Violations, propagation: str | None, what: str) -> bool:
    if propagation is None or propagation in SAFE_PROPAGATIONS:
        return True
    return violations.need(policy, "mount_propagation", f"{what} (propagation {propagation})")


def _binds(options: Options, policy: Policy, violations: Violations, key: str, value: list[BindSpec]) -> None:
    """`binds`/`volumes`: named volumes need `volumes`; host paths are judged by the policy (cleaned,
    resolved) and Docker gets the judged path."""
    for index, bind in enumerate(value):
        what = f"host_config.{key}[{index}]"
        propagation_ok = _propagation_allowed(policy, violations, bind.propagation, what)
        source = policy.judge_source(bind.source, what, violations)
        if source is not None and (":" in source or "," in source):
            violations.other(f"{what}: the host path {source!r} cannot be written in Docker's bind syntax")
            source = None
        if propagation_ok and source is not None:
            options.host_config.setdefault("volumes", []).append(bind.bind_string(source))
            options.decisions.append(Decision("volumes", bind.bind_string(source), RUN))


def _mounts(options: Options, policy: Policy, violations: Violations, key: str,
            value: list[MountSpec]) -> None:
    for index, mount in enumerate(value):
        what = f"host_config.mounts[{index}]"
        propagation = mount.BindOptions.Propagation if mount.BindOptions else None
        ok = _propagation_allowed(policy, violations, propagation, what)
        if mount.VolumeOptions is not None and mount.VolumeOptions.DriverConfig is not None:
            ok = violations.need(policy, "volume_options", f"{what} (VolumeOptions.DriverConfig)") and ok
        source = None
        if mount.Type != "tmpfs":
            source = policy.judge_source(mount.Source or "", what, violations)
            ok = ok and source is not None
        if ok:
            built = mount.to_docker(source)
            options.host_config.setdefault("mounts", []).append(built)
            options.decisions.append(Decision("mounts", dict(built), RUN))


def _tmpfs(options: Options, policy: Policy, violations: Violations, key: str,
           value: list[TmpfsSpec]) -> None:
    for spec in value:
        what = f"host_config.tmpfs {spec.target}"
        unsafe = unsafe_tmpfs_options(spec.options)
        if spec.target in options.host_config.get("tmpfs", {}):
            violations.other(f"{what} is given twice")
        elif not unsafe or violations.need(policy, "tmpfs_options", f"{what} (options {','.join(unsafe)})"):
            options.host_config.setdefault("tmpfs", {})[spec.target] = ",".join(spec.options)
            options.decisions.append(Decision("tmpfs", f"{spec.target}:{','.join(spec.options)}", RUN))


def _network_mode(options: Options, policy: Policy, violations: Violations, key: str, mode: str) -> None:
    """`bridge`/`none` are the run's to choose; `host` and named networks or containers need overrides."""
    if mode == "host":
        allowed = violations.need(policy, "host_network", "host_config.network_mode=host")
    else:
        allowed = mode in ("none", "bridge", "default") or violations.need(
            policy, "networks", f"host_config.network_mode={mode}")
    if not allowed:
        return
    options.host_config.pop("network_mode", None)
    options.networks = []
    if mode in ("host", "none", "bridge", "default") or mode.startswith("container:"):
        options.set("network_mode", mode, RUN)
        if mode not in ("bridge", "default"):
            options.extra_hosts = {}  # Docker refuses host mappings in these modes
    else:
        options.networks = [mode]
        options.decisions.append(Decision("networks", [mode], RUN))


def _span(ports: str) -> int:
    """How many ports `8080` or `8000-8099` names (an empty host port: one, chosen by Docker)."""
    low, _, high = ports.partition("/")[0].partition("-")
    return max(1, int(high) - int(low) + 1) if high and low else 1


def _ports(options: Options, policy: Policy, violations: Violations, key: str,
           value: dict[str, list[HostPortSpec]]) -> None:
    """Published on loopback by default; any other address (or none: every interface) needs an override,
    and so do more than `MAX_LOOPBACK_PORTS` host ports (each one a listening proxy on the host)."""
    count = sum(max(_span(port), _span(b.HostPort)) for port, bindings in value.items() for b in bindings)
    if count > MAX_LOOPBACK_PORTS and not violations.need(
            policy, "published_ports", f"host_config.port_bindings ({count} host ports, "
                                       f"more than {MAX_LOOPBACK_PORTS})"):
        return
    for port, bindings in value.items():
        built: list[tuple[str, int | str]] = []
        for binding in bindings:
            where = binding.HostIp or "all interfaces"
            if is_loopback(binding.HostIp) or violations.need(
                    policy, "published_ports", f"host_config.port_bindings {port} on {where}"):
                host_port = binding.HostPort
                built.append((binding.HostIp, int(host_port) if host_port.isdigit() else host_port))
        options.host_config.setdefault("ports", {})[port] = built
        options.decisions.append(Decision("ports", f"{port} -> {built}", RUN, "published"))


def _publish_all(options: Options, policy: Policy, violations: Violations, key: str, value: bool) -> None:
    if value and violations.need(policy, "published_ports", "host_config.publish_all_ports"):
        options.set(key, True, RUN)


def _extra_hosts(options: Options, policy: Policy, violations: Violations, key: str,
                 value: dict[str, str]) -> None:
    hosts = dict(value)
    options.extra_hosts = {**hosts, **options.extra_hosts}  # the agent's host-gateway mapping wins
    options.decisions.append(Decision("extra_hosts", hosts, RUN))


def _placement(options: Options, policy: Policy, violations: Violations, key: str,
               value: PlacementSpec) -> None:
    """Swarm placement: the run's constraints join the agent's (Swarm needs all), so they only narrow it."""
    if policy.engine != "swarm":
        violations.other("host_config.placement places a Swarm service, and this agent runs flows as "
                         "containers on one Docker host (ENGINE=docker): remove it, or run the flow on an "
                         "agent with ENGINE=swarm")
        return
    placement = {name: [item.strip() for item in items]
                 for name, items in (("constraints", value.constraints), ("preferences", value.preferences))
                 if items}
    if placement:
        options.set("placement", placement, RUN, "added to the agent's SWARM_CONSTRAINTS/SWARM_PREFERENCES")


_HANDLERS: dict[str, Handler] = {
    "auto_remove": _ignore, "restart_policy": _ignore,
    "mem_limit": _memory, "memswap_limit": _memory, "mem_reservation": _memory,
    "nano_cpus": _nano_cpus, "cpu_quota": _later, "cpu_period": _later,
    "pids_limit": _pids, "binds": _binds, "volumes": _binds, "mounts": _mounts, "tmpfs": _tmpfs,
    "network_mode": _network_mode, "port_bindings": _ports, "publish_all_ports": _publish_all,
    "extra_hosts": _extra_hosts, "oom_score_adj": _oom_score_adj, "security_opt": _security_opt,
    "placement": _placement,
}
