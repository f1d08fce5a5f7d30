"""The judge: every way a container the daemon created exceeds the operator's policy.

It reads what Docker made (`docker inspect` of the container, `docker volume inspect` of its volumes), never
the run config nor the agent's view of it, so spellings, nesting and types that fool the policy cannot fool
the judge: the Engine's own canonical JSON is all it sees. It deliberately imports nothing from the agent.
Every finding names what would have allowed it: an override (`privileged`, `docker_socket`, ...), the host
path allow-list (`allowed_host_paths`) or a maximum (`max_memory`, `max_cpus`, `max_pids_limit`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

NANO = 1_000_000_000
HOST_PATHS = "allowed_host_paths"  # not an override: binds outside the allow-list are never allowed
SOCKET_SPELLINGS = ("/var/run/docker.sock", "/run/docker.sock")
SOCKET_DIRS = ("/", "/var", "/run", "/var/run")
SAFE_PROPAGATION = frozenset({"", "private", "rprivate"})
SHARING_PROPAGATION = frozenset({"shared", "rshared", "slave", "rslave"})
SAFE_SECURITY_OPT = frozenset({"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"})
TMPFS_OPTIONS = frozenset(
    {"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "ro", "rw", "noexec", "exec", "nosuid", "nodev"}
)
PRIVATE_NETWORKS = frozenset({"", "default", "bridge", "none"})


@dataclass(frozen=True)
class JudgePolicy:
    """The operator's policy as the judge understands it: override names, host paths, maxima."""

    allowed: frozenset[str] = frozenset()
    host_paths: tuple[str, ...] = ()
    max_memory: int | None = None
    max_nano_cpus: int | None = None
    max_pids: int | None = None


@dataclass(frozen=True)
class Daemon:
    """The daemon's defaults, which a container may have without asking for anything."""

    logging_driver: str
    runtime: str
    cgroupns: str  # "host" on cgroup v1 hosts, "private" on v2
    sockets: tuple[str, ...]  # the real paths of the daemon's socket

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Daemon:
        sockets = tuple(sorted({os.path.realpath(p) for p in SOCKET_SPELLINGS if os.path.exists(p)}))
        return cls(
            logging_driver=str(info.get("LoggingDriver") or "json-file"),
            runtime=str(info.get("DefaultRuntime") or "runc"),
            cgroupns="host" if str(info.get("CgroupVersion")) == "1" else "private",
            sockets=sockets,
        )


@dataclass(frozen=True)
class Violation:
    need: str  # the override, allow-list or maximum that would have allowed it
    detail: str

    def __str__(self) -> str:
        return f"{self.need}: {self.detail}"


def judge(
    inspect: Mapping[str, Any], volumes: Mapping[str, Mapping[str, Any]], policy: JudgePolicy, daemon: Daemon
) -> list[Violation]:
    """Every violation of `policy` in the created container; `volumes` maps volume names to inspects."""
    host: Mapping[str, Any] = inspect.get("HostConfig") or {}
    found = [
        *_privileges(host, daemon),
        *_namespaces(inspect, host, daemon),
        *_binds(inspect, host, policy, daemon),
        *_volumes(inspect, host, volumes),
        *_tmpfs(host),
        *_ports(host),
        *_maxima(host, policy),
    ]
    return [v for v in found if v.need not in policy.allowed]


# ------------------------------------------------------------------------------------------------ paths
def go_clean(path: str) -> str:
    """Go's `filepath.Clean`, which the daemon applies to bind sources (`//x/./y/..` -> `/x`)."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    joined = "/".join(parts)
    return "/" + joined if rooted else joined or "."


def host_real_path(path: str) -> str:
    """Where the daemon's mount lands on this host: cleaned as the daemon does, then symlinks followed.
    What cannot be followed from here (`/proc/1/root`) counts as `/`: the judge assumes the worst."""
    try:
        return os.path.realpath(go_clean(path))
    except OSError:
        return "/"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _hands_over_socket(source: str, daemon: Daemon) -> bool:
    cleaned, real = go_clean(source), host_real_path(source)
    if {cleaned, real} & {*SOCKET_DIRS, *SOCKET_SPELLINGS}:
        return True
    for socket in daemon.sockets:
        if _within(socket, real):  # the socket itself or a directory above it
            return True
        try:
            if os.path.samefile(real, socket):  # a hard link to it
                return True
        except OSError:
            continue
    return False


def _bind_sources(inspect: Mapping[str, Any], host: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, source) of every bind: as requested (Binds, HostConfig.Mounts) and as mounted (Mounts)."""
    for bind in host.get("Binds") or []:
        source = str(bind).split(":", 1)[0]
        if source.startswith("/"):
            yield "HostConfig.Binds", source
    for mount in host.get("Mounts") or []:
        if mount.get("Type") == "bind":
            yield "HostConfig.Mounts", str(mount.get("Source") or "")
    for mount in inspect.get("Mounts") or []:
        if mount.get("Type") == "bind":
            yield "Mounts", str(mount.get("Source") or "")


