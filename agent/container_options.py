"""Agent settings plus a run's `DockerRun` config, turned into `ContainerSpec` fields under the policy.

Precedence (docs/run-options.md): agent defaults < run config < what the flow runner needs (env, labels,
name, command: set in `launcher`, never overridable). Run-config keys are the docker-py `create_host_config`
names Prefect's `DockerRun.host_config` documents (`binds`, `port_bindings`, `mem_limit`, ...); each is
either passed on, checked by the policy (`agent.policy`), clamped to a maximum, ignored with a notice, or
denied. Unknown keys are denied: passing on what nobody reviewed is how `privileged` slipped through before.

Every value records where it came from (`Decision`), which is what `local-agent explain` prints.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from docker.types import DeviceRequest

from agent.policy import NANO, SOCKET_DIRS, SOCKET_PATHS, Policy, Violations, human_bytes, parse_memory

if TYPE_CHECKING:
    from agent.settings import Settings

HOST_GATEWAY = {"host.docker.internal": "host-gateway"}  # Docker >= 20.10 resolves it to the host (Linux too)
NETWORK_MODES = ("host", "none")  # agent-level network names that are modes, not networks to join
AGENT, RUN, CLAMP, DEFAULT = "agent setting", "run config", "policy clamp", "agent default"
# host_config keys passed on as given: they change the container only, never reach the host.
SAFE_KEYS = frozenset({
    "init", "shm_size", "tmpfs", "ulimits", "dns", "dns_search", "dns_opt", "read_only", "cap_drop",
    "oom_score_adj", "log_config", "mem_swappiness", "cpu_shares", "cpuset_cpus", "cpuset_mems",
    "blkio_weight", "storage_opt", "group_add", "publish_all_ports", "isolation",
})
IGNORED_KEYS = {
    "auto_remove": "the agent removes flow containers itself, after reporting how they ended",
    "restart_policy": "a flow run's container must run once; Prefect retries runs itself",
}
# Keys whose mere (non-empty) presence needs an override: key -> override name.
OVERRIDE_KEYS = {
    "privileged": "privileged", "oom_kill_disable": "oom_kill_disable", "cap_add": "cap_add",
    "devices": "devices", "device_cgroup_rules": "devices", "security_opt": "security_opt",
    "sysctls": "sysctls", "volumes_from": "volumes", "links": "networks", "runtime": "runtime",
    "cgroup_parent": "cgroup_parent",
}
NAMESPACE_KEYS = {"pid_mode": "host_pid", "ipc_mode": "host_ipc", "uts_mode": "host_uts",
                  "userns_mode": "host_userns"}
SAFE_NAMESPACE_VALUES = frozenset({"", "private", "shareable", "none"})


@dataclass(frozen=True)
class Decision:
    """One field of the container, its value and where it came from (for `explain` and debug logs)."""

    field: str
    value: Any
    source: str
    note: str = ""


@dataclass
class Options:
    """The `ContainerSpec` fields this module owns, built up by agent defaults then the run config."""

    host_config: dict[str, Any] = field(default_factory=dict)
    networks: list[str] = field(default_factory=list)
    extra_hosts: dict[str, str] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # for the run's log: clamps and ignored keys
    named_volumes: list[str] = field(default_factory=list)  # agent-level, created with the agent's labels

    def set(self, key: str, value: Any, source: str, note: str = "") -> None:
        self.host_config[key] = value
        self.decisions.append(Decision(key, value, source, note))

    def clamp(self, key: str, requested: Any, granted: Any, note: str | None) -> None:
        """The run's request, then (above the maximum) the policy's clamp, both visible in `explain`."""
        self.set(key, requested, RUN)
        if note:
            self.set(key, granted, CLAMP, note)
            self.notices.append(note)
        self.host_config[key] = granted


def env_of(name: str) -> str:
    return f"PREFECT__CLOUD__AGENT__{name.upper()}"


# ------------------------------------------------------------------------------------------------ parsers
@dataclass(frozen=True)
class Volume:
    source: str
    target: str
    mode: str = "rw"

    @property
    def named(self) -> bool:
        return not self.source.startswith(("/", ".", "~"))

    def bind(self) -> str:
        return f"{self.source}:{self.target}:{self.mode}"


def parse_volume(spec: str) -> Volume:
    """`host-path-or-volume:container-path[:ro|rw]`, Docker's `-v` syntax."""
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ValueError(f"invalid volume {spec!r}: use SOURCE:TARGET[:ro|rw]")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ValueError(f"invalid volume {spec!r}: the mode must be ro or rw, not {mode!r}")
    if not parts[1].startswith("/"):
        raise ValueError(f"invalid volume {spec!r}: the container path must be absolute")
    if parts[0].startswith((".", "~")):
        raise ValueError(f"invalid volume {spec!r}: host paths must be absolute (the daemon resolves them)")
    return Volume(parts[0], parts[1], mode)


