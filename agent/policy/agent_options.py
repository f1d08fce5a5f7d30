"""The operator's defaults for every flow container, from the agent's settings (trusted: the policy governs
run configs, `agent.policy.container_options`)."""

from __future__ import annotations

from agent.policy.host_config import parse_gpus, parse_volume
from agent.policy.host_paths import clean
from agent.policy.options import AGENT, DEFAULT, Decision, Options, env_of
from agent.policy.rules import NANO, parse_memory
from agent.settings import Settings

HOST_GATEWAY = {"host.docker.internal": "host-gateway"}  # Docker >= 20.10 resolves it to the host (Linux too)
NETWORK_MODES = ("host", "none")  # agent-level network names that are modes, not networks to join


def agent_options(settings: Settings, networks: list[str]) -> Options:
    """The operator's defaults for every flow container (all trusted: the policy governs run configs)."""
    options = Options()
    _agent_network(options, settings, networks)
    for spec in settings.volumes:
        volume = parse_volume(spec)
        bind = volume.bind_string(volume.source if volume.named else clean(volume.source))
        options.host_config.setdefault("volumes", []).append(bind)
        options.decisions.append(Decision("volumes", bind, AGENT, env_of("volumes")))
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
