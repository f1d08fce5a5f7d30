"""The operator's policy over what a flow run may ask of its container: checks, clamps and denial messages.

Whoever can register a flow (or steal an API key) writes the run config, and the agent turns it into a
container on a host whose Docker socket it holds. So, as GitLab Runner's `allowed_*` lists do, everything
that reaches beyond the container is denied unless the operator allows it by name, and every denial says
which setting (and agent option) would allow it. Limits within the operator's maxima are allowed; requests
above a maximum are clamped, with a line in the run's log, rather than failing a run that would likely
work with less (peers point 9).

Pure: no Docker, no API; `Settings` is only a type here, so `settings` may import from this module.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import docker.utils

from agent.policy.host_paths import HostPathError, clean, resolve, under
from agent.policy.run_env import redirecting_names
from agent.runtime.images import DOCKER_HUB, HUB_ALIASES, names_registry, split_image

if TYPE_CHECKING:
    from agent.settings import Settings

OVERRIDES_ENV = "PREFECT__CLOUD__AGENT__ALLOWED_RUN_OVERRIDES"
HOST_PATHS_ENV = "PREFECT__CLOUD__AGENT__ALLOWED_HOST_PATHS"
IMAGES_ENV = "PREFECT__CLOUD__AGENT__ALLOWED_IMAGES"
SOCKET_PATHS = frozenset({"/var/run/docker.sock", "/run/docker.sock"})
# The engine's own files: its sockets (Docker's, containerd's), its state (every container's filesystem),
# and /proc (its <pid>/root, cwd and fd links lead into any process's view of the host). A bind of one of
# these, of anything below one, or of a directory that holds one is root on the host: `docker_socket`.
DAEMON_PATHS = (
    "/var/run/docker.sock", "/run/docker.sock", "/run/docker", "/var/run/docker", "/run/containerd",
    "/var/run/containerd", "/var/lib/docker", "/var/lib/containerd", "/proc",
)
NANO = 1_000_000_000

# What a run config may only ask for when the operator names it in ALLOWED_RUN_OVERRIDES.
OVERRIDES: dict[str, str] = {
    "privileged": "privileged mode (host_config.privileged)",
    "cap_add": "added Linux capabilities (host_config.cap_add)",
    "host_network": "the host's network namespace (host_config.network_mode=host)",
    "host_pid": "the host's or another container's PID namespace (host_config.pid_mode)",
    "host_ipc": "the host's or another container's IPC namespace (host_config.ipc_mode)",
    "host_uts": "the host's UTS namespace (host_config.uts_mode=host)",
    "host_userns": "the host's user namespace (host_config.userns_mode=host)",
    "docker_socket": "the container engine's own files (the Docker or containerd socket, /var/lib/docker, "
                     "/proc, or a directory holding one of them)",
    "devices": "host devices (host_config.devices, device_cgroup_rules)",
    "gpus": "GPUs (host_config.device_requests)",
    "volumes": "named volumes or another container's volumes (host_config binds/mounts, volumes_from)",
    "networks": "a network of its own choosing (host_config.network_mode=<network>|container:<id>, links)",
    "security_opt": "security options such as seccomp or AppArmor profiles (host_config.security_opt)",
    "sysctls": "kernel parameters (host_config.sysctls)",
    "runtime": "another container runtime (host_config.runtime)",
    "oom_kill_disable": "exemption from the OOM killer (host_config.oom_kill_disable)",
    "cgroup_parent": "another parent cgroup (host_config.cgroup_parent)",
    "volume_options": "volume driver options, which can bind any host path "
                      "(mounts VolumeOptions.DriverConfig, volume_driver)",
    "log_config": "a logging driver, which runs inside dockerd and can reach the host "
                  "(host_config.log_config)",
    "oom_score_adj": "a negative OOM score, which shields the container from the OOM killer "
                     "(host_config.oom_score_adj < 0)",
    "ulimits": "resource limits of its own choosing (host_config.ulimits)",
    "tmpfs_options": "tmpfs options beyond size, mode, uid, gid, nr_inodes, nr_blocks, ro, rw, exec, noexec, "
                     "nosuid, nodev (host_config.tmpfs, tmpfs mounts)",
    "published_ports": "ports published on interfaces other than loopback (port_bindings without a "
                       "127.0.0.0/8 or ::1 HostIp, publish_all_ports), or more than 32 host ports",
    "mount_propagation": "bind propagation other than private/rprivate (binds, mounts BindOptions)",
    "swarm_host_paths": "host paths under ENGINE=swarm, bound on whichever node runs the task: the agent "
                        "judges them on its own host, so a symlink or the engine's files on that node are "
                        "not seen",
    "api_env": "environment variables that point the flow runner at another API, backend, credential, proxy "
               "or flow run (agent/policy/run_env.py: PREFECT__CLOUD__API and friends, PREFECT__SERVER__*, "
               "PREFECT__CONTEXT__CONFIG__*, Prefect's config paths, HTTP(S)_PROXY and CA bundles)",
}
SAFE_SECURITY_OPTS = frozenset({"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"})
SAFE_PROPAGATIONS = frozenset({"private", "rprivate"})
TMPFS_FLAGS = frozenset({"ro", "rw", "noexec", "exec", "nosuid", "nodev"})
TMPFS_VALUES = {"size": r"\d+[kmgKMG%]?", "mode": r"[0-7]{1,4}", "uid": r"\d+", "gid": r"\d+",
                "nr_inodes": r"\d+[kmgKMG]?", "nr_blocks": r"\d+[kmgKMG]?"}


class PolicyDenied(Exception):
    """The run asks for something the operator's policy does not allow; the message says how to allow it."""

    failure_reason = "policy"  # the `reason` label of local_agent_runs_failed_total


