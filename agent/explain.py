"""`local-agent explain <flow-run-id>`: the container the agent would create for a run, and why.

Many "my flow cannot reach the API" reports (PrefectHQ/prefect#4963, #4840) come from users who cannot see
the effective configuration. This reads the run with the agent's own settings (same API, same token), runs
the same code the launch does (`resolve_image`, the policy, `plan_container`) and prints each field with
its source: agent default or setting, run config, policy clamp, or the flow runner's fixed variables. It
claims nothing and creates nothing; Docker is only asked whether the image is present (if reachable).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.api.cloud import ApiError, CloudClient
from agent.api.models import FlowRun
from agent.launch.plan import (
    Identity,
    LaunchError,
    build_env,
    flow_api_url,
    plan_container,
    pull_policy,
    resolve_image,
)
from agent.launch.plan import should_pull as policy_says_pull
from agent.ops.logs import Masker
from agent.ops.redact import mask_data, mask_env_value
from agent.policy.options import DEFAULT, RUN, Decision, env_of
from agent.policy.rules import Policy, PolicyDenied, human_bytes, normalize_image
from agent.runtime.docker import ContainerSpec, DockerError
from agent.runtime.engines import open_runtime, swarm_options
from agent.settings import Settings, settings_secrets

FIXED = "flow runner (fixed)"
_MEMORY_FIELDS = frozenset({"mem_limit", "memswap_limit", "mem_reservation"})
_PROBE = "\x00explain-probe"


@dataclass
class Explanation:
    flow_run_id: str
    flow_name: str = ""
    state: str | None = None
    verdict: str = "launch"  # launch | denied | cannot launch
    reason: str = ""
    image: str | None = None
    fields: list[Decision] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    service: dict[str, Any] | None = None  # the Swarm service spec (engine swarm), secrets masked

    def add(self, name: str, value: Any, source: str, note: str = "") -> None:
        self.fields.append(Decision(name, value, source, note))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fields"] = [_jsonable(asdict(d)) for d in self.fields]
        return data


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


async def fetch_run(settings: Settings, flow_run_id: str) -> tuple[FlowRun | None, str]:
    """The run and the tenant id, read with the agent's own API settings."""
    cloud = CloudClient(settings.api, settings.token, settings.request_timeout)
    await cloud.connect()
    try:
        if settings.api_token:
            tenant_id, _ = await cloud.auth_info()
        else:
            tenant_id = await cloud.first_tenant_id()
        run = await cloud.flow_run(flow_run_id)
    finally:
        await cloud.close()
    return run, str(tenant_id or "")


def explain_run(run: FlowRun, settings: Settings, identity: Identity,
                image_present: bool | None = None) -> Explanation:
    """Everything `launch_claimed` would decide for `run`, without doing any of it; secrets masked.

    Env values with secret names become `***`; every other string (values, reason, notices) is shown with
    URL passwords and the settings' known secrets masked, since run configs and labels can carry them too.
    """
    mask = Masker(settings_secrets(settings))
    result = _explain(run, settings, identity, image_present, mask)
    result.image = mask_data(result.image, mask)
    result.reason = mask(result.reason)
    result.notices = mask_data(result.notices, mask)
    result.fields = [Decision(d.field, mask_data(d.value, mask), d.source, mask(d.note))
                     for d in result.fields]
    return result


def _explain(run: FlowRun, settings: Settings, identity: Identity, image_present: bool | None,
             mask: Masker) -> Explanation:
    result = Explanation(run.id, run.flow.name, run.state)
    policy = Policy.from_settings(settings)
    try:
        image = resolve_image(run)
        result.image = image
        storage = (run.flow.storage or {}).get("type") == "Docker"
        result.add("image", image, "flow storage (Docker)" if storage else RUN, normalize_image(image))
        pattern = policy.check_image(image)
        note = f"allowed by pattern {pattern!r}" if pattern else "no allow-list: any image"
        result.add("image policy", "allowed", env_of("allowed_images"), note)
        _pull(result, settings, image, image_present)
        plan = plan_container(run, image, settings, identity, policy)
    except PolicyDenied as exc:
        result.verdict, result.reason = "denied", str(exc)
        return result
    except LaunchError as exc:
        result.verdict, result.reason = "cannot launch", str(exc)
        return result
    spec = plan.spec
    result.add("name", spec.name, FIXED, "prefect-<flow run id>: one container per run")
    result.add("command", spec.command, FIXED, f"flow core_version {run.flow.core_version}")
    result.fields.extend(plan.decisions)
    result.notices = list(plan.notices)
    for key, value in spec.environment.items():
        result.add(f"env {key}", mask_env_value(key, value, mask), _env_source(key, run, settings))
    for key, value in spec.labels.items():
        source = FIXED if key.startswith(("io.prefect.", "io.local-agent.")) else env_of("container_labels")
        result.add(f"label {key}", value, source)
    if settings.engine == "swarm":
        _service(result, spec, settings, mask)
    return result


