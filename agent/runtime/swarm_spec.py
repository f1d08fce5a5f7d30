"""A run's `ContainerSpec` as a Swarm service: the keyword arguments of docker-py's `create_service`.

The spec was planned for `containers.create` (`agent.launch.plan`, under the policy), so every host_config
key it can carry is either translated into its service equivalent or refused here, by name: a service that
silently lacked a limit, a mount or a capability the run was granted would run something else than what was
planned. Refusals are `ContainerCreateError(transient=False)`: the run fails with the reason, never retried.

A flow run is a `replicated-job` (one completion, one at a time) with restart condition `none`: Prefect
retries runs itself, and a second task of the same run would run the flow twice. `spec.command` becomes the
task's `Args` (Docker's CMD), never `Command`, which would replace the image's ENTRYPOINT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import docker.errors
import docker.types
import docker.utils

from agent.runtime.docker_types import ContainerCreateError, ContainerSpec
from agent.runtime.swarm_types import IMAGE_LABEL, SwarmOptions

NANO = 1_000_000_000
# host_config keys a service cannot express, and why (the run's refusal says so).
UNSUPPORTED = {
    "privileged": "services cannot run privileged containers",
    "devices": "services cannot map host devices",
    "device_cgroup_rules": "services cannot set device cgroup rules",
    "runtime": "services run on each node's default OCI runtime",
    "pid_mode": "services cannot share a PID namespace", "ipc_mode": "services cannot set an IPC mode",
    "uts_mode": "services cannot share the UTS namespace",
    "userns_mode": "services cannot choose a user namespace mode",
    "network_mode": "services join swarm networks, not a network mode (set NETWORK to an attachable "
                    "overlay, or leave it unset for SWARM_NETWORK)",
    "shm_size": "services cannot size /dev/shm", "links": "services have no container links",
    "volumes_from": "services cannot mount another container's volumes",
    "cgroup_parent": "services cannot choose a cgroup parent",
    "volume_driver": "services name a volume driver per mount (host_config.mounts), not per container",
    "publish_all_ports": "services publish ports on every node's ingress, not on one host",
    "port_bindings": "services publish ports on every node's ingress, not on one host address",
    "oom_kill_disable": "services cannot disable the OOM killer",
    "oom_score_adj": "services cannot adjust the OOM score",
    "cpu_shares": "services have no CPU shares (use nano_cpus)",
    "cpuset_cpus": "services cannot pin CPUs", "cpuset_mems": "services cannot pin memory nodes",
    "blkio_weight": "services have no block-IO weight", "mem_swappiness": "services cannot tune swappiness",
    "storage_opt": "services have no storage options", "security_opt": "services cannot set security options",
    "memswap_limit": "services have no swap limit (only one equal to mem_limit, i.e. no extra swap, is "
                     "accepted)",
    "cpu_quota": "services have no CPU quota (use nano_cpus)", "cpu_period": "services have no CPU period",
    "auto_remove": "the agent removes services itself", "restart_policy": "a flow run's task runs once",
}
TMPFS_DEFAULTS = frozenset({"rw", "noexec", "nosuid", "nodev"})  # what a service's tmpfs mounts get anyway


class _Refusals:
    """Every key a service cannot grant, gathered so the run's error names them all at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.found: list[str] = []

    def add(self, key: str, why: str) -> None:
        self.found.append(f"host_config.{key} ({why})")

    def raise_if_any(self) -> None:
        if self.found:
            raise ContainerCreateError(
                f"Swarm cannot grant {', '.join(self.found)} to flow run service {self.name}: remove "
                "it from the run config or the agent's settings, or run this agent with ENGINE=docker",
                transient=False)


def service_networks(spec: ContainerSpec, options: SwarmOptions) -> list[str]:
    """The run's networks (attachable overlays), else the agent's flow network, else none."""
    if spec.networks:
        return list(spec.networks)
    return [options.network] if options.network else []