def _unix_socket(address: str | None) -> tuple[str, ...]:
    """The host path of a `unix://` daemon address (a socket elsewhere than the usual paths)."""
    if address and address.startswith(("unix://", "http+unix://")):
        return (clean(address.split("://", 1)[1]),)
    return ()


def override_hint(name: str) -> str:
    return f"add '{name}' to {OVERRIDES_ENV} (agent option --allowed-run-overrides {name})"


def validate_overrides(names: list[str]) -> list[str]:
    """Settings-time check: a typo in the allow-list must be a configuration error, not a silent no-op."""
    unknown = [name for name in names if name not in OVERRIDES]
    if unknown:
        raise ValueError(f"unknown run override(s) {unknown}; known: {', '.join(OVERRIDES)}")
    return names


def parse_memory(value: Any) -> int:
    """Bytes from `512m`, `2g`, `1073741824` (Docker's own units: b, k, m, g; binary multiples)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid memory size {value!r}")
    try:
        parsed = int(docker.utils.parse_bytes(value if isinstance(value, int) else str(value).strip()))
    except (docker.errors.DockerException, ValueError, TypeError) as exc:
        raise ValueError(f"invalid memory size {value!r} (use e.g. 512m or 2g)") from exc
    if parsed <= 0:
        raise ValueError(f"invalid memory size {value!r}: must be positive")
    return parsed


def human_bytes(value: int) -> str:
    for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}b"


def unsafe_tmpfs_options(options: list[str]) -> list[str]:
    """Options outside the safe set: `dev` and `suid` (device nodes, setuid binaries) and anything else."""
    unsafe = []
    for option in options:
        name, sep, value = option.partition("=")
        safe = (not sep and name in TMPFS_FLAGS) or (
            bool(sep) and name in TMPFS_VALUES and re.fullmatch(TMPFS_VALUES[name], value) is not None)
        if not safe:
            unsafe.append(option)
    return unsafe


def is_loopback(host_ip: str) -> bool:
    """127.0.0.0/8 or ::1; an empty HostIp means every interface."""
    try:
        return bool(host_ip) and ipaddress.ip_address(host_ip).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ images
def normalize_image(image: str) -> str:
    """The fully qualified reference: `busybox` -> `docker.io/library/busybox:latest`.

    Allow-list patterns are matched against this form, so `busybox`, `library/busybox` and
    `docker.io/library/busybox:latest` cannot be told apart by a pattern (PR #3026 matched only the
    first path component as written, which `--no-pull` or an unqualified name slipped past).
    """
    name, at, digest = image.strip().partition("@")
    repository, ref = split_image(name)
    has_tag = name != repository
    domain, path = _domain_and_path(repository)
    result = f"{domain}/{path}"
    if has_tag or not at:
        result += f":{ref}"
    return f"{result}@{digest}" if at else result


def _domain_and_path(repository: str) -> tuple[str, str]:
    if names_registry(repository):
        domain, _, path = repository.partition("/")
        domain = DOCKER_HUB if domain in HUB_ALIASES else domain
    else:
        domain, path = DOCKER_HUB, repository
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return domain, path


def normalize_pattern(pattern: str) -> str:
    """Qualify a pattern the way images are qualified, unless it starts with a wildcard (`*`, `*/team/*`)."""
    pattern = pattern.strip()
    if not pattern or pattern[0] in "*?[":
        return pattern
    head, sep, _ = pattern.partition("/")
    if sep and ("*" in head or "?" in head):  # `reg*.example.com/x`: a registry pattern, used as written
        return pattern
    domain, path = _domain_and_path(pattern)
    return f"{domain}/{path}"


def image_matches(image: str, pattern: str) -> bool:
    """A pattern naming a repository without tag/digest allows all its tags; `*` also crosses `/`."""
    ref = normalize_image(image)
    repository = split_image(ref.partition("@")[0])[0]
    wanted = normalize_pattern(pattern)
    return fnmatch.fnmatchcase(ref, wanted) or fnmatch.fnmatchcase(repository, wanted)


# ------------------------------------------------------------------------------------------------ policy
@dataclass(frozen=True)
class Policy:
    """The operator's allow-lists and maxima; built once from the settings, asked at every launch."""

    allowed_overrides: frozenset[str] = frozenset()
    allowed_host_paths: tuple[str, ...] = ()
    allowed_images: tuple[str, ...] = ()
    max_memory: int | None = None
    max_nano_cpus: int | None = None
    max_pids: int | None = None
    host_root: str = ""  # where the host's filesystem is visible to the agent; empty: lexical checks only
    daemon_paths: tuple[str, ...] = DAEMON_PATHS  # plus the socket the agent itself talks to (from_settings)
    engine: str = "docker"  # where the container runs: `docker` or `swarm` (placement means something there)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            allowed_overrides=frozenset(settings.allowed_run_overrides),
            allowed_host_paths=tuple(clean(p) for p in settings.allowed_host_paths),
            allowed_images=tuple(settings.allowed_images),
            max_memory=parse_memory(settings.max_memory) if settings.max_memory else None,
            max_nano_cpus=int(settings.max_cpus * NANO) if settings.max_cpus else None,
            max_pids=settings.max_pids_limit,
            host_root=settings.host_root,
            daemon_paths=DAEMON_PATHS + _unix_socket(settings.base_url or os.environ.get("DOCKER_HOST")),
            engine=settings.engine,
        )

    def check_image(self, image: str) -> str | None:
        """The pattern that allows `image` (None: no allow-list); raises `PolicyDenied` otherwise."""
        if not self.allowed_images:
            return None
        for pattern in self.allowed_images:
            if image_matches(image, pattern):
                return pattern
        raise PolicyDenied(
            f"Image {image} (normalized: {normalize_image(image)}) is not allowed by this agent's image "
            f"allow-list {list(self.allowed_images)}. The operator can allow it by adding a matching glob "
            f"pattern to {IMAGES_ENV} (agent option --allowed-images)."
        )

    def check_run_env(self, env: Mapping[str, object]) -> None:
        """A run's env may not redirect its flow runner (`run_env.redirects`) unless `api_env` is allowed."""
        if self.allows("api_env"):
            return
        asked = redirecting_names(env)
        if asked:
            raise PolicyDenied(f"The run config's env sets {', '.join(asked)}, which would point the flow "
                               f"runner at another API, credential or flow run; {override_hint('api_env')}")

    def allows(self, override: str) -> bool:
        return override in self.allowed_overrides

    def host_path_allowed(self, path: str) -> bool:
        """Both sides cleaned as dockerd cleans them (`//x/`, `..`); the roots are not resolved, so a
        symlink a flow planted between two allowed roots cannot widen them."""
        return any(under(clean(path), clean(root)) for root in self.allowed_host_paths)

    def judge_source(self, source: str, what: str, violations: Violations) -> str | None:
        """The host path Docker should be given for `source` (a host path or a volume name), or None
        when denied: named volumes need `volumes`; host paths are cleaned, resolved inside `host_root`,
        then must lie in the allow-list and, if they are or hold the Docker socket, need `docker_socket`."""
        if not source.startswith("/"):
            return source if violations.need(self, "volumes", f"{what} (volume {source!r})") else None
        cleaned = clean(source)
        if self.engine == "swarm" and not violations.need(self, "swarm_host_paths", f"{what} ({cleaned})"):
            return None
        try:
            resolved = resolve(cleaned, self.host_root)
        except HostPathError as exc:
            violations.other(f"{what}: {exc}")
            return None
        shown = cleaned if cleaned == resolved else f"{cleaned} -> {resolved}"
        if {cleaned, resolved} & SOCKET_PATHS:  # the socket itself: `docker_socket` is the whole answer
            return resolved if violations.need(self, "docker_socket", f"{what} ({shown})") else None
        allowed = violations.host_path(self, cleaned, resolved, what)
        if self.reaches_daemon(cleaned) or self.reaches_daemon(resolved):
            allowed = violations.need(self, "docker_socket", f"{what} ({shown})") and allowed
        return resolved if allowed else None

    def reaches_daemon(self, path: str) -> bool:
        """`path` is one of the engine's files (`DAEMON_PATHS`), lies below one, or holds one."""
        return any(under(path, daemon) or under(daemon, path) for daemon in self.daemon_paths)

    def clamp(self, what: str, requested: int, maximum: int | None,
              show: Any = str) -> tuple[int, str | None]:
        """`requested` capped at `maximum` (a request of 0/-1, meaning unlimited, is capped too)."""
        if maximum is None or 0 < requested <= maximum:
            return requested, None
        asked = "unlimited" if requested <= 0 else show(requested)
        note = (f"host_config.{what}={asked} is above the agent's maximum; clamped to {show(maximum)} "
                f"(policy: PREFECT__CLOUD__AGENT__MAX_{_MAX_NAMES[what]})")
        return maximum, note


