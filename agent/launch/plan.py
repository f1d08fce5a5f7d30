"""What one flow run becomes on Docker: image, pull decision, command, environment, labels, container spec.

Pure functions, no I/O: the launch pipeline (`agent.launch.pipeline`) calls them between its engine and API
steps, and `local-agent explain` prints the same spec without launching anything.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from agent.api.models import DOCKER_RUN_CONFIGS, Attempts, FlowRun, attempts_of, parse_attempts
from agent.policy.options import Decision
from agent.policy.rules import Policy
from agent.runtime.docker_types import FLOW_RUN_LABEL, ContainerSpec, container_name_for
from agent.runtime.images import names_registry
from agent.settings import Settings

HOST_GATEWAY_NAME = "host.docker.internal"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1"})
LABEL_FLOW_RUN_ID = FLOW_RUN_LABEL  # one spelling, shared with the runtime (adoption by name)
LABEL_FLOW_ID = "io.prefect.flow-id"
LABEL_FLOW_NAME = "io.prefect.flow-name"
LABEL_AGENT = "io.local-agent.agent"
LABEL_FLOW_RUN_NAME = "io.local-agent.flow-run-name"  # `--show-flow-logs` prefix after a restart
# Which launch of the run a container is, and what ended the earlier ones (`Attempts`: infrastructure deaths).
LABEL_ATTEMPT = "io.local-agent.attempt"
LABEL_INFRA_HISTORY = "io.local-agent.infra-history"
FLOW_RUNNER = "prefect.engine.cloud.CloudFlowRunner"
TASK_RUNNER = "prefect.engine.cloud.CloudTaskRunner"


class LaunchError(Exception):
    """This run cannot be launched as configured; the message becomes its Failed state and ERROR log."""

    failure_reason = "config"  # the `reason` label of local_agent_runs_failed_total


class PullPolicy(enum.StrEnum):
    """When to pull before create (`PULL_POLICY`; `--no-pull` is NEVER)."""

    DEFAULT = "default"  # Prefect's rule, refined: pull if the image names a registry or is missing
    ALWAYS = "always"
    IF_NOT_PRESENT = "if-not-present"
    NEVER = "never"


@dataclass(frozen=True)
class Identity:
    """What start-up learned and every launch needs."""

    agent_name: str
    labels: list[str]
    tenant_id: str
    flow_api_url: str
    networks: list[str]
    host_id: str = ""  # the Docker host's id (reconcile.host_id), recorded in every claim


def pull_policy(settings: Settings) -> PullPolicy:
    """`--no-pull` is the historical spelling of `--pull-policy never`."""
    return PullPolicy.NEVER if settings.no_pull else PullPolicy(settings.pull_policy)


def should_pull(policy: PullPolicy, image: str, present: bool) -> bool:
    """Whether to pull `image` now; NEVER with a missing image is the caller's ImageNotFound."""
    if policy is PullPolicy.ALWAYS:
        return True
    if policy is PullPolicy.NEVER:
        return False
    if policy is PullPolicy.IF_NOT_PRESENT:
        return not present
    return names_registry(image) or not present


def resolve_image(run: FlowRun) -> str:
    """Docker storage names the image; else a DockerRun's `image`; anything else is not ours to run (§2.4).

    Prefect falls back to `prefecthq/prefect:<core_version>`, which cannot hold the flow's code unless the
    flow uses some other storage, which this agent does not support: refusing is clearer than a doomed pull.
    """
    storage = run.flow.storage or {}
    check_run_config(run)
    if storage.get("type") == "Docker":
        name, tag = storage.get("image_name"), storage.get("image_tag")
        if not name:
            raise LaunchError("Flow storage is of type Docker but names no image (image_name is empty)")
        image = f"{name}:{tag}" if tag else str(name)
        registry = (storage.get("registry_url") or "").rstrip("/")
        return f"{registry}/{image}" if registry else image
    run_image = (run.run_config or {}).get("image")
    if run_image:
        return str(run_image)
    found = storage.get("type") or "none"
    raise LaunchError(
        f"Flow {run.flow.name!r} was not deployed with Docker storage (storage type: {found}) and its run "
        "config names no image: the LocalAgent runs flows from Docker images only. Register the flow with "
        "Docker storage, or with DockerRun(image=...)."
    )


