"""`PodmanRuntime`: the Docker runtime over Podman's Docker-compatible API (`podman system service`).

Podman serves docker-py, but not identically; each difference is handled here or refused with a message,
never left silently different:

* Events: a label filter with a key and no value matches nothing, and `die` is only sent when `died` is
  asked for. The server filters what it can; keys without values and the action names are checked here.
* No daemon: containers survive restarts of the API service (each has its own `conmon`), so "the daemon
  restarted" can only mean the host rebooted: its boot time is the engine's start, and live-restore holds.
  The compat `/info` ID is new on every call: the host id is the host name plus the storage root.
* `host-gateway` in `extra_hosts` is written literally into `/etc/hosts` by Podman 4: it becomes the
  gateway of the container's network (rootful), `127.0.0.1` on the host network, and is refused where no
  address reaches the host (rootless networks).
* Resource limits: rootless Podman on cgroups v1 ignores them silently (its inspect shows zeros). A container
  whose limits did not hold is removed and its run fails with the reason; the start-up line says so.
* OOM kills under cgroups v1 are not recorded (`OOMKilled` stays false: conmon 2.1 writes its `oom` marker
  into its working directory, not the container's): a SIGKILL the agent did not send, under a memory limit,
  is reported as the OOM kill it is.
* `--init` needs catatonit on the Podman host; its absence is named with the fix.
* Device requests (GPUs) are dropped by Podman 4's compat API: a run asking for one is refused.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import docker
from loguru import logger

from agent.runtime.docker import DockerRuntime
from agent.runtime.docker_clients import client_params
from agent.runtime.docker_types import (
    ContainerCreateError,
    ContainerInfo,
    ContainerSpec,
    DaemonFacts,
    DockerError,
    LaunchResult,
)

PODMAN_COMPONENT = "Podman Engine"
HOST_GATEWAY = "host-gateway"
HOST_GATEWAY_NAME = "host.docker.internal"
SIGKILLED = 137
DETECT_TIMEOUT_S = 5.0
# docker-py create kwargs that set a resource limit -> the HostConfig field where Podman shows what it applied
LIMIT_FIELDS = {
    "mem_limit": "Memory", "memswap_limit": "MemorySwap", "mem_reservation": "MemoryReservation",
    "nano_cpus": "NanoCpus", "cpu_quota": "CpuQuota", "cpu_shares": "CpuShares", "cpuset_cpus": "CpusetCpus",
    "pids_limit": "PidsLimit", "blkio_weight": "BlkioWeight", "cpuset_mems": "CpusetMems",
    "mem_swappiness": "MemorySwappiness",
}
INIT_MISSING = "container-init binary not found"
STATE_IMPROPER = "container state improper"
REMOVE_ATTEMPTS = 10
_UPTIME = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_STOPPED_KEPT = 1024


# ------------------------------------------------------------------------------------------ detection
def is_podman(version: Mapping[str, Any]) -> bool:
    """Whether Docker's `/version` payload comes from Podman (its components name the "Podman Engine")."""
    components = version.get("Components") or []
    names = {str(c.get("Name")) for c in components if isinstance(c, Mapping)}
    platform = str((version.get("Platform") or {}).get("Name") or "")
    return PODMAN_COMPONENT in names or "podman" in platform.lower()


def detect_engine(base_url: str | None, timeout: float = DETECT_TIMEOUT_S) -> str | None:
    """"podman" or "docker" from one unversioned `/version` request; None when the engine does not answer
    (the agent's own start-up check then reports it)."""
    try:
        api = docker.APIClient(timeout=timeout, version="1.24", **client_params(base_url))  # type: ignore[arg-type]
        try:
            version: dict[str, Any] = api.version(api_version=False)
        finally:
            api.close()
    except Exception as exc:  # noqa: BLE001 - any failure: not detected, the start-up check says why
        # Only the kind: the message may hold the address, and an address may hold a password (this can run
        # before logging masks URLs).
        logger.debug("engine detection failed ({kind}); the start-up check says why", kind=type(exc).__name__)
        return None
    return "podman" if is_podman(version) else "docker"