def _binds(
    inspect: Mapping[str, Any], host: Mapping[str, Any], policy: JudgePolicy, daemon: Daemon
) -> Iterator[Violation]:
    roots = [host_real_path(root) for root in policy.host_paths]
    for where, source in _bind_sources(inspect, host):
        real = host_real_path(source)
        if _hands_over_socket(source, daemon):
            yield Violation("docker_socket", f"{where} binds {source!r} (on the host: {real})")
        if not any(_within(real, root) for root in roots):
            yield Violation(
                HOST_PATHS,
                f"{where} binds {source!r}, which is {real} on the host, outside {list(policy.host_paths)}",
            )
    for bind in host.get("Binds") or []:
        options = set(str(bind).split(":")[2].split(",")) if str(bind).count(":") >= 2 else set()
        if options & SHARING_PROPAGATION:
            yield Violation("mount_propagation", f"HostConfig.Binds {bind!r}")
    for mount in host.get("Mounts") or []:
        propagation = str(((mount.get("BindOptions") or {}).get("Propagation")) or "")
        if propagation not in SAFE_PROPAGATION:
            yield Violation("mount_propagation", f"HostConfig.Mounts {mount!r}")


# ------------------------------------------------------------------------------------------------ volumes
def _volumes(
    inspect: Mapping[str, Any], host: Mapping[str, Any], volumes: Mapping[str, Mapping[str, Any]]
) -> Iterator[Violation]:
    declared = (inspect.get("Config") or {}).get("Volumes") or {}
    anonymous = {go_clean(str(path)) for path in declared}  # declared (image, docker-py), created empty
    for bind in host.get("Binds") or []:
        if not str(bind).startswith("/"):
            yield Violation("volumes", f"HostConfig.Binds names volume {bind!r}")
    for mount in host.get("Mounts") or []:
        if mount.get("Type") == "volume" and mount.get("Source"):
            yield Violation("volumes", f"HostConfig.Mounts names volume {mount.get('Source')!r}")
    if host.get("VolumesFrom"):
        yield Violation("volumes", f"HostConfig.VolumesFrom {host['VolumesFrom']!r}")
    if host.get("VolumeDriver"):
        yield Violation("volume_options", f"HostConfig.VolumeDriver {host['VolumeDriver']!r}")
    for mount in inspect.get("Mounts") or []:
        if mount.get("Type") != "volume":
            continue
        name = str(mount.get("Name") or "")
        if go_clean(str(mount.get("Destination") or "")) not in anonymous:
            yield Violation("volumes", f"volume {name!r} mounted at {mount.get('Destination')!r}")
        yield from _volume_options(name, volumes.get(name))


def _volume_options(name: str, volume: Mapping[str, Any] | None) -> Iterator[Violation]:
    """A local volume with driver options (`o=bind,device=/etc`) is a host bind in disguise."""
    if volume is None:
        yield Violation("volume_options", f"volume {name!r} could not be inspected")
    elif volume.get("Options") or volume.get("Driver") != "local":
        yield Violation(
            "volume_options",
            f"volume {name!r}: driver {volume.get('Driver')!r}, options {volume.get('Options')!r}",
        )


def _tmpfs(host: Mapping[str, Any]) -> Iterator[Violation]:
    for path, options in (host.get("Tmpfs") or {}).items():
        names = {option.split("=", 1)[0].strip() for option in str(options).split(",") if option.strip()}
        if names - TMPFS_OPTIONS:
            yield Violation("tmpfs_options", f"tmpfs {path} with {sorted(names - TMPFS_OPTIONS)}")


