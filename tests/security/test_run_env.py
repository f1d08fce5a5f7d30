"""Run envs the policy allows cannot redirect the flow runner: Prefect 1.4.1 itself is the judge.

Hypothesis writes run envs an attacker would try (every spelling of the config keys that decide where the
runner reports and with which key, whole config sections as Python literals, `${cloud.api_key}`
references, proxies and CA bundles, harmless names); the policy (`agent.policy.run_env`) drops what it
denies; the agent builds the container's env (`agent.launch.plan.plan_container`); and the real Prefect
1.4.1, given exactly that env, says what `prefect execute flow-run` would use (`prefect_probe.py`). Every
allowed env must leave it the agent's API URL, key, backend, flow run and runner classes, with no proxy, CA
bundle, remote executor or copy of the key elsewhere in its config.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from agent.api.models import FlowRun
from agent.launch.plan import Identity, plan_container
from agent.policy.rules import PolicyDenied
from agent.policy.run_env import redirecting_names
from agent.settings import Settings
from tests.support.prefect_fixtures import PrefectVenv

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_prefect_env")]

PROBE = Path(__file__).with_name("prefect_probe.py")
EXAMPLES = int(os.environ.get("LOCAL_AGENT_RUN_ENV_EXAMPLES", "150"))  # per backend
FRESH_CHECKS = 4  # envs also judged by a fresh interpreter, to hold the fast fork mode to the reference

AGENT_KEY = "agent-key-7f3c91"
TENANT = "6d0e3a37-1b5c-4e7a-9c1d-2f4a6b8c0d1e"
RUN_ID, FLOW_ID = "8a1f0c2e-3b4d-4e5f-8a6b-7c8d9e0f1a2b", "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
IDENTITY = Identity("agent-x", ["a"], TENANT, "http://host.docker.internal:4200", [])
ATTACKER_URL = "http://attacker.invalid:6666"
ATTACKER_KEY = "attacker-key-0bad"
ATTACKER_ID = "0badc0de-0000-4000-8000-00000000beef"
ATTACKER_DASK = "tcp://attacker.invalid:8786"
PROXY = "http://attacker.invalid:3128"
# The classes the agent names (`plan.FLOW_RUNNER`, `plan.TASK_RUNNER`), as Prefect resolves them.
FLOW_RUNNER = "prefect.engine.cloud.flow_runner.CloudFlowRunner"
TASK_RUNNER = "prefect.engine.cloud.task_runner.CloudTaskRunner"
LOCAL_CLUSTERS = (None, "distributed.deploy.local.LocalCluster")

# What an attacker would want each key to be; a section-level name gets the nested literal of these.
TARGETS: dict[str, str] = {
    "cloud.api": ATTACKER_URL, "cloud.api_key": ATTACKER_KEY, "cloud.auth_token": ATTACKER_KEY,
    "cloud.tenant_id": ATTACKER_ID, "cloud.endpoint": ATTACKER_URL, "cloud.graphql": ATTACKER_URL,
    "backend": "server", "server.endpoint": ATTACKER_URL, "server.host": ATTACKER_URL,
    "context.flow_run_id": ATTACKER_ID, "context.flow_id": ATTACKER_ID,
    "engine.flow_runner.default_class": "prefect.engine.flow_runner.FlowRunner",
    "engine.task_runner.default_class": "prefect.engine.task_runner.TaskRunner",
    "engine.executor.default_class": "prefect.executors.DaskExecutor",
    "engine.executor.dask.address": ATTACKER_DASK,
    "user_config_path": "/tmp/attacker/config.toml", "backend_config_path": "/tmp/attacker/backend.toml",
    "home_dir": "/tmp/attacker", "logging.format": "${cloud.api_key} %(message)s",
}
GENERIC_VALUES = (ATTACKER_URL, ATTACKER_KEY, ATTACKER_ID, ATTACKER_DASK, "server", "cloud", "", "/tmp",
                  "${cloud.api_key}", "$PREFECT__CLOUD__API_KEY", f"{ATTACKER_URL}/?k=${{cloud.api_key}}",
                  "prefect.engine.flow_runner.FlowRunner", "prefect.executors.DaskExecutor", "{}", "[]")
TRANSPORT = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "socks_proxy", "ftp_proxy",
             "requests_ca_bundle", "curl_ca_bundle", "ssl_cert_file", "ssl_cert_dir", "request_method")
TRANSPORT_VALUES = (PROXY, "socks5://attacker.invalid:1080", "*", "/tmp/attacker/ca.pem", "GET")


# ------------------------------------------------------------------------------------------ strategies


def literal_for(path: tuple[str, ...]) -> str | None:
    """A Python literal that, as the value of section `path`, carries the attacker's value of every key
    below it (Prefect `literal_eval`s env values, so `PREFECT__CLOUD={...}` is a whole section)."""
    nested: dict[str, Any] = {}
    for key, value in TARGETS.items():
        for view in (tuple(key.split(".")), ("context", "config", *key.split("."))):
            if len(view) > len(path) and view[: len(path)] == path:
                node = nested
                for part in view[len(path):-1]:
                    node = node.setdefault(part, {})
                node[view[-1]] = value
    return repr(nested) if nested else None


@st.composite
def case_mutated(draw: st.DrawFn, text: str) -> str:
    mode = draw(st.sampled_from(("upper", "lower", "title", "mixed", "mixed")))
    if mode != "mixed":
        return {"upper": text.upper(), "lower": text.lower(), "title": text.title()}[mode]
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(ch.upper() if flip else ch.lower() for ch, flip in zip(text, flips, strict=True))


@st.composite
def prefect_entries(draw: st.DrawFn) -> list[tuple[str, str]]:
    """One `PREFECT__…` name for a key that matters: itself, under context.config, a section above it or a
    key below it, in any case, with the attacker's value, a literal of the section or a generic value."""
    parts = tuple(draw(st.sampled_from(sorted(TARGETS))).split("."))
    if draw(st.booleans()):
        parts = ("context", "config", *parts)
    shape = draw(st.sampled_from(("key", "key", "section", "below")))
    if shape == "section":
        parts = parts[: draw(st.integers(1, max(1, len(parts) - 1)))]
    elif shape == "below":
        parts = (*parts, draw(st.from_regex(r"[a-z_]{1,8}", fullmatch=True)))
    separator = draw(st.sampled_from(("__", "__", "__", "___", ".")))
    prefixes = ("PREFECT__",) * 5 + ("prefect__", "Prefect__")  # Prefect reads only the first
    prefix = "" if separator == "." else draw(st.sampled_from(prefixes))
    name = prefix + draw(case_mutated(separator.join(parts)))
    own = TARGETS.get(".".join(parts[2:] if parts[:2] == ("context", "config") else parts))
    value = draw(st.sampled_from([v for v in (own, literal_for(parts)) if v] + list(GENERIC_VALUES)))
    return [(name, value)]