def service_spec(spec: ContainerSpec, options: SwarmOptions, image: str) -> dict[str, Any]:
    """`create_service` kwargs for `spec`, running `image` (the reference pinned by the runtime)."""
    config = dict(spec.host_config)
    refusals = _Refusals(spec.name)
    container: dict[str, Any] = {}
    mounts = _mounts(config, refusals)
    resources = _resources(config, options, refusals)
    log_driver = _log_driver(config.pop("log_config", None))
    _ports(config.pop("ports", None), refusals)
    for key, value in list(config.items()):
        handler = _CONTAINER_KEYS.get(key)
        if handler is not None:
            handler(container, value)
        elif key not in _HANDLED:
            refusals.add(key, UNSUPPORTED.get(key, "the swarm engine does not know this key"))
    refusals.raise_if_any()
    hosts = {**(config.get("extra_hosts") or {}), **spec.extra_hosts}
    container_spec = docker.types.ContainerSpec(
        image=image, args=list(spec.command) or None, env=dict(spec.environment), labels=dict(spec.labels),
        hosts=hosts or None, mounts=mounts or None, stop_grace_period=int(options.stop_grace * NANO),
        **container)
    if config.get("ulimits"):
        container_spec["Ulimits"] = [{"Name": u["Name"], "Soft": u["Soft"], "Hard": u["Hard"]}
                                     for u in config["ulimits"]]
    placement = _placement(options, config.get("placement") or {})
    template = docker.types.TaskTemplate(
        container_spec, resources=resources or None, restart_policy=docker.types.RestartPolicy("none"),
        placement=placement or None, log_driver=log_driver, networks=service_networks(spec, options) or None)
    return {
        "task_template": template, "name": spec.name, "labels": {**spec.labels, IMAGE_LABEL: spec.image},
        "mode": docker.types.ServiceMode("replicated-job", replicas=1, concurrency=1),
    }


# ------------------------------------------------------------------------------------------------ keys
def _placement(options: SwarmOptions, run: Mapping[str, list[str]]) -> docker.types.Placement:
    """The agent's constraints and preferences, then the run's (policy-checked): Swarm requires every
    constraint, so a run's own can only narrow where it may go."""
    constraints = list(dict.fromkeys([*options.constraints, *run.get("constraints", [])]))
    preferences = list(dict.fromkeys([*options.preferences, *run.get("preferences", [])]))
    return docker.types.Placement(constraints=constraints or None,
                                  preferences=[("spread", d) for d in preferences] or None)


def _dns(container: dict[str, Any], key: str, value: list[str]) -> None:
    config = container.setdefault("dns_config", docker.types.DNSConfig())
    config[{"dns": "Nameservers", "dns_search": "Search", "dns_opt": "Options"}[key]] = list(value)


def _set(name: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[dict[str, Any], Any], None]:
    def handler(container: dict[str, Any], value: Any) -> None:
        container[name] = convert(value)
    return handler


def _dns_key(key: str) -> Callable[[dict[str, Any], Any], None]:
    return lambda container, value: _dns(container, key, value)


_CONTAINER_KEYS: dict[str, Callable[[dict[str, Any], Any], None]] = {
    "init": _set("init", bool), "read_only": _set("read_only", bool),
    "group_add": _set("groups", lambda v: [str(g) for g in v]),
    "cap_add": _set("cap_add", list), "cap_drop": _set("cap_drop", list),
    "sysctls": _set("sysctls", dict),
    "isolation": _set("isolation", lambda v: v or None),
    "dns": _dns_key("dns"), "dns_search": _dns_key("dns_search"), "dns_opt": _dns_key("dns_opt"),
}
# Keys taken out of the config by their own step (and `extra_hosts`, merged with the spec's).
_HANDLED = frozenset({"extra_hosts", "ulimits", "placement"})


def _mounts(config: dict[str, Any], refusals: _Refusals) -> list[Any]:
    mounts: list[Any] = [_converted("volumes", refusals, _bind_mount, bind, refusals)
                         for bind in config.pop("volumes", None) or []]
    mounts += list(config.pop("mounts", None) or [])  # docker.types.Mount: the same in a service
    for target, text in (config.pop("tmpfs", None) or {}).items():
        mounts.append(_converted("tmpfs", refusals, _tmpfs_mount, str(target), str(text or ""), refusals))
    return [m for m in mounts if m is not None]


def _converted(key: str, refusals: _Refusals, convert: Callable[..., Any], *args: Any) -> Any:
    """`convert(*args)`, or None with a refusal naming `key` when docker-py cannot express the value (a
    named volume with a bind propagation, a tmpfs size in percent): such a run fails, it never crashes."""
    try:
        return convert(*args)
    except (docker.errors.DockerException, ValueError, TypeError) as exc:
        refusals.add(key, f"{args[0]!r}: {exc}")
        return None