# ------------------------------------------------------------------------------------------------ the rest
def _privileges(host: Mapping[str, Any], daemon: Daemon) -> Iterator[Violation]:
    flags = {
        "privileged": host.get("Privileged"),
        "cap_add": host.get("CapAdd"),
        "devices": host.get("Devices") or host.get("DeviceCgroupRules"),
        "gpus": host.get("DeviceRequests"),
        "sysctls": host.get("Sysctls"),
        "ulimits": host.get("Ulimits"),
        "oom_kill_disable": host.get("OomKillDisable"),
        "cgroup_parent": host.get("CgroupParent"),
    }
    yield from (Violation(need, f"{value!r}") for need, value in flags.items() if value)
    if int(host.get("OomScoreAdj") or 0) < 0:
        yield Violation("oom_score_adj", f"OomScoreAdj {host.get('OomScoreAdj')}")
    unsafe = [opt for opt in host.get("SecurityOpt") or [] if opt not in SAFE_SECURITY_OPT]
    if unsafe:
        yield Violation("security_opt", f"SecurityOpt {unsafe!r}")
    log = host.get("LogConfig") or {}
    if (log.get("Type") or daemon.logging_driver) != daemon.logging_driver or log.get("Config"):
        yield Violation("log_config", f"LogConfig {log!r}")
    if (host.get("Runtime") or daemon.runtime) != daemon.runtime:
        yield Violation("runtime", f"Runtime {host.get('Runtime')!r}")


def _namespaces(inspect: Mapping[str, Any], host: Mapping[str, Any], daemon: Daemon) -> Iterator[Violation]:
    for key, need in (("PidMode", "host_pid"), ("IpcMode", "host_ipc")):
        mode = str(host.get(key) or "")
        if mode == "host" or mode.startswith("container:"):
            yield Violation(need, f"{key} {mode!r}")
    for key, need in (("UTSMode", "host_uts"), ("UsernsMode", "host_userns")):
        if host.get(key) == "host":
            yield Violation(need, f"{key} 'host'")
    if host.get("CgroupnsMode") == "host" and daemon.cgroupns != "host":
        yield Violation("host_cgroupns", "CgroupnsMode 'host'")
    mode = str(host.get("NetworkMode") or "")
    joined = set((inspect.get("NetworkSettings") or {}).get("Networks") or {})
    if mode == "host":
        yield Violation("host_network", "NetworkMode 'host'")
    elif mode.startswith("container:"):
        yield Violation("networks", f"NetworkMode {mode!r}")
    elif ({mode} | joined) - PRIVATE_NETWORKS - {"host"}:
        yield Violation("networks", f"NetworkMode {mode!r}, networks {sorted(joined)}")
    if host.get("Links"):
        yield Violation("networks", f"Links {host['Links']!r}")


def _ports(host: Mapping[str, Any]) -> Iterator[Violation]:
    """Published ports must listen on loopback only; an empty HostIp listens on every interface."""
    for port, bindings in (host.get("PortBindings") or {}).items():
        for binding in bindings or []:
            address = str((binding or {}).get("HostIp") or "")
            if not _loopback(address):
                yield Violation("published_ports", f"{port} published on {address or 'every interface'}")
    if host.get("PublishAllPorts"):
        yield Violation("published_ports", "PublishAllPorts")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _maxima(host: Mapping[str, Any], policy: JudgePolicy) -> Iterator[Violation]:
    """With a maximum set, unlimited (0, -1, null) is above it: clamping must hold for every container."""
    memory = int(host.get("Memory") or 0)
    if policy.max_memory and not 0 < memory <= policy.max_memory:
        yield Violation("max_memory", f"Memory {memory} (maximum {policy.max_memory})")
    if policy.max_memory and int(host.get("MemorySwap") or 0) == -1:
        yield Violation("max_memory", "MemorySwap -1 (unlimited swap)")
    nano = int(host.get("NanoCpus") or 0)
    quota, period = int(host.get("CpuQuota") or 0), int(host.get("CpuPeriod") or 0) or 100_000
    cpus = nano or (quota * NANO // period if quota > 0 else 0)
    if policy.max_nano_cpus and not 0 < cpus <= policy.max_nano_cpus:
        yield Violation(
            "max_cpus", f"NanoCpus {nano}, CpuQuota {quota}/{period} (maximum {policy.max_nano_cpus})"
        )
    pids = int(host.get("PidsLimit") or 0)
    if policy.max_pids and not 0 < pids <= policy.max_pids:
        yield Violation("max_pids_limit", f"PidsLimit {host.get('PidsLimit')} (maximum {policy.max_pids})")