@st.composite
def random_sections(draw: st.DrawFn) -> list[tuple[str, str]]:
    """`PREFECT__<section>__<key>` with random names: Prefect reads them all into its config."""
    keys = draw(st.lists(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True), min_size=1, max_size=3))
    return [("PREFECT__" + "__".join(keys), draw(st.sampled_from(GENERIC_VALUES)))]


@st.composite
def transport_entries(draw: st.DrawFn) -> list[tuple[str, str]]:
    return [(draw(case_mutated(draw(st.sampled_from(TRANSPORT)))), draw(st.sampled_from(TRANSPORT_VALUES)))]


@st.composite
def remote_executor(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Two names together: a Dask executor by default, and the attacker's scheduler as its address."""
    return [("PREFECT__ENGINE__EXECUTOR__DEFAULT_CLASS", "prefect.executors.DaskExecutor"),
            (draw(st.sampled_from(("PREFECT__ENGINE__EXECUTOR__DASK__ADDRESS",
                                   "PREFECT__ENGINE__EXECUTOR__DASK"))),
             draw(st.sampled_from((ATTACKER_DASK, repr({"address": ATTACKER_DASK})))))]


@st.composite
def log_formats(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A logging setting whose value names the API key: Prefect interpolates `${…}` and `$VAR` in values."""
    name = draw(st.sampled_from(("FORMAT", "DATEFMT", "LOG_ATTRIBUTES", "EXTRA_LOGGERS")))
    references = ("${cloud.api_key}", "$PREFECT__CLOUD__API_KEY", "${PREFECT__CLOUD__API_KEY}")
    reference = draw(st.sampled_from(references))
    return [(f"PREFECT__LOGGING__{name}", f"{reference} %(message)s")]


harmless = st.tuples(st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True), st.sampled_from(GENERIC_VALUES))
home = st.tuples(st.just("HOME"), st.sampled_from(("/tmp/attacker", "/", "/root")))
entries = st.one_of(prefect_entries(), prefect_entries(), random_sections(), transport_entries(),
                    remote_executor(), log_formats(), st.lists(st.one_of(harmless, home), max_size=2))
run_envs = st.lists(entries, min_size=1, max_size=6).map(lambda groups: dict(e for g in groups for e in g))


def allowed_envs(count: int, seed_value: int) -> list[dict[str, str]]:
    """`count` hostile run envs without the names the policy denies: each one the policy allows as is."""
    drawn: list[dict[str, str]] = []

    @seed(seed_value)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(run_envs)
    def collect(env: dict[str, str]) -> None:
        drawn.append({name: value for name, value in env.items() if not redirecting_names({name: value})})

    collect()
    unique = {json.dumps(env, sort_keys=True): env for env in drawn if env}
    assert all(redirecting_names(env) == [] for env in unique.values())
    return list(unique.values())


# ------------------------------------------------------------------------------------ agent and judge


def container_env(run_env: Mapping[str, str], settings_: Settings, home_dir: Path) -> dict[str, str]:
    """The flow container's env: the image's (PATH, HOME) first, then the agent's spec, Docker-merged."""
    run = FlowRun.model_validate({
        "id": RUN_ID, "version": 1, "state": "Scheduled",
        "serialized_state": {"type": "Scheduled", "start_time": "2024-01-01T00:00:00+00:00"},
        "run_config": {"type": "DockerRun", "image": "flow:1", "env": dict(run_env)},
        "flow": {"id": FLOW_ID, "name": "flow", "core_version": "1.4.1", "storage": None},
    })
    spec = plan_container(run, "flow:1", settings_, IDENTITY).spec
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home_dir), **spec.environment}