def check_run_config(run: FlowRun) -> None:
    """Null, UniversalRun and DockerRun are fine; a LocalRun or KubernetesRun was meant for another agent."""
    kind = (run.run_config or {}).get("type")
    if kind is not None and kind not in DOCKER_RUN_CONFIGS:
        raise LaunchError(
            f"Flow run has a run config of type {kind}, which the LocalAgent (a Docker agent) cannot run; "
            "use DockerRun or UniversalRun, or give the run labels of an agent that handles it"
        )


def flow_command(core_version: str | None) -> list[str]:
    """`prefect execute flow-run`; `cloud-flow` for flows registered by Prefect < 0.13 (§2.4).

    Prefect also picks cloud-flow for a null core_version, but 1.x images have no such command, and a
    backend that omits the version is far likelier to serve a modern flow: we run flow-run and warn.
    """
    if core_version is None:
        logger.warning("flow has no core_version; assuming Prefect >= 0.13 (prefect execute flow-run)")
        return ["prefect", "execute", "flow-run"]
    if _version_tuple(core_version) < (0, 13, 0):
        return ["prefect", "execute", "cloud-flow"]
    return ["prefect", "execute", "flow-run"]


def _version_tuple(version: str) -> tuple[int, ...]:
    head = version.split("+", 1)[0]
    parts: list[int] = []
    for piece in head.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
        if not piece.isdigit():
            break  # "0.13.0rc1" -> (0, 13, 0); "0.12.dev4" -> (0, 12, 0)
    return tuple(parts + [0] * (3 - len(parts)))


def flow_api_url(api: str, override: str | None) -> str:
    """The API as flow containers see it: `override`, else `api` with loopback made host.docker.internal.

    Port and path are kept: Prefect's rewrite to `host.docker.internal:<server.port>` dropped them (§7.14).
    """
    if override:
        return override
    parts = urlsplit(api)
    if (parts.hostname or "") not in LOCAL_HOSTS:
        return api
    netloc = HOST_GATEWAY_NAME + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}{':' + parts.password if parts.password else ''}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def build_env(run: FlowRun, image: str, settings: Settings, identity: Identity,
              run_token: str | None = None) -> dict[str, str]:
    """The flow container's env, in DockerAgent.populate_env_vars order (§2.4): later steps win.
    `run_token`: the run's own FLOW_RUN token, given instead of the agent's (`agent.launch.run_tokens`)."""
    env: dict[str, str] = {
        "PREFECT__CLOUD__API": identity.flow_api_url,
        "PREFECT__LOGGING__LEVEL": settings.flow_log_level,
    }
    env.update(settings.env_vars)
    run_env = (run.run_config or {}).get("env") or {}
    env.update({str(k): str(v) for k, v in run_env.items()})
    send_logs = (
        settings.send_flow_run_logs
        and env.get("PREFECT__CLOUD__SEND_FLOW_RUN_LOGS", "true").lower() != "false"
    )
    env["PREFECT__CLOUD__SEND_FLOW_RUN_LOGS"] = str(send_logs).lower()
    token = run_token or settings.token or ""
    env.update(
        {
            "PREFECT__BACKEND": settings.backend,
            "PREFECT__CLOUD__API_KEY": token,
            "PREFECT__CLOUD__AUTH_TOKEN": token,  # flow images with Prefect < 1.0
            "PREFECT__CLOUD__TENANT_ID": identity.tenant_id if token else "",
            "PREFECT__CLOUD__AGENT__LABELS": str(list(identity.labels)),
            "PREFECT__CONTEXT__FLOW_RUN_ID": run.id,
            "PREFECT__CONTEXT__FLOW_ID": run.flow.id,
            "PREFECT__CONTEXT__IMAGE": image,
            "PREFECT__CLOUD__USE_LOCAL_SECRETS": "false",
            "PREFECT__ENGINE__FLOW_RUNNER__DEFAULT_CLASS": FLOW_RUNNER,
            "PREFECT__ENGINE__TASK_RUNNER__DEFAULT_CLASS": TASK_RUNNER,
            "PREFECT__LOGGING__LOG_TO_CLOUD": str(send_logs).lower(),
        }
    )
    return env