_MAX_NAMES = {"mem_limit": "MEMORY", "memswap_limit": "MEMORY", "mem_reservation": "MEMORY",
              "nano_cpus": "CPUS", "pids_limit": "PIDS_LIMIT"}


class Violations:
    """Collects every denial of one run config, so the run's message lists them all at once."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def need(self, policy: Policy, override: str, what: str) -> bool:
        """True when allowed; otherwise record `what` as denied (naming the override) and return False."""
        if policy.allows(override):
            return True
        self.messages.append(f"{what} requests {OVERRIDES[override]}: {override_hint(override)}")
        return False

    def host_path(self, policy: Policy, cleaned: str, resolved: str, what: str) -> bool:
        if policy.host_path_allowed(resolved):
            return True
        allowed = list(policy.allowed_host_paths) or "none"
        shown = cleaned if cleaned == resolved else f"{cleaned} (resolves to {resolved})"
        self.messages.append(
            f"{what} binds host path {shown}, outside the allowed host paths "
            f"({allowed}): add it or a parent to {HOST_PATHS_ENV} (agent option --allowed-host-paths)"
        )
        return False

    def other(self, message: str) -> None:
        self.messages.append(message)

    def raise_if_any(self) -> None:
        if self.messages:
            listed = "; ".join(self.messages)
            raise PolicyDenied(f"Flow run denied by the agent's run-config policy: {listed}.")