def judge(venv: PrefectVenv, envs: list[dict[str, str]], mode: str = "--fork") -> list[dict[str, Any]]:
    """What Prefect 1.4.1 makes of each env (`prefect_probe.py`), one subprocess for all of them."""
    proc = subprocess.run(venv.command([str(PROBE), mode]), input=json.dumps(envs), capture_output=True,
                          text=True, timeout=300, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, f"the probe failed:\n{proc.stderr[-3000:]}"
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    assert len(results) == len(envs)
    return results


def expected(settings_: Settings) -> dict[str, Any]:
    """What the flow runner must use, whatever the run's env: everything the agent set."""
    token = settings_.token
    return {
        "api": IDENTITY.flow_api_url, "api_key": token or None, "tenant_id": TENANT if token else None,
        "backend": settings_.backend, "context_backend": settings_.backend,
        "flow_run_id": RUN_ID, "flow_id": FLOW_ID, "flow_runner": FLOW_RUNNER, "task_runner": TASK_RUNNER,
        "executor_address": None, "proxy": None, "verify": True, "key_copies": [],
    }


def deviations(observed: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """What differs from the agent's values; a config Prefect cannot load stops the runner: no deviation."""
    if "error" in observed:
        return {}
    found = {key: observed.get(key) for key, value in wanted.items() if observed.get(key) != value}
    if observed.get("executor_cluster") not in LOCAL_CLUSTERS:
        found["executor_cluster"] = observed.get("executor_cluster")
    return found


@pytest.fixture(params=["cloud", "server"])
def agent_settings(request: pytest.FixtureRequest) -> Settings:
    """The agent with a key (the cloud backend) and without one (the server backend)."""
    return Settings(api_token=AGENT_KEY) if request.param == "cloud" else Settings()


def test_the_judge_sees_the_agents_values_and_the_fork_mode_matches_a_fresh_interpreter(
    prefect_venv: PrefectVenv, agent_settings: Settings, tmp_path: Path
) -> None:
    envs = [container_env({}, agent_settings, tmp_path), container_env({"A": "1"}, agent_settings, tmp_path)]
    forked = judge(prefect_venv, envs)
    assert forked == judge(prefect_venv, envs, "--fresh")
    assert [deviations(seen, expected(agent_settings)) for seen in forked] == [{}, {}]
    assert all("error" not in seen for seen in forked)


def test_no_env_the_policy_allows_redirects_the_flow_runner(
    prefect_venv: PrefectVenv, agent_settings: Settings, tmp_path: Path
) -> None:
    run_envs_ = allowed_envs(EXAMPLES, 20240611 + len(agent_settings.backend))
    containers = [container_env(env, agent_settings, tmp_path) for env in run_envs_]
    observed = judge(prefect_venv, containers)
    checked = sorted(range(len(containers)), key=lambda i: -len(run_envs_[i]))[:FRESH_CHECKS]
    assert [observed[i] for i in checked] == judge(prefect_venv, [containers[i] for i in checked], "--fresh")
    loaded = [seen for seen in observed if "error" not in seen]
    assert len(loaded) >= len(observed) // 2, "most envs must load, or the judge judges nothing"
    findings = [(env, found) for env, seen in zip(run_envs_, observed, strict=True)
                if (found := deviations(seen, expected(agent_settings)))]
    report = "\n".join(f"run env {json.dumps(env)}\n  -> Prefect uses {json.dumps(found)}"
                        for env, found in findings[:40])
    assert not findings, f"{len(findings)} of {len(run_envs_)} allowed envs redirect the runner:\n" + report


PLANTED_TOML = f"""
[cloud]
api = "{ATTACKER_URL}"
[context.config.cloud]
api = "{ATTACKER_URL}"
"""
# Names the policy denies, each with what it changes when the operator allows `api_env`: the denials are real.
DENIED: dict[str, tuple[str, str]] = {
    "PREFECT__Cloud__Api": (ATTACKER_URL, "api"),
    "PREFECT__CONTEXT__CONFIG__CLOUD__API": (ATTACKER_URL, "api"),
    "PREFECT__CONTEXT__CONFIG__CLOUD__API_KEY": (ATTACKER_KEY, "api_key"),
    "PREFECT__CONTEXT__CONFIG__BACKEND": ("server", "context_backend"),
    "http_proxy": (PROXY, "proxy"),
    "ALL_PROXY": (PROXY, "proxy"),
    "REQUESTS_CA_BUNDLE": ("/tmp/attacker/ca.pem", "verify"),
    "PREFECT__USER_CONFIG_PATH": ("{planted}/config.toml", "api"),
    "PREFECT__BACKEND_CONFIG_PATH": ("{planted}/config.toml", "api"),
}


def test_each_denied_name_really_redirects_the_runner_when_api_env_allows_it(
    prefect_venv: PrefectVenv, tmp_path: Path
) -> None:
    (tmp_path / "config.toml").write_text(PLANTED_TOML)
    strict = Settings(api_token=AGENT_KEY)
    lenient = Settings(api_token=AGENT_KEY, allowed_run_overrides=["api_env"])
    envs = {name: {name: value.format(planted=tmp_path)} for name, (value, _) in DENIED.items()}
    for name, env in envs.items():
        assert redirecting_names(env) == [name]
        with pytest.raises(PolicyDenied):
            container_env(env, strict, tmp_path)
    observed = judge(prefect_venv, [container_env(env, lenient, tmp_path) for env in envs.values()])
    changed = {name: sorted(deviations(seen, expected(lenient)))
               for name, seen in zip(envs, observed, strict=True)}
    missed = {name: changed[name] for name, (_, field) in DENIED.items() if field not in changed[name]}
    assert not missed, f"denied names that changed nothing (or something else) in Prefect: {missed}"
