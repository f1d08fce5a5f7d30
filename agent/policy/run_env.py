"""What a run config's `env` may not set: where the flow runner reports, with which credential, and where
its tasks and log lines go.

The flow runner (Prefect 1.4.1) builds its config from `PREFECT__<SECTION>__<KEY>` variables (names after the
prefix lower-cased; a value may be a Python literal, so `PREFECT__CLOUD="{...}"` replaces a whole section; a
value is interpolated, so `${cloud.api_key}` or `$PREFECT__CLOUD__API_KEY` in a log format copies the key
into every log line), then merges `context.config` over it; its HTTP client (requests) honours the usual proxy
and CA variables; and a Dask executor ships the context, key included, to its scheduler. A run's env could
thus hand the runner's token (the agent's own, where the API cannot mint per-run tokens) to someone else in
many ways. Each is denied unless the operator allows `api_env`:

* the API, backend and credential keys and the run's identity (`API_ENV_NAMES`), in any spelling;
* everything under `PREFECT__SERVER__`, `PREFECT__CONTEXT__CONFIG__` and `PREFECT__ENGINE__EXECUTOR__`;
* a name that is a whole section above any of those (`PREFECT__CLOUD`, `PREFECT__CONTEXT`, `PREFECT__ENGINE`);
* the config files Prefect reads first (`PREFECT__USER_CONFIG_PATH`, `…BACKEND_CONFIG_PATH`, `…HOME_DIR`);
* proxies and CA bundles (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `REQUESTS_CA_BUNDLE`, ... any case);
* a `PREFECT__` value that interpolates (`$NAME`, `${section.key}`);
* another spelling of a name the agent sets after the run's env (`AGENT_ENV_NAMES`): the agent's exact
  spelling comes later and wins, so this is defence in depth.

Tested from the attacker's side against Prefect 1.4.1 itself: tests/security/test_run_env.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

API_ENV_NAMES = frozenset({
    "PREFECT__CLOUD__API", "PREFECT__CLOUD__API_KEY", "PREFECT__CLOUD__AUTH_TOKEN",
    "PREFECT__CLOUD__TENANT_ID", "PREFECT__CLOUD__ENDPOINT", "PREFECT__CLOUD__GRAPHQL", "PREFECT__BACKEND",
    "PREFECT__CONTEXT__FLOW_RUN_ID", "PREFECT__CONTEXT__FLOW_ID",
})
PROTECTED_SECTIONS = ("PREFECT__SERVER", "PREFECT__CONTEXT__CONFIG", "PREFECT__ENGINE__EXECUTOR")
CONFIG_NAMES = frozenset({"PREFECT__USER_CONFIG_PATH", "PREFECT__BACKEND_CONFIG_PATH", "PREFECT__HOME_DIR"})
TRANSPORT_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                             "SSL_CERT_FILE", "SSL_CERT_DIR"})
# Set by the agent after the run's env (agent.launch.plan.build_env): only the exact spelling may be given.
AGENT_ENV_NAMES = frozenset({
    "PREFECT__CLOUD__SEND_FLOW_RUN_LOGS", "PREFECT__LOGGING__LOG_TO_CLOUD", "PREFECT__CLOUD__AGENT__LABELS",
    "PREFECT__CONTEXT__IMAGE", "PREFECT__CLOUD__USE_LOCAL_SECRETS",
    "PREFECT__ENGINE__FLOW_RUNNER__DEFAULT_CLASS", "PREFECT__ENGINE__TASK_RUNNER__DEFAULT_CLASS",
})
PROTECTED_PATHS = API_ENV_NAMES | AGENT_ENV_NAMES | frozenset(PROTECTED_SECTIONS)
INTERPOLATION = re.compile(r"\$\{?[A-Za-z_]")


def redirects(name: str) -> bool:
    """Whether setting `name` (whatever its value) could change where, or as whom, the flow runner talks."""
    upper = name.upper()
    if upper in API_ENV_NAMES or upper in CONFIG_NAMES or upper in TRANSPORT_NAMES:
        return True
    if upper in PROTECTED_SECTIONS or upper.startswith(tuple(f"{s}__" for s in PROTECTED_SECTIONS)):
        return True
    if any(path.startswith(f"{upper}__") for path in PROTECTED_PATHS):  # a whole section, as a literal
        return True
    return upper in AGENT_ENV_NAMES and name != upper


def interpolates(name: str, value: object) -> bool:
    """A Prefect setting whose value Prefect would expand (`$NAME`, `${section.key}`): it can copy the key."""
    return name.upper().startswith("PREFECT__") and INTERPOLATION.search(str(value)) is not None


def redirecting_names(env: Mapping[str, object]) -> list[str]:
    """The names in a run's env that the policy denies without `api_env`, sorted."""
    return sorted(str(name) for name, value in env.items()
                  if redirects(str(name)) or interpolates(str(name), value))