# ------------------------------------------------------------------------------------------ the host
def parse_uptime(text: str) -> float | None:
    """Seconds from Podman's uptime (`13h 42m 44.00s (Approximately 0.54 days)`); None if unreadable."""
    head = text.split("(")[0]
    found = _UPTIME.findall(head)
    if not found:
        return None
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(number) * unit[letter] for number, letter in found)


@dataclass(frozen=True)
class PodmanHost:
    """What libpod's own `/info` says about the Podman host (the compat `/info` hides rootless and limits)."""

    version: str
    rootless: bool
    cgroup_version: str
    controllers: tuple[str, ...]
    hostname: str
    graph_root: str
    uptime_s: float | None

    @classmethod
    def from_libpod_info(cls, info: Mapping[str, Any], now: datetime | None = None) -> PodmanHost:
        host, store = info.get("host") or {}, info.get("store") or {}
        security = host.get("security") or {}
        return cls(version=str((info.get("version") or {}).get("Version") or "unknown"),
                   rootless=bool(security.get("rootless")),
                   cgroup_version=str(host.get("cgroupVersion") or "unknown"),
                   controllers=tuple(str(c) for c in host.get("cgroupControllers") or ()),
                   hostname=str(host.get("hostname") or ""), graph_root=str(store.get("graphRoot") or ""),
                   uptime_s=parse_uptime(str(host.get("uptime") or "")))

    @property
    def limits_enforced(self) -> bool:
        """Memory limits hold only where Podman has the memory controller (never rootless on cgroups v1)."""
        return "memory" in self.controllers

    def describe(self) -> str:
        mode = "rootless" if self.rootless else "rootful"
        return f"Podman {self.version} ({mode}, cgroups {self.cgroup_version})"

    def warnings(self) -> tuple[str, ...]:
        found = []
        if not self.limits_enforced:
            found.append(f"{self.describe()} does not enforce resource limits (no memory controller: "
                         "Podman ignores them silently on cgroups v1 rootless): every flow run given a "
                         "memory, CPU or pids limit (by MEMORY/MAX_MEMORY/CPUS/MAX_CPUS or its run config) "
                         "is failed instead of run unbounded. Use rootful Podman, cgroups v2 with "
                         "delegation, or no limits")
        if self.rootless:
            found.append(f"{self.describe()}: flow containers reach this host only on the host network "
                         "(PREFECT__CLOUD__AGENT__NETWORK=host); on another network, runs given "
                         "host.docker.internal (HOST_GATEWAY) are failed")
        return tuple(found)

    def booted_at(self, now: datetime) -> datetime | None:
        return None if self.uptime_s is None else now - timedelta(seconds=self.uptime_s)

    def identity(self) -> str:
        """Stable across service restarts; rootful and rootless stores on one host are told apart."""
        return f"podman:{self.hostname}:{hashlib.sha256(self.graph_root.encode()).hexdigest()[:12]}"


# ------------------------------------------------------------------------------------------ pure rules
def unapplied_limits(requested: Mapping[str, Any], host_config: Mapping[str, Any]) -> list[str]:
    """The limit kwargs asked for that Podman's record of the container does not show."""
    return sorted(key for key, field in LIMIT_FIELDS.items()
                  if requested.get(key) and not host_config.get(field))


def network_of(spec: ContainerSpec) -> str:
    mode = spec.host_config.get("network_mode")
    return str(mode) if mode else (spec.networks[0] if spec.networks else "bridge")


