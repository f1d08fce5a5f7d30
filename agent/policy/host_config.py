"""A run config's `host_config` as a closed, typed model: what the agent accepts, field by field.

The run config is written by whoever can register a flow, and dockerd's JSON decoder is lenient: it matches
keys case-insensitively and the last spelling wins. So a policy that reads one spelling and forwards the
dict can be walked past (`Type`/`type` twice). Here every key has exactly one accepted spelling (docker-py's
`create_host_config` names at the top level, the Engine API's for nested objects; docker-py's lowercase
kwargs as an alternative for log config and device requests), a key spelled twice in any case is refused
before the model sees it, and an unknown key, unknown nested field or wrong type is an error, never dropped.
The container is then built from these values alone (`agent.policy.container_options`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import docker.types
from pydantic import (
    AliasChoices,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from agent.policy.host_config_types import (
    NAME,
    PORT,
    Capability,
    CgroupRule,
    Closed,
    ContainerPath,
    Cpuset,
    Group,
    HostIp,
    Hostname,
    IpAddress,
    Memory,
    Namespace,
    Size,
    Text,
    Token,
    binds_form,
    either,
    extra_hosts_form,
    links_form,
    port_bindings_form,
    tmpfs_form,
)


# ------------------------------------------------------------------------------------------------ mounts
class BindOptionsSpec(Closed):
    Propagation: Literal["private", "rprivate", "shared", "rshared", "slave", "rslave"] | None = None
    NonRecursive: bool | None = None


class DriverConfigSpec(Closed):
    Name: Text = ""
    Options: dict[Text, Text] | None = None


class VolumeOptionsSpec(Closed):
    NoCopy: bool | None = None
    Labels: dict[Text, Text] | None = None
    DriverConfig: DriverConfigSpec | None = None


class TmpfsOptionsSpec(Closed):
    SizeBytes: int | None = Field(default=None, ge=0)
    Mode: int | None = Field(default=None, ge=0, le=0o7777)


class MountSpec(Closed):
    """An Engine API `Mount`; Docker's own per-type rules are checked here too, so Docker never sees a
    field the policy did not judge."""

    Type: Literal["bind", "volume", "tmpfs"]
    Target: ContainerPath
    Source: Text | None = None
    ReadOnly: bool = False
    Consistency: Literal["default", "consistent", "cached", "delegated"] | None = None
    BindOptions: BindOptionsSpec | None = None
    VolumeOptions: VolumeOptionsSpec | None = None
    TmpfsOptions: TmpfsOptionsSpec | None = None

    @model_validator(mode="after")
    def _fits_type(self) -> MountSpec:
        extra = {"bind": (self.VolumeOptions, self.TmpfsOptions),
                 "volume": (self.BindOptions, self.TmpfsOptions),
                 "tmpfs": (self.BindOptions, self.VolumeOptions)}[self.Type]
        if any(option is not None for option in extra):
            raise ValueError(f"options of another mount type on a {self.Type} mount")
        if self.Type == "tmpfs" and self.Source:
            raise ValueError("a tmpfs mount takes no Source")
        if self.Type == "bind" and not (self.Source or "").startswith("/"):
            raise ValueError("a bind mount needs an absolute host path as Source")
        if self.Type == "volume" and not NAME.match(self.Source or ""):
            raise ValueError("a volume mount needs a volume name as Source ([a-zA-Z0-9][a-zA-Z0-9_.-]+)")
        return self

    def to_docker(self, source: str | None) -> docker.types.Mount:
        """A fresh docker-py Mount with exactly the validated fields (`source`: the judged host path)."""
        bind = self.BindOptions or BindOptionsSpec()
        volume = self.VolumeOptions or VolumeOptionsSpec()
        tmpfs = self.TmpfsOptions or TmpfsOptionsSpec()
        driver = None
        if volume.DriverConfig is not None:
            config = volume.DriverConfig
            driver = docker.types.DriverConfig(config.Name, dict(config.Options or {}))
        mount = docker.types.Mount(
            target=self.Target, source=source or "", type=self.Type, read_only=self.ReadOnly,
            consistency=self.Consistency, propagation=bind.Propagation, no_copy=bool(volume.NoCopy),
            labels=dict(volume.Labels) if volume.Labels else None, driver_config=driver,
            tmpfs_size=tmpfs.SizeBytes or None, tmpfs_mode=tmpfs.Mode,
        )
        if bind.NonRecursive:
            mount.setdefault("BindOptions", {})["NonRecursive"] = True
        return mount


class BindSpec(Closed):
    """One `binds` entry, whichever docker-py form it came in: `src:dst[:opts]` or the dict form."""

    source: Text
    target: ContainerPath
    read_only: bool = False
    propagation: Literal["private", "rprivate", "shared", "rshared", "slave", "rslave"] | None = None

    @property
    def named(self) -> bool:
        return not self.source.startswith("/")

    @model_validator(mode="after")
    def _source(self) -> BindSpec:
        if not self.source.startswith("/") and not NAME.match(self.source):
            raise ValueError(f"{self.source!r} is neither an absolute host path nor a volume name")
        if ":" in self.source or "," in self.source:
            raise ValueError(f"{self.source!r}: a bind's host path cannot hold ':' or ','")
        return self

    def bind_string(self, source: str) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"{source}:{self.target}:{mode}{',' + self.propagation if self.propagation else ''}"


# ---------------------------------------------------------------------------------------------- tmpfs, ports
class TmpfsSpec(Closed):
    target: ContainerPath
    options: list[str]


class HostPortSpec(Closed):
    HostIp: IpAddress | Literal[""] = ""
    HostPort: Annotated[str, Field(pattern=PORT.pattern)] = ""


# ------------------------------------------------------------------------------------------------ others
class UlimitSpec(Closed):
    Name: Token
    Soft: int
    Hard: int


class LogConfigSpec(Closed):
    Type: Token = Field(validation_alias=AliasChoices("Type", "type"))
    options: dict[Text, Text] | None = either("Config", "config")  # `Config` would be pydantic's own


class DeviceRequestSpec(Closed):
    Driver: Text | None = either("Driver", "driver")
    Count: int | None = either("Count", "count")
    DeviceIDs: list[Token] | None = either("DeviceIDs", "device_ids")
    Capabilities: list[list[Token]] | None = either("Capabilities", "capabilities")
    Options: dict[Text, Text] | None = either("Options", "options")

    def to_docker(self) -> docker.types.DeviceRequest:
        return docker.types.DeviceRequest(
            driver=self.Driver or "", count=self.Count or 0, device_ids=list(self.DeviceIDs or []),
            capabilities=[list(c) for c in self.Capabilities or []], options=dict(self.Options or {}))


class RestartPolicySpec(Closed):
    Name: Literal["", "no", "always", "unless-stopped", "on-failure"] = ""
    MaximumRetryCount: int = 0


Ulimits = list[UlimitSpec]
Binds = Annotated[list[BindSpec], BeforeValidator(binds_form)]
Tmpfs = Annotated[list[TmpfsSpec], BeforeValidator(tmpfs_form)]
PortBindings = Annotated[dict[str, list[HostPortSpec]], BeforeValidator(port_bindings_form)]
ExtraHosts = Annotated[dict[Hostname, HostIp], BeforeValidator(extra_hosts_form)]
Links = Annotated[list[Token], BeforeValidator(links_form)]


# Swarm's own grammar (swarmkit's constraint parser): anything else it would refuse only at create time.
Constraint = Annotated[str, Field(
    pattern=r"^\s*[A-Za-z_][A-Za-z0-9_.-]+\s*(==|!=)\s*[A-Za-z0-9:_.*()?+\[\]\\^$|/-]+\s*$", max_length=256)]
SpreadDescriptor = Annotated[str, Field(pattern=r"^(node|engine)\.labels\.[A-Za-z0-9_.-]+$", max_length=256)]


class PlacementSpec(Closed):
    """Where Swarm may put the run's task (engine swarm only): added to the agent's own placement, so a run
    can narrow where it runs, never widen it (Swarm requires every constraint)."""

    constraints: list[Constraint] | None = Field(None, max_length=32)
    preferences: list[SpreadDescriptor] | None = Field(None, max_length=8)


class HostConfigSpec(Closed):
    """Every `host_config` key the agent knows (docs/run-options.md says what the policy does with each)."""

    auto_remove: bool | None = None
    restart_policy: RestartPolicySpec | None = None
    mem_limit: Memory | None = None
    memswap_limit: Memory | None = None
    mem_reservation: Memory | None = None
    shm_size: Size | None = None
    nano_cpus: int | None = Field(None, ge=0)
    cpu_quota: int | None = None
    cpu_period: int | None = Field(None, ge=0, le=1_000_000)
    pids_limit: int | None = None
    cpu_shares: int | None = Field(None, ge=0)
    cpuset_cpus: Cpuset | None = None
    cpuset_mems: Cpuset | None = None
    blkio_weight: int | None = Field(None, ge=0, le=1000)
    mem_swappiness: int | None = Field(None, ge=-1, le=100)
    oom_score_adj: int | None = Field(None, ge=-1000, le=1000)
    oom_kill_disable: bool | None = None
    init: bool | None = None
    read_only: bool | None = None
    privileged: bool | None = None
    publish_all_ports: bool | None = None
    isolation: Literal["", "default"] | None = None
    storage_opt: dict[Token, Token] | None = None
    group_add: list[Group] | None = None
    cap_add: list[Capability] | None = None
    cap_drop: list[Capability] | None = None
    devices: list[Token] | None = None
    device_cgroup_rules: list[CgroupRule] | None = None
    device_requests: list[DeviceRequestSpec] | None = None
    security_opt: list[Text] | None = None
    sysctls: dict[Token, Token] | None = None
    ulimits: Ulimits | None = None
    log_config: LogConfigSpec | None = None
    dns: list[IpAddress] | None = None
    dns_search: list[Hostname] | None = None
    dns_opt: list[Token] | None = None
    extra_hosts: ExtraHosts | None = None
    binds: Binds | None = None
    volumes: Binds | None = None
    mounts: list[MountSpec] | None = None
    tmpfs: Tmpfs | None = None
    volume_driver: Token | None = None
    volumes_from: list[Token] | None = None
    links: Links | None = None
    network_mode: Annotated[str, Field(pattern=r"^(container:)?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")] | None = None
    port_bindings: PortBindings | None = None
    pid_mode: Namespace | None = None
    ipc_mode: Namespace | None = None
    uts_mode: Namespace | None = None
    userns_mode: Namespace | None = None
    runtime: Token | None = None
    cgroup_parent: Token | None = None
    placement: PlacementSpec | None = None  # ours, not docker-py's: Swarm placement (engine swarm)


KNOWN_KEYS = frozenset(HostConfigSpec.model_fields)
_BIND_LIST = TypeAdapter(Binds, config=ConfigDict(strict=True))


def parse_binds(value: Any) -> list[BindSpec]:
    """Binds in any docker-py form (`SRC:DST[:OPTS]` strings or `{src: {bind, mode}}`), typed."""
    try:
        return _BIND_LIST.validate_python(value)
    except ValidationError as exc:
        raise ValueError("; ".join(_describe(e).removeprefix("host_config") for e in exc.errors())) from None


def case_collisions(value: Any, where: str = "host_config") -> list[str]:
    """Keys spelled twice in any case, at any depth: dockerd would take the last, whatever we checked."""
    found: list[str] = []
    if isinstance(value, Mapping):
        seen: dict[str, str] = {}
        for key, item in value.items():
            folded = str(key).casefold()
            if folded in seen:
                found.append(f"{where}: keys {seen[folded]!r} and {str(key)!r} are the same key to Docker")
            seen.setdefault(folded, str(key))
            found += case_collisions(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += case_collisions(item, f"{where}[{index}]")
    return found


def parse_host_config(raw: Any) -> tuple[HostConfigSpec | None, list[str]]:
    """The validated model, or None and every reason it was refused (one message per problem)."""
    if not isinstance(raw, Mapping):
        return None, [f"host_config must be an object, not {type(raw).__name__}"]
    problems = case_collisions(raw)
    unknown = [str(key) for key in raw if key not in KNOWN_KEYS]
    if unknown:
        problems.append(f"host_config key(s) {unknown} are not supported by this agent "
                        "(docs/run-options.md lists the keys it knows)")
    if problems:
        return None, problems
    try:
        return HostConfigSpec.model_validate(dict(raw)), []
    except ValidationError as exc:
        return None, [_describe(error) for error in exc.errors(include_url=False, include_input=False)]


def _describe(error: Any) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return f"host_config{loc}: {message}"


# ------------------------------------------------------------------------------------------- agent settings
def parse_volume(spec: str) -> BindSpec:
    """`host-path-or-volume:container-path[:ro|rw]`, Docker's `-v` syntax, as the run configs' typed bind."""
    try:
        (bind,) = parse_binds([spec.strip()])
    except ValueError as exc:
        raise ValueError(f"invalid volume {spec!r}: use SOURCE:TARGET[:ro|rw] with an absolute host path "
                         f"or a volume name, and an absolute container path ({exc})") from None
    return bind


def parse_gpus(spec: str) -> docker.types.DeviceRequest:
    """Docker's `--gpus`: `all`, a count (`2`) or device ids (`device=0,1` or `GPU-3a2...`)."""
    text = spec.strip()
    if text == "all":
        return docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])
    if text.isdigit() and int(text) > 0:
        return docker.types.DeviceRequest(count=int(text), capabilities=[["gpu"]])
    ids = [part.strip() for part in text.removeprefix("device=").split(",") if part.strip()]
    if not ids or text.isdigit():
        raise ValueError(f"invalid gpus {spec!r}: use all, a positive count, or device=ID[,ID...]")
    return docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])