def _service(result: Explanation, spec: ContainerSpec, settings: Settings, mask: Masker) -> None:
    """The replicated-job service the Swarm runtime would create (the image as named: the runtime pins it
    by digest or ID at launch), or why Swarm cannot run this container."""
    from agent.runtime.swarm_spec import service_spec

    try:
        service = service_spec(spec, swarm_options(settings), spec.image)
    except DockerError as exc:
        result.verdict, result.reason = "cannot launch", str(exc)
        return
    masked = _jsonable(service)
    env = ((masked.get("task_template") or {}).get("ContainerSpec") or {}).get("Env") or []
    for index, entry in enumerate(env):
        key, _, value = str(entry).partition("=")
        env[index] = f"{key}={mask_env_value(key, value, mask)}"
    result.service = mask_data(masked, mask)


def _pull(result: Explanation, settings: Settings, image: str, present: bool | None) -> None:
    policy = pull_policy(settings)
    if present is None:
        pull = "unknown (Docker unreachable)"
    else:
        pull = "yes" if policy_says_pull(policy, image, present) else "no"
        pull += f" (image {'present' if present else 'absent'} on this host)"
    result.add("pull", pull, env_of("pull_policy"), f"pull policy {policy.value}")


def _env_source(key: str, run: FlowRun, settings: Settings) -> str:
    if key in fixed_env_keys(run, settings):
        return FIXED
    if key in ((run.run_config or {}).get("env") or {}):
        return RUN
    if key in settings.env_vars:
        return env_of("env_vars")
    if key == "PREFECT__CLOUD__API" and settings.flow_api_url:
        return env_of("flow_api_url")
    return DEFAULT


def fixed_env_keys(run: FlowRun, settings: Settings) -> set[str]:
    """The variables nothing overrides, found by trying: so this list cannot drift from `build_env`."""
    keys = set(build_env(run, "image", settings, _PROBE_IDENTITY))
    probe = {key: _PROBE for key in keys}
    probed_run = run.model_copy(update={"run_config": {**(run.run_config or {}), "env": probe}})
    env = build_env(probed_run, "image", settings.model_copy(update={"env_vars": probe}), _PROBE_IDENTITY)
    return {key for key, value in env.items() if value != _PROBE}


_PROBE_IDENTITY = Identity("probe", [], "tenant", "http://probe", [])


def render(result: Explanation) -> str:
    lines = [f"Flow run {result.flow_run_id} of flow {result.flow_name!r} (state {result.state})"]
    verdict = {"launch": "the agent would launch this container",
               "denied": "the agent's policy DENIES this run",
               "cannot launch": "the agent CANNOT launch this run"}
    lines.append(f"Verdict: {verdict[result.verdict]}")
    if result.reason:
        lines.append(f"  {result.reason}")
    for decision in result.fields:
        value = decision.value
        if decision.field in _MEMORY_FIELDS and isinstance(value, int) and value > 0:
            value = human_bytes(value)
        shown = value if isinstance(value, str) else json.dumps(_jsonable(value))
        note = f": {decision.note}" if decision.note else ""
        lines.append(f"  {decision.field} = {shown}    [{decision.source}{note}]")
    lines += [f"Run log notice: {notice}" for notice in result.notices]
    if result.service is not None:
        lines += ["Swarm service (replicated job, one task, no restart):",
                  json.dumps(result.service, indent=2, sort_keys=True)]
    return "\n".join(lines)


def _image_present(settings: Settings, image: str | None) -> bool | None:
    if image is None:
        return None
    runtime = open_runtime(settings)
    try:
        return runtime.image_present(image)
    except DockerError:
        return None
    finally:
        runtime.close()


def run_explain(settings: Settings, flow_run_id: str, as_json: bool = False) -> int:
    """CLI entry: 0 when explained (whatever the verdict), 1 when the run cannot be read."""
    mask = Masker(settings_secrets(settings))
    try:
        run, tenant_id = asyncio.run(fetch_run(settings, flow_run_id))
    except ApiError as exc:
        print(mask(f"local-agent explain: cannot read flow run {flow_run_id} from {settings.api}: {exc}"))
        return 1
    if run is None:
        print(mask(f"local-agent explain: no flow run {flow_run_id} at {settings.api}"))
        return 1
    identity = Identity(settings.name, list(settings.labels), tenant_id,
                        flow_api_url(settings.api, settings.flow_api_url), list(settings.network))
    try:
        image = resolve_image(run)
    except LaunchError:
        image = None
    result = explain_run(run, settings, identity, _image_present(settings, image))
    print(json.dumps(result.as_dict(), indent=2) if as_json else render(result))
    return 0