def parse_gpus(spec: str) -> DeviceRequest:
    """Docker's `--gpus`: `all`, a count (`2`) or device ids (`device=0,1` or `GPU-3a2...`)."""
    text = spec.strip()
    if text == "all":
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    if text.isdigit() and int(text) > 0:
        return DeviceRequest(count=int(text), capabilities=[["gpu"]])
    ids = [part.strip() for part in text.removeprefix("device=").split(",") if part.strip()]
    if not ids or text.isdigit():
        raise ValueError(f"invalid gpus {spec!r}: use all, a positive count, or device=ID[,ID...]")
    return DeviceRequest(device_ids=ids, capabilities=[["gpu"]])


def device_request(value: Any) -> DeviceRequest:
    """A run config's device request: docker-py kwargs (`count`) or its serialized JSON form (`Count`)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"invalid device request {value!r}")
    names = {"driver": "Driver", "count": "Count", "device_ids": "DeviceIDs", "capabilities": "Capabilities",
             "options": "Options"}
    return DeviceRequest(**{k: value[k] if k in value else value.get(v) for k, v in names.items()})


# ------------------------------------------------------------------------------------------------ agent level
def agent_options(settings: Settings, networks: list[str]) -> Options:
    """The operator's defaults for every flow container (all trusted: the policy governs run configs)."""
    options = Options()
    _agent_network(options, settings, networks)
    for spec in settings.volumes:
        volume = parse_volume(spec)
        options.host_config.setdefault("volumes", []).append(volume.bind())
        options.decisions.append(Decision("volumes", volume.bind(), AGENT, env_of("volumes")))
        if volume.named:
            options.named_volumes.append(volume.source)
    _agent_limits(options, settings)
    if settings.init:  # tini as PID 1: a cancellation's SIGTERM reaches `prefect`, which has no handler
        options.set("init", True, AGENT, env_of("init"))
    if settings.gpus:
        options.set("device_requests", [parse_gpus(settings.gpus)], AGENT, env_of("gpus"))
    if settings.runtime:
        options.set("runtime", settings.runtime, AGENT, env_of("runtime"))
    return options


def _agent_network(options: Options, settings: Settings, networks: list[str]) -> None:
    if networks and networks[0] in NETWORK_MODES:
        options.set("network_mode", networks[0], AGENT, env_of("network"))
    elif networks:
        options.networks = list(networks)
        options.decisions.append(Decision("networks", list(networks), AGENT, env_of("network")))
    else:
        options.decisions.append(Decision("networks", ["bridge"], DEFAULT, "Docker's default bridge"))
    if settings.host_gateway and not networks[:1] == ["host"]:
        options.extra_hosts = dict(HOST_GATEWAY)
        options.decisions.append(Decision("extra_hosts", dict(HOST_GATEWAY), AGENT, env_of("host_gateway")))


def _agent_limits(options: Options, settings: Settings) -> None:
    """Defaults, or the maximum when there is no default: a maximum bounds every container, not only runs
    that ask. Swap equals memory, so a flow over its limit is OOM-killed instead of swapping slowly."""
    memory = settings.memory or settings.max_memory
    if memory:
        source = env_of("memory" if settings.memory else "max_memory")
        options.set("mem_limit", parse_memory(memory), AGENT, source)
        options.set("memswap_limit", parse_memory(memory), AGENT, f"{source} (no swap)")
    cpus = settings.cpus or settings.max_cpus
    if cpus:
        options.set("nano_cpus", int(cpus * NANO), AGENT, env_of("cpus" if settings.cpus else "max_cpus"))
    pids = settings.pids_limit or settings.max_pids_limit
    if pids:
        source = env_of("pids_limit" if settings.pids_limit else "max_pids_limit")
        options.set("pids_limit", pids, AGENT, source)