def container_labels(run: FlowRun, agent_name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our labels win over user-supplied ones: they are how this agent finds its own containers."""
    return {
        **(extra or {}),
        LABEL_FLOW_RUN_ID: run.id,
        LABEL_FLOW_ID: run.flow.id,
        LABEL_FLOW_NAME: run.flow.name,
        LABEL_AGENT: agent_name,
        **({LABEL_FLOW_RUN_NAME: run.name} if run.name else {}),
        **attempt_labels(attempts_of(run.serialized_state)),
    }


def attempt_labels(attempts: Attempts) -> dict[str, str]:
    """A first attempt carries none: the labels of every ordinary run stay as they were."""
    if attempts.number == 1:
        return {}
    return {LABEL_ATTEMPT: str(attempts.number), LABEL_INFRA_HISTORY: json.dumps(list(attempts.history))}


def attempts_from_labels(labels: Mapping[str, str]) -> Attempts:
    """The attempt a container was launched as (`attempt_labels`); attempt 1 without them."""
    try:
        history = json.loads(labels.get(LABEL_INFRA_HISTORY, "[]"))
    except ValueError:
        history = []
    return parse_attempts(labels.get(LABEL_ATTEMPT, 1), history)


def load_container_options() -> None:
    """Import the container-option modules (their pydantic models: ~3 MiB, ~25 ms) ahead of a launch.

    Only a launch needs them, so an idle agent never loads them; the pipeline calls this while a prefetched
    run waits for its start time, so the first launch does not pay for the import either.
    """
    import agent.policy.agent_options
    import agent.policy.container_options  # noqa: F401


@dataclass(frozen=True)
class ContainerPlan:
    """The container of one run, and how it came to be (for the run log, debug logs and `explain`)."""

    spec: ContainerSpec
    decisions: list[Decision]
    notices: list[str]  # policy clamps and ignored keys, written to the run's log
    named_volumes: list[str]  # agent-level named volumes, created with the agent's labels before launch


def plan_container(
    run: FlowRun, image: str, settings: Settings, identity: Identity, policy: Policy | None = None,
    run_token: str | None = None,
) -> ContainerPlan:
    """Agent defaults < run config (under the policy) < what the flow runner needs; raises `PolicyDenied`."""
    from agent.policy.agent_options import agent_options  # see `load_container_options`
    from agent.policy.container_options import apply_run_config

    policy = policy or Policy.from_settings(settings)
    run_env = (run.run_config or {}).get("env")
    policy.check_run_env(run_env if isinstance(run_env, dict) else {})
    options = agent_options(settings, identity.networks)
    run_config = run.run_config if (run.run_config or {}).get("type") == "DockerRun" else None
    apply_run_config(options, run_config, policy)
    if options.host_config.get("network_mode") == "host" and not settings.flow_api_url:
        identity = dataclasses.replace(identity, flow_api_url=settings.api)  # loopback is the host's own
    spec = ContainerSpec(
        name=container_name_for(run.id),
        image=image,
        command=flow_command(run.flow.core_version),
        environment=build_env(run, image, settings, identity, run_token),
        labels=container_labels(run, identity.agent_name, settings.container_labels),
        extra_hosts=options.extra_hosts,
        host_config=options.host_config,
        networks=options.networks,
    )
    return ContainerPlan(spec, options.decisions, options.notices, options.named_volumes)


def build_spec(run: FlowRun, image: str, settings: Settings, identity: Identity) -> ContainerSpec:
    return plan_container(run, image, settings, identity).spec


def describe(spec: ContainerSpec) -> dict[str, Any]:
    """The spec without secrets, for debug logs: secret-named env values, URL passwords and known secrets
    masked (`agent.ops.redact`), whatever sink the line goes to."""
    from agent.ops.logs import SECRETS
    from agent.ops.redact import mask_data, mask_env

    return {
        "name": spec.name,
        "image": spec.image,
        "command": spec.command,
        "env": mask_env(spec.environment, SECRETS),
        "labels": mask_data(spec.labels, SECRETS),
    }
