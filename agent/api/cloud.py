"""The GraphQL boundary: every operation the agent sends to Prefect Cloud / Server 1.x (or our server).

One gql httpx transport (`agent.api.transport`), connected once. Documents are the named
files in `agent/api/operations/`, sent as text (validated against the contract SDL in the tests, never at
runtime: a harmless server-side schema addition must not break the agent). Callers get typed results and
one error tree: `TransientApiError` (connection errors, timeouts, 5xx: retried here a few times, then the
caller backs off), `AuthenticationError`, `StateUpdateFailed` (another agent won the run) and `ApiError`
for everything else.
"""

from __future__ import annotations

import asyncio
from functools import cache
from importlib.resources import files
from typing import Any

import tenacity
from loguru import logger

from agent.api.models import PREFECT_WIRE_VERSION, FlowRun
from agent.api.transport import GraphQLHttp, HttpStatusError, TransportError
from agent.ops.logs import SECRETS
from agent.ops.metrics import METRICS
from agent.version import __version__


class ApiError(Exception):
    """The backend answered with an error that retrying will not fix; `codes`: its GraphQL error codes."""

    api_error_kind = "other"  # the `kind` label of local_agent_api_errors_total

    def __init__(self, message: str, codes: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.codes = codes


class TransientApiError(ApiError):
    """Connection refused or reset, timeout, HTTP 5xx/429: worth retrying with backoff."""

    api_error_kind = "transient"


class AuthenticationError(ApiError):
    """The backend rejected (or requires) credentials."""

    api_error_kind = "auth"


class StateUpdateFailed(ApiError):
    """`State update failed` / VERSION_LOCKING_ERROR: another agent claimed the run first (§4.4)."""

    api_error_kind = "conflict"


@cache
def operation(name: str) -> str:
    """The text of `agent/api/operations/<name>.graphql` (package data, read once)."""
    return files("agent.api.operations").joinpath(f"{name}.graphql").read_text()


def classify_errors(errors: list[dict[str, Any]]) -> ApiError:
    """Map a GraphQL `errors` list to our error tree, by the same substrings the Prefect client matches."""
    text = str(errors)
    message = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
    codes = frozenset(str((e.get("extensions") or {}).get("code")) for e in errors if isinstance(e, dict))
    if "UNAUTHENTICATED" in text or "Malformed Authorization header" in text or "FORBIDDEN" in codes:
        return AuthenticationError(message, codes)
    if "VERSION_LOCKING_ERROR" in codes or "State update failed" in text:
        return StateUpdateFailed(message, codes)
    if "API_ERROR" in text:
        return TransientApiError(message, codes)
    return ApiError(message, codes)


def classify_exception(exc: BaseException) -> ApiError:
    """401/403 auth errors, redirects and other 4xx permanent, the rest (5xx, network, timeout) transient."""
    if isinstance(exc, HttpStatusError):
        code = exc.code
        if code is not None and 300 <= code < 400:  # retrying cannot help; following could leave HTTPS
            return ApiError(f"the API answered with a redirect (HTTP {code}): set the API URL to where it "
                            f"points: {exc}")
        if code in (401, 403):
            return AuthenticationError(f"HTTP {code}: {exc}")
        if code is not None and 400 <= code < 500 and code != 429:
            return ApiError(f"HTTP {code}: {exc}")
        return TransientApiError(f"HTTP {code}: {exc}")
    if isinstance(exc, TransportError):  # no answer, not a GraphQL answer (a proxy's page), not connected
        return TransientApiError(str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError | OSError):
        return TransientApiError(f"{type(exc).__name__}: {exc}".rstrip(": "))
    return ApiError(f"{type(exc).__name__}: {exc}")


class CloudClient:
    """Typed methods over the Prefect 1.x GraphQL API; one instance per agent process."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 15.0, attempts: int = 3) -> None:
        headers = {
            "User-Agent": f"local-agent/{__version__}",
            # Prefect Server stores it on register_agent and de-duplicates agents by it (§2.3).
            "X-PREFECT-CORE-VERSION": PREFECT_WIRE_VERSION,
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"  # never logged: gql/httpx loggers sit at WARNING
        self.timeout = timeout
        self._attempts = attempts
        self._cloud = token is not None
        self._dynamic: dict[str, str] = {}
        self._http = GraphQLHttp(url, headers)

    async def connect(self) -> None:
        await self._http.connect()

    async def close(self) -> None:
        await self._http.close()

    def set_agent_id(self, agent_id: str) -> None:
        self._dynamic["X-PREFECT-AGENT-ID"] = agent_id

    def set_tenant_id(self, tenant_id: str) -> None:
        if self._cloud:  # the Prefect client sends it only with an API key (§1)
            self._dynamic["X-PREFECT-TENANT-ID"] = tenant_id

    async def _execute(
        self,
        name: str,
        variables: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        """Run one named operation; transient failures are retried (`retry=True`) with jittered backoff."""
        attempts = self._attempts if retry else 1
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(TransientApiError),
            stop=tenacity.stop_after_attempt(attempts),
            # 0.5 s, 1 s, 2 s ... capped at 5 s, plus up to 1 s of jitter (works on tenacity 8 and 9)
            wait=tenacity.wait_exponential(multiplier=0.5, max=5) + tenacity.wait_random(0, 1),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt, METRICS.counting_api_errors():
                return await self._execute_once(name, variables, timeout or self.timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _execute_once(
        self, name: str, variables: dict[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        try:  # not connected: the transport's ClosedError, classified transient below
            async with asyncio.timeout(timeout):
                result = await self._http.post(operation(name), variables, dict(self._dynamic))
        except Exception as exc:  # noqa: BLE001 - every transport failure is classified, none escapes raw
            raise classify_exception(exc) from exc
        if result.get("errors"):
            raise classify_errors(result["errors"])
        return result.get("data") or {}

    # ------------------------------------------------------------------ start-up (§3.1, §3.2)

    async def auth_info(self) -> tuple[str | None, str | None]:
        """`(tenant_id, api_token_scope)` of the token (Cloud mode)."""
        info = (await self._execute("auth_info")).get("auth_info") or {}
        return info.get("tenant_id"), info.get("api_token_scope")

    async def first_tenant_id(self) -> str:
        """Server mode: the first tenant; a server without tenants cannot run anything (§2.1)."""
        tenants = (await self._execute("tenant")).get("tenant") or []
        if not tenants:
            raise ApiError(
                "the backend has no tenants; create one first (`prefect server create-tenant`)"
            )
        return str(tenants[0]["id"])

    async def register_agent(self, name: str, labels: list[str], tenant_id: str) -> str:
        variables = {"input": {"type": "LocalAgent", "name": name, "labels": labels, "tenant_id": tenant_id}}
        agent_id = ((await self._execute("register_agent", variables)).get("register_agent") or {}).get("id")
        if not agent_id:
            raise ApiError("Error registering agent: the backend returned no agent id")
        return str(agent_id)

    async def hello(self) -> None:
        await self._execute("hello")

    async def capabilities(self) -> set[str]:
        """Our extensions the backend offers; empty for a plain Prefect Server / Cloud (any error)."""
        try:
            api = (await self._execute("capabilities", retry=False)).get("api") or {}
        except ApiError as exc:
            logger.debug("backend has no capabilities field ({error}): plain polling", error=exc)
            return set()
        return {str(c) for c in api.get("capabilities") or []}

    # ------------------------------------------------------------------ polling (§3.3)

    async def runs_in_queue(
        self, tenant_id: str, labels: list[str], before: str, wait_seconds: float | None = None
    ) -> list[str]:
        """Ids of runs ready before `before`; `wait_seconds` makes the backend hold the request."""
        payload: dict[str, Any] = {"tenant_id": tenant_id, "labels": labels, "before": before}
        timeout = self.timeout
        if wait_seconds:
            payload["wait_seconds"] = wait_seconds
            timeout = self.timeout + wait_seconds  # the HTTP timeout must outlast the server's wait
        data = await self._execute("get_runs_in_queue", {"input": payload}, timeout=timeout, retry=False)
        return [str(i) for i in (data.get("get_runs_in_queue") or {}).get("flow_run_ids") or []]

    async def flow_runs(self, ids: list[str], before: str) -> list[FlowRun]:
        """Metadata of the runs among `ids` that are still claimable, sorted by start time."""
        data = await self._execute("flow_runs", {"ids": ids, "before": before})
        runs = [FlowRun.model_validate(row) for row in data.get("flow_run") or []]
        return sorted(runs, key=FlowRun.sort_key)

    async def flow_run(self, flow_run_id: str) -> FlowRun | None:
        """One run's metadata whatever its state (`local-agent explain`)."""
        rows = (await self._execute("flow_run_by_id", {"id": flow_run_id})).get("flow_run") or []
        return FlowRun.model_validate(rows[0]) if rows else None

    async def flow_run_states(self, ids: list[str]) -> list[dict[str, Any]]:
        """`id`, `state`, `name`, `version` of each run among `ids` that exists (watching, recovery)."""
        data = await self._execute("flow_run_states", {"ids": ids})
        rows: list[dict[str, Any]] = data.get("flow_run") or []
        return rows

    async def submitted_runs(self, agent_id: str) -> list[dict[str, Any]]:
        """This agent id's Submitted runs with their heartbeat and claim marker (restart recovery)."""
        data = await self._execute("submitted_runs", {"agent_id": agent_id})
        rows: list[dict[str, Any]] = data.get("flow_run") or []
        return rows

    async def heartbeat(self, flow_run_id: str) -> None:
        """One `update_flow_run_heartbeat`, never retried: the next beat is the retry."""
        await self._execute("update_flow_run_heartbeat", {"input": {"flow_run_id": flow_run_id}}, retry=False)

    # ------------------------------------------------------------------ deployment (§3.4)

    async def set_flow_run_state(self, flow_run_id: str, state: dict[str, Any], version: int | None) -> None:
        entry = {"flow_run_id": flow_run_id, "version": version, "state": self._masked_state(state)}
        await self._execute("set_flow_run_states", {"input": {"states": [entry]}})

    async def set_flow_run_states_partial(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many claims in one request with per-run outcomes (`id`, `status`, `message`): our server's
        `partial` extension (`agent.launch.claims`)."""
        for entry in entries:
            entry["state"] = self._masked_state(entry["state"])
        variables = {"input": {"states": entries, "partial": True}}
        data = await self._execute("set_flow_run_states", variables)
        outcomes = (data.get("set_flow_run_states") or {}).get("states") or []
        return [o for o in outcomes if isinstance(o, dict)]

    async def set_task_run_state(self, task_run_id: str, state: dict[str, Any], version: int | None) -> None:
        await self.set_task_run_states([(task_run_id, state, version)])

    async def set_task_run_states(self, states: list[tuple[str, dict[str, Any], int | None]]) -> None:
        """(task run id, state, version) each, in one request."""
        entries = [{"task_run_id": task_run_id, "version": version, "state": state}
                   for task_run_id, state, version in states]
        await self._execute("set_task_run_states", {"input": {"states": entries}})

    async def create_flow_run_token(self, flow_run_id: str) -> str:
        """A FLOW_RUN token for this run's container only (capability `flow_run_tokens`); never logged."""
        data = await self._execute("create_flow_run_token", {"input": {"flow_run_id": flow_run_id}})
        token = (data.get("create_flow_run_token") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise ApiError("the API minted no flow-run token")
        return token

    async def running_task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """`id` and `version` of the run's task runs in Running (an infrastructure death leaves them so)."""
        data = await self._execute("running_task_runs", {"flow_run_id": flow_run_id})
        rows: list[dict[str, Any]] = data.get("task_run") or []
        return rows

    @staticmethod
    def _masked_state(state: dict[str, Any]) -> dict[str, Any]:
        """A Failed state's reason may quote Docker's error text, which may quote a secret."""
        if isinstance(state.get("message"), str):
            return {**state, "message": SECRETS(state["message"])}
        return state

    async def write_run_log(self, flow_run_id: str, name: str, message: str, level: str = "INFO") -> None:
        entry = {"flow_run_id": flow_run_id, "name": name, "message": message, "level": level}
        await self.write_run_logs([entry])

    async def write_run_logs(self, logs: list[dict[str, Any]]) -> None:
        """One `write_run_logs` request for all of `logs` (agent.launch.run_logs batches them).

        Every message is masked here, the one door to the run's log, so a secret echoed by Docker (an env
        value, a password in a daemon URL) never reaches the server.
        """
        logs = [{**entry, "message": SECRETS(str(entry.get("message", "")))} for entry in logs]
        data = await self._execute("write_run_logs", {"input": {"logs": logs}})
        if not (data.get("write_run_logs") or {}).get("success"):
            raise ApiError("Writing logs failed.")