def _bind_mount(bind: str, refusals: _Refusals) -> Any:
    """`SOURCE:TARGET[:ro|rw[,propagation]]` (the policy's bind strings) as a service mount."""
    parts = bind.split(":")
    if len(parts) not in (2, 3):
        refusals.add("volumes", f"{bind!r} is not SOURCE:TARGET[:OPTIONS]")
        return None
    source, target = parts[0], parts[1]
    options = parts[2].split(",") if len(parts) == 3 else []
    propagation = next((o for o in options if o not in ("ro", "rw")), None)
    return docker.types.Mount(target, source, type="bind" if source.startswith("/") else "volume",
                              read_only="ro" in options, propagation=propagation)


def _tmpfs_mount(target: str, text: str, refusals: _Refusals) -> Any:
    size, mode, read_only = None, None, False
    for option in filter(None, text.split(",")):
        name, _, value = option.partition("=")
        if name == "size" and value.endswith("%"):
            refusals.add("tmpfs", f"{target}: size {value}; a service's tmpfs needs a size in bytes")
            return None
        if name == "size" and value:
            size = int(docker.utils.parse_bytes(value))
        elif name == "mode" and value:
            mode = int(value, 8)
        elif option == "ro":
            read_only = True
        elif option not in TMPFS_DEFAULTS:
            refusals.add("tmpfs", f"{target}: option {option!r}; a service's tmpfs takes size, mode, ro only")
            return None
    return docker.types.Mount(target, "", type="tmpfs", read_only=read_only, tmpfs_size=size,
                              tmpfs_mode=mode)


def _ports(ports: Mapping[str, Any] | None, refusals: _Refusals) -> None:
    """Exposed ports need nothing on an overlay (every port of a task is reachable there); published ones
    cannot be honoured."""
    published = sorted(port for port, bindings in (ports or {}).items() if bindings)
    if published:
        refusals.add("port_bindings", f"{', '.join(published)}: {UNSUPPORTED['port_bindings']}")


def _log_driver(config: Mapping[str, Any] | None) -> docker.types.DriverConfig | None:
    """docker-py's `LogConfig` (`Type`, `Config`) as the task's `LogDriver` (`Name`, `Options`)."""
    if not config:
        return None
    return docker.types.DriverConfig(str(config.get("Type")), dict(config.get("Config") or {}))


def _resources(config: dict[str, Any], options: SwarmOptions,
               refusals: _Refusals) -> docker.types.Resources:
    """Limits, and the same as reservations (unless the run reserved less) so Swarm places the task on a
    node that can hold it; pids and GPUs too."""
    memory = int(config.pop("mem_limit", 0) or 0)
    swap = config.pop("memswap_limit", None)
    if swap is not None and int(swap) not in (memory, 0):
        refusals.add("memswap_limit", UNSUPPORTED["memswap_limit"])
    reserved = int(config.pop("mem_reservation", 0) or 0) or memory
    cpus = int(config.pop("nano_cpus", 0) or 0)
    generic = _generic_resources(config.pop("device_requests", None) or [], options, refusals)
    resources = docker.types.Resources(
        cpu_limit=cpus or None, mem_limit=memory or None, cpu_reservation=cpus or None,
        mem_reservation=reserved or None, generic_resources=generic or None)
    pids = int(config.pop("pids_limit", 0) or 0)
    if pids > 0:
        resources.setdefault("Limits", {})["Pids"] = pids
    return resources


def _generic_resources(requests: list[Any], options: SwarmOptions, refusals: _Refusals) -> list[Any]:
    """GPU requests as generic resources of kind `gpu_resource` (a count, or named device ids)."""
    if not requests:
        return []
    if not options.gpu_resource:
        refusals.add("device_requests", "GPUs reach services only as generic resources: set "
                                        "SWARM_GPU_RESOURCE to the kind the nodes advertise, e.g. NVIDIA-GPU")
        return []
    kind, count, named = options.gpu_resource, 0, []
    for request in requests:
        capabilities = {c for group in request.get("Capabilities") or [] for c in group}
        ids = list(request.get("DeviceIDs") or [])
        if capabilities - {"gpu"} or request.get("Options"):
            refusals.add("device_requests", "only GPU requests without options map to generic resources")
        elif ids:
            named += [{"NamedResourceSpec": {"Kind": kind, "Value": str(i)}} for i in ids]
        elif int(request.get("Count") or 0) > 0:
            count += int(request["Count"])
        else:
            refusals.add("device_requests", "Swarm reserves a number of GPUs or named ones, not all of them")
    return ([{"DiscreteResourceSpec": {"Kind": kind, "Value": count}}] if count else []) + named