# ------------------------------------------------------------------------------------------------ run level
def apply_run_config(options: Options, run_config: Mapping[str, Any] | None, policy: Policy) -> None:
    """Apply a `DockerRun`'s `ports` and `host_config` over the agent's options; raises `PolicyDenied`."""
    run_config = run_config or {}
    violations = Violations()
    for port in run_config.get("ports") or []:
        options.host_config.setdefault("ports", {})[str(port)] = []  # exposed, not published (as Prefect)
        options.decisions.append(Decision("ports", str(port), RUN, "exposed"))
    host_config = run_config.get("host_config") or {}
    if not isinstance(host_config, Mapping):
        violations.other(f"host_config must be an object, not {type(host_config).__name__}")
        host_config = {}
    unknown = []
    for key, value in host_config.items():
        handler = _handler(key)
        if handler is None:
            unknown.append(key)
            continue
        try:
            handler(options, policy, violations, key, value)
        except (ValueError, TypeError) as exc:
            violations.other(f"host_config.{key}: {exc}")
    if unknown:
        violations.other(f"host_config key(s) {unknown} are not supported by this agent "
                         "(docs/run-options.md lists the keys it knows)")
    _cpu_quota(options, policy, host_config)
    if "mem_limit" in host_config and "memswap_limit" not in host_config:
        limit = options.host_config.get("mem_limit")
        if limit:  # no swap unless the run asks: a flow over its limit is OOM-killed, not slowed to a crawl
            options.set("memswap_limit", limit, RUN, "follows mem_limit (no swap)")
    violations.raise_if_any()


def _handler(key: str) -> Callable[[Options, Policy, Violations, str, Any], None] | None:
    if key in SAFE_KEYS:
        return _pass
    if key in OVERRIDE_KEYS:
        return _override
    if key in NAMESPACE_KEYS:
        return _namespace
    return _HANDLERS.get(key)