def gateway_hosts(spec: ContainerSpec, gateway: str | None) -> dict[str, str]:
    """`spec.extra_hosts` with `host-gateway` made an address Podman understands; `ContainerCreateError` when
    none reaches the host. On the host network, an API named `host.docker.internal` is the host's loopback."""
    hosts = dict(spec.extra_hosts)
    host_network = network_of(spec) == "host"
    api_host = urlsplit(spec.environment.get("PREFECT__CLOUD__API", "")).hostname
    if host_network and api_host == HOST_GATEWAY_NAME:
        hosts.setdefault(HOST_GATEWAY_NAME, "127.0.0.1")
    for name, value in hosts.items():
        if value != HOST_GATEWAY:
            continue
        if host_network:
            hosts[name] = "127.0.0.1"
        elif gateway:
            hosts[name] = gateway
        else:
            raise ContainerCreateError(
                f"Podman cannot map {name} to the host (host-gateway) on network {network_of(spec)}: no "
                "gateway there reaches the host (rootless Podman). Set PREFECT__CLOUD__AGENT__NETWORK=host, "
                "or HOST_GATEWAY=false with a FLOW_API_URL that flow containers reach")
    return hosts


def inferred_oom(info: ContainerInfo, memory_limit: int, stopped_by_agent: bool) -> bool:
    """Podman on cgroups v1 does not record OOM kills: a SIGKILL the agent did not send, under a memory
    limit, is the kernel's OOM killer (nothing else SIGKILLs a flow container unasked)."""
    return info.oom_killed or (info.exit_code == SIGKILLED and memory_limit > 0 and not stopped_by_agent)


class PodmanEvents:
    """Podman's event stream narrowed to what the port promises: `start`/`die` of labelled containers."""

    def __init__(self, stream: Any, keys: tuple[str, ...], actions: tuple[str, ...]) -> None:
        self._stream, self._keys, self._actions = stream, keys, actions

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for event in self._stream:
            action = normalise_action(str(event.get("Action") or event.get("status") or ""))
            attributes = (event.get("Actor") or {}).get("Attributes") or {}
            if action in self._actions and all(key in attributes for key in self._keys):
                yield {**event, "Action": action, "status": action}

    def close(self) -> None:
        self._stream.close()


def normalise_action(action: str) -> str:
    return "die" if action == "died" else action


# ------------------------------------------------------------------------------------------ the runtime
class PodmanRuntime(DockerRuntime):
    """`DockerRuntime` with Podman's differences handled (see the module docstring)."""

    def __init__(self, base_url: str | None = None, timeout: float = 60.0) -> None:
        super().__init__(base_url=base_url, timeout=timeout)
        self._host: PodmanHost | None = None
        self._booted: datetime | None = None
        self._stopped: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def podman_host(self) -> PodmanHost:
        """libpod's `/info`, read once: rootless mode and cgroups do not change under a running service."""
        if self._host is None:
            with self.errors("read Podman's info"):
                api: Any = self.client().api  # libpod's own endpoints have no docker-py method
                response = api._get(f"{api.base_url}/v4.0.0/libpod/info")
                self._host = PodmanHost.from_libpod_info(api._result(response, json=True))
                self._booted = self._host.booted_at(datetime.now(UTC))  # the uptime was read now
        return self._host

    def host_identity(self) -> str:
        try:
            return self.podman_host().identity()
        except DockerError:
            return super().host_identity()

    def daemon_facts(self) -> DaemonFacts:
        host = self.podman_host()
        facts = DaemonFacts(self._booted, True, engine=host.describe(), warnings=host.warnings())
        self.announce(facts)
        return facts

    # -- containers
    def create(self, spec: ContainerSpec) -> str:
        return super().create(self._prepared(spec))

    def _prepared(self, spec: ContainerSpec) -> ContainerSpec:
        if spec.host_config.get("device_requests"):
            raise ContainerCreateError(
                f"Podman's Docker-compatible API drops device requests (GPUs) without a word: container "
                f"{spec.name} is not created without the GPUs it asks for. Give Podman the devices by CDI "
                "name instead (host_config devices, e.g. nvidia.com/gpu=all), or run it on Docker")
        network = network_of(spec)
        needs_gateway = HOST_GATEWAY in spec.extra_hosts.values() and network != "host"
        gateway = self._gateway(network) if needs_gateway and not self.podman_host().rootless else None
        return replace(spec, extra_hosts=gateway_hosts(spec, gateway))

    def _gateway(self, network: str) -> str | None:
        with self.errors("inspect a network"):
            try:
                attrs: dict[str, Any] = self.client().api.inspect_network(network)
            except docker.errors.NotFound:
                return None
        configs = (attrs.get("IPAM") or {}).get("Config") or []
        return next((str(c["Gateway"]) for c in configs if c.get("Gateway")), None)

    def _check_limits(self, spec: ContainerSpec, container_id: str) -> None:
        """Judge by Podman's own record: a limit asked for and not shown there does not hold."""
        if not any(spec.host_config.get(key) for key in LIMIT_FIELDS):
            return
        with self.errors("inspect a container"):
            attrs: dict[str, Any] = self.client().api.inspect_container(container_id)
        missing = unapplied_limits(spec.host_config, attrs.get("HostConfig") or {})
        if not missing:
            return
        self.remove(container_id, force=True)
        raise ContainerCreateError(
            f"{self.podman_host().describe()} does not enforce resource limits ({', '.join(missing)} asked "
            f"for container {spec.name}, not applied): the run is not started unbounded. Run it on rootful "
            "Podman or Docker, or without limits")

    def launch(self, spec: ContainerSpec, *, replace_exited: bool = False,
               before_start: Callable[[str], None] | None = None) -> LaunchResult:
        def checked(container_id: str) -> None:
            """Right before any start, an adopted container's too (created by a launch that failed or died
            before its check): no container starts without Podman's record showing its limits."""
            self._check_limits(spec, container_id)
            if before_start is not None:
                before_start(container_id)

        try:
            return super().launch(spec, replace_exited=replace_exited, before_start=checked)
        except ContainerCreateError as exc:
            if INIT_MISSING not in exc.message:
                raise
            raise ContainerCreateError(
                f"{exc.message}. Podman runs --init containers with catatonit: install it on the Podman host "
                "(apt-get install catatonit) or set PREFECT__CLOUD__AGENT__INIT=false",
                status_code=exc.status_code, transient=False) from exc

    def container_info(self, attrs: Mapping[str, Any]) -> ContainerInfo:
        info = super().container_info(attrs)
        if self._host is not None and self._host.cgroup_version != "v1":
            return info  # cgroups v2: Podman records OOM kills itself, and a SIGKILL is just a SIGKILL
        memory = int((attrs.get("HostConfig") or {}).get("Memory") or 0)
        with self._lock:
            stopped = info.id in self._stopped
        oom = inferred_oom(info, memory, stopped)
        return replace(info, oom_killed=True) if oom != info.oom_killed else info

    def remove(self, container_id: str, force: bool = False) -> None:
        """Podman refuses to force-remove a container that stops while it kills it ("container state
        improper"); a moment later the container is stopped and the removal goes through."""
        for attempt in range(REMOVE_ATTEMPTS):
            try:
                super().remove(container_id, force)
                return
            except DockerError as exc:
                if STATE_IMPROPER not in str(exc) or attempt == REMOVE_ATTEMPTS - 1:
                    raise
                time.sleep(0.2)

    def stop(self, container_id: str, timeout: float) -> None:
        with self._lock:
            self._stopped[container_id] = None
            while len(self._stopped) > _STOPPED_KEPT:
                self._stopped.popitem(last=False)
        if len(container_id) != 64:  # a name or a short id: the record is by full id
            info = self.inspect(container_id)
            if info is not None:
                with self._lock:
                    self._stopped[info.id] = None
        super().stop(container_id, timeout)

    def events(self, labels: Mapping[str, str | None], actions: tuple[str, ...] = ("start", "die"),
               since: int | None = None) -> Any:
        """Values filtered by Podman, keys without a value here; `died` asked for, reported as `die`."""
        keys = tuple(key for key, value in labels.items() if value is None)
        valued = [f"{key}={value}" for key, value in labels.items() if value is not None]
        asked = sorted({*actions, *("died" for a in actions if a == "die")})
        filters: dict[str, list[str]] = {"type": ["container"], "event": asked}
        if valued:
            filters["label"] = valued
        with self.errors("follow events"):
            stream = self.client().api.events(since=since, filters=filters, decode=True)
        return PodmanEvents(stream, keys, actions)