def _pass(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    options.set(key, value, RUN)


def _ignore(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    options.notices.append(f"host_config.{key} ignored: {IGNORED_KEYS[key]}")
    options.decisions.append(Decision(key, None, RUN, f"ignored: {IGNORED_KEYS[key]}"))


def _override(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    if not value:  # privileged=False, cap_add=[]: asks for nothing
        return
    if violations.need(policy, OVERRIDE_KEYS[key], f"host_config.{key}"):
        options.set(key, value, RUN, f"allowed by ALLOWED_RUN_OVERRIDES {OVERRIDE_KEYS[key]}")


def _namespace(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    mode = str(value or "")
    what = f"host_config.{key}={mode}"
    if mode and (mode in SAFE_NAMESPACE_VALUES or violations.need(policy, NAMESPACE_KEYS[key], what)):
        options.set(key, mode, RUN)


def _memory(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    requested = -1 if value in (-1, "-1") else parse_memory(value)
    granted, note = policy.clamp(key, requested, policy.max_memory, human_bytes)
    if granted < 0 and key != "memswap_limit":
        granted = 0  # -1 means "no limit"; Docker spells that 0 for memory and reservation
    options.clamp(key, value, granted, note)


def _nano_cpus(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    granted, note = policy.clamp(key, int(value), policy.max_nano_cpus, lambda n: f"{n / NANO:g} CPUs")
    options.clamp(key, int(value), granted, note)


def _cpu_quota(options: Options, policy: Policy, host_config: Mapping[str, Any]) -> None:
    """`cpu_quota`/`cpu_period` become `nano_cpus`: Docker refuses both at once; one knob is clampable."""
    quota = host_config.get("cpu_quota")
    if not quota or int(quota) <= 0:
        return
    period = int(host_config.get("cpu_period") or 100_000)
    _nano_cpus(options, policy, Violations(), "nano_cpus", int(quota) * NANO // period)


def _later(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    """Handled after the loop, once both halves are known (`_cpu_quota`)."""


def _pids(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    granted, note = policy.clamp(key, int(value), policy.max_pids)
    options.clamp(key, int(value), granted, note)


def _binds(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    """`binds`/`volumes`: a list of `src:dst[:mode]` or a dict `{src: dst}` / `{src: {bind, mode}}`."""
    if isinstance(value, Mapping):
        entries = [_bind_from_dict(src, spec) for src, spec in value.items()]
    elif isinstance(value, list | tuple):
        entries = [parse_volume(str(i)) if str(i).startswith("/") else _named(str(i)) for i in value]
    else:
        raise ValueError(f"expected a list or an object, got {type(value).__name__}")
    for volume in entries:
        if _source_allowed(policy, violations, volume.source, f"host_config.{key}"):
            options.host_config.setdefault("volumes", []).append(volume.bind())
            options.decisions.append(Decision("volumes", volume.bind(), RUN))


def _bind_from_dict(source: str, spec: Any) -> Volume:
    if isinstance(spec, Mapping):
        mode = "ro" if spec.get("ro") or spec.get("mode") == "ro" else "rw"
        return Volume(str(source), str(spec.get("bind")), mode)
    return Volume(str(source), str(spec))


def _named(spec: str) -> Volume:
    name, _, rest = spec.partition(":")
    target, _, mode = rest.partition(":")
    return Volume(name, target, mode or "rw")


def _source_allowed(policy: Policy, violations: Violations, source: str, what: str) -> bool:
    """Named volumes need `volumes`; the socket needs `docker_socket`; host paths the allow-list."""
    if not source.startswith(("/", ".", "~")):
        return violations.need(policy, "volumes", f"{what} (volume {source!r})")
    path = posixpath.normpath(source) if source.startswith("/") else source
    if path in SOCKET_PATHS:
        return violations.need(policy, "docker_socket", f"{what} ({path})")
    allowed = violations.host_path(policy, source, what)
    if path in SOCKET_DIRS:
        allowed = violations.need(policy, "docker_socket", f"{what} ({path})") and allowed
    return allowed


def _mounts(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    for mount in value or []:
        if not isinstance(mount, Mapping):
            raise ValueError(f"expected mount objects, got {mount!r}")
        kind = str(mount.get("Type") or mount.get("type") or "volume")
        source = str(mount.get("Source") or mount.get("source") or "")
        ok = kind == "tmpfs" or (kind in ("bind", "volume") and source
                                 and _source_allowed(policy, violations, source, "host_config.mounts"))
        if kind not in ("bind", "volume", "tmpfs") or (kind != "tmpfs" and not source):
            violations.other(f"host_config.mounts: unsupported mount {dict(mount)!r}")
        elif ok:
            options.host_config.setdefault("mounts", []).append(dict(mount))
            options.decisions.append(Decision("mounts", dict(mount), RUN))


def _network_mode(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    """`bridge`/`none` are the run's to choose; `host` and named networks or containers need overrides."""
    mode = str(value)
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


def _device_requests(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    if value and violations.need(policy, "gpus", "host_config.device_requests"):
        options.set(key, [device_request(item) for item in value], RUN)


def _ports(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ValueError("expected an object {container_port: host_port}")
    for port, binding in value.items():
        options.host_config.setdefault("ports", {})[str(port)] = binding
        options.decisions.append(Decision("ports", f"{port} -> {binding}", RUN, "published"))


def _extra_hosts(options: Options, policy: Policy, violations: Violations, key: str, value: Any) -> None:
    hosts = dict(value) if isinstance(value, Mapping) else dict(str(h).split(":", 1) for h in value)
    options.extra_hosts = {**hosts, **options.extra_hosts}  # the agent's host-gateway mapping wins
    options.decisions.append(Decision("extra_hosts", hosts, RUN))


_HANDLERS: dict[str, Callable[[Options, Policy, Violations, str, Any], None]] = {
    "auto_remove": _ignore, "restart_policy": _ignore,
    "mem_limit": _memory, "memswap_limit": _memory, "mem_reservation": _memory,
    "nano_cpus": _nano_cpus, "cpu_quota": _later, "cpu_period": _later,
    "pids_limit": _pids, "binds": _binds, "volumes": _binds, "mounts": _mounts,
    "network_mode": _network_mode, "device_requests": _device_requests, "port_bindings": _ports,
    "extra_hosts": _extra_hosts,
}
