"""The real, unmodified Prefect 1.4.1 client as a test dependency (registered in tests/conftest.py).

Prefect 1.4.1 never goes into the dev virtualenv (it pins old libraries and needs `marshmallow<4`), so it
lives in its own virtualenv under `<repo>/.cache/prefect-1.4.1`, created once and reused by every session.
Tests drive it through subprocesses: that is also how `prefect execute flow-run` and the DockerAgent run in
production.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

from tests.support.images import EXAMPLES_DIR, PREFECT_REQUIREMENTS, REPO_ROOT, file_lock, flow_image_env

FLOWS_DIR = EXAMPLES_DIR / "flows"
REGISTER_SCRIPT = EXAMPLES_DIR / "register.py"
PREFECT_VENV_DIR = REPO_ROOT / ".cache" / "prefect-1.4.1"
_STAMP = ".local-agent-complete"


class ServerLike(Protocol):
    """What these helpers need from `tests.support.server_fixtures.ServerHandle`."""

    url: str
    port: int


@dataclass(frozen=True)
class PrefectVenv:
    """A virtualenv holding Prefect 1.4.1; `run` executes Python code, a script or the `prefect` CLI in it."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def prefect(self) -> Path:
        return self.root / "bin" / "prefect"

    def command(self, args: Sequence[str] | str) -> list[str]:
        """A str is Python source (`python -c`); a list starting with "prefect" is the CLI; else argv."""
        if isinstance(args, str):
            return [str(self.python), "-c", args]
        if args and args[0] == "prefect":
            return [str(self.prefect), *args[1:]]
        return [str(self.python), *args]

    def run(
        self,
        args: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        check: bool = False,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion, capturing text output; `check=True` raises with both streams in the message."""
        proc = subprocess.run(
            self.command(args), env=_full_env(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{args!r} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def popen(
        self, args: Sequence[str] | str, *, env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[str]:
        """Start without waiting; output goes to `log` (a file, so a chatty child never blocks on a pipe)."""
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns the handle
        return subprocess.Popen(
            self.command(args), env=_full_env(env), stdout=out, stderr=subprocess.STDOUT, text=True
        )

    def start_waiting(self, code: str, *args: str, env: Mapping[str, str] | None = None
                      ) -> subprocess.Popen[str]:
        """Start Python `code` with pipes on stdin, stdout and stderr, without waiting. Code that imports
        Prefect and then reads a line from stdin pays its imports (seconds) before the test lets it act;
        `communicate("go\\n")` sends the line and collects the output."""
        return subprocess.Popen(
            self.command(["-c", code, *args]), env=_full_env(env), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )


def _full_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """A given env replaces os.environ (but PATH, LANG...): no PREFECT__* of the user's shell leaks in."""
    if env is None:
        return None
    base = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ", "DOCKER_HOST") if k in os.environ}
    return {**base, **env}


def ensure_prefect_venv(root: Path = PREFECT_VENV_DIR) -> PrefectVenv:
    """Create (or repair) the Prefect 1.4.1 virtualenv; a stamp written last marks a complete one."""
    venv = PrefectVenv(root)
    wanted = "\n".join(PREFECT_REQUIREMENTS)
    stamp = root / _STAMP
    with file_lock(root.with_name(root.name + ".lock")):
        if stamp.exists() and stamp.read_text() == wanted and venv.python.exists():
            return venv
        shutil.rmtree(root, ignore_errors=True)  # a half-created venv from an interrupted run
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True)
        pip = [str(venv.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        wheels = REPO_ROOT / "wheels"
        links = ["--find-links", str(wheels)] if any(wheels.glob("*.whl")) else []
        proc = subprocess.run([*pip, *links, *PREFECT_REQUIREMENTS], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"installing {PREFECT_REQUIREMENTS} failed:\n{proc.stdout}\n{proc.stderr}")
        venv.run("import prefect, marshmallow; assert prefect.__version__ == '1.4.1'", env={}, check=True)
        stamp.write_text(wanted)
    return venv


@pytest.fixture(scope="session")
def prefect_venv() -> PrefectVenv:
    """The shared Prefect 1.4.1 virtualenv (created on first use, then reused across sessions)."""
    return ensure_prefect_venv()


# ------------------------------------------------------------------------------------------- environments


def prefect_env(
    server: ServerLike,
    token: str | None = None,
    *,
    home: Path | None = None,
    api: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """Environment for the Prefect 1.4.1 client against `server`.

    Without a token: the Server backend (no auth). With a token: the Cloud backend with the token as API key,
    which is how a Prefect Cloud user (and our server with `--auth token`) authenticates. HOME and the
    Prefect home point into a private directory so no user config or `auth.toml` leaks in.
    """
    home = home or _scratch_home()
    api = api or server.url
    env = {
        "HOME": str(home),
        "PREFECT__HOME_DIR": str(home / ".prefect"),
        "PREFECT__USER_CONFIG_PATH": str(home / ".prefect" / "config.toml"),
        "PREFECT__BACKEND": "cloud" if token else "server",
        "PREFECT__CLOUD__API": api,
        "PREFECT__SERVER__ENDPOINT": api,
        "PREFECT__SERVER__PORT": str(server.port),
        "PREFECT__CLOUD__API_KEY": token or "",
        "PYTHONUNBUFFERED": "1",
    }
    return {**env, **extra}


def flow_run_env(
    server: ServerLike, flow_run_id: str, token: str | None = None, *, flow_id: str = "", **extra: str
) -> dict[str, str]:
    """The environment a DockerAgent gives a flow container (cloud-api.md §2.4), for host execution."""
    env = prefect_env(server, token)
    env.update(
        {
            "PREFECT__CONTEXT__FLOW_RUN_ID": flow_run_id,
            "PREFECT__CONTEXT__FLOW_ID": flow_id,
            "PREFECT__ENGINE__FLOW_RUNNER__DEFAULT_CLASS": "prefect.engine.cloud.CloudFlowRunner",
            "PREFECT__ENGINE__TASK_RUNNER__DEFAULT_CLASS": "prefect.engine.cloud.CloudTaskRunner",
            "PREFECT__CLOUD__USE_LOCAL_SECRETS": "false",
            "PREFECT__CLOUD__SEND_FLOW_RUN_LOGS": "true",
            "PREFECT__LOGGING__LEVEL": "INFO",
            "PREFECT__CLOUD__AUTH_TOKEN": token or "",
        }
    )
    return {**env, **extra}


_SCRATCH: list[Path] = []


def _scratch_home() -> Path:
    """One private HOME per test process, removed at exit."""
    if not _SCRATCH:
        path = Path(tempfile.mkdtemp(prefix="prefect-home-"))
        atexit.register(shutil.rmtree, path, True)
        _SCRATCH.append(path)
    return _SCRATCH[0]


# ------------------------------------------------------------------------------------ client-side helpers


def register_examples(
    venv: PrefectVenv,
    env: Mapping[str, str],
    *args: str,
    timeout: float = 180,
) -> dict[str, Any]:
    """Run examples/register.py in the venv (the real client registers); returns its JSON summary. The flows
    name the tests' flow image (`images.FLOW_IMAGE`) unless `env` says otherwise, never the demo's."""
    env = {**flow_image_env(), **env}
    proc = venv.run([str(REGISTER_SCRIPT), *args], env=env, timeout=timeout, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


READ_RUNS = """
import json, sys
from prefect import Client
from prefect.utilities.graphql import with_args
client = Client()
out = {}
for run_id in json.loads(sys.argv[1]):
    info = client.get_flow_run_info(run_id)
    rows = client.graphql({"query": {with_args("task_run", {"where": {"flow_run_id": {"_eq": run_id}}}): {
        "map_index": True, "state": True, "task": {"slug"}}}}).data.task_run
    out[run_id] = {
        "state": type(info.state).__name__, "message": info.state.message, "version": info.version,
        "parameters": info.parameters, "name": info.name,
        "task_runs": sorted([r.task.slug, r.map_index, r.state] for r in rows),
    }
print(json.dumps(out))
"""


def read_runs(venv: PrefectVenv, env: Mapping[str, str], run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Flow-run state and task runs as the real client reads them (`get_flow_run_info` + a task_run query)."""
    proc = venv.run([*("-c", READ_RUNS), json.dumps(list(run_ids))], env=env, timeout=60, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def graphql(server: ServerLike, query: str, variables: Mapping[str, Any] | None = None,
            token: str | None = None) -> dict[str, Any]:
    """A raw request shaped like the Prefect client's (variables as a JSON string); returns `data`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"query": query, "variables": json.dumps(variables)}
    response = requests.post(server.url, json=body, headers=headers, timeout=15)
    payload = response.json()
    if payload.get("errors"):
        raise AssertionError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


def wait_for_flow_run_state(
    server: ServerLike, run_id: str, states: set[str], *, token: str | None = None, timeout: float = 120,
    procs: Sequence[subprocess.Popen[str]] = (),
) -> str:
    """Poll until the run's state is in `states`; fails early if a watched process died unexpectedly."""
    query = "query($id: uuid!) { flow_run_by_pk(id: $id) { state } }"
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = (graphql(server, query, {"id": run_id}, token)["flow_run_by_pk"] or {}).get("state")
        if state in states:
            return state
        dead = [p.args for p in procs if p.poll() not in (None, 0)]
        assert not dead, f"process exited early: {dead} (run {run_id} in state {state})"
        time.sleep(0.25)
    raise AssertionError(f"flow run {run_id} still {state!r} after {timeout} s; wanted {states}")


def stop_process(proc: subprocess.Popen[str], timeout: float = 15) -> int:
    """SIGINT first (what Ctrl-C does to an agent), then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# --------------------------------------------------------------------------------- the real DockerAgent


def start_prefect_docker_agent(
    venv: PrefectVenv,
    server: ServerLike,
    labels: Sequence[str],
    *,
    token: str | None = None,
    log: Path,
    name: str = "prefect-docker-agent",
    container_api: str | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """Start Prefect 1.4.1's own `prefect agent docker start` against `server`, polling for `labels`.

    The DockerAgent rewrites an API URL containing "localhost" to `http://host.docker.internal:<server.port>`
    for its flow containers, so by default the agent talks to `http://localhost:<port>` and the server must
    listen on 0.0.0.0. `container_api` overrides what containers get instead (e.g. a compose service name).
    """
    agent_env = prefect_env(server, token, api=f"http://localhost:{server.port}", **(env or {}))
    cmd = ["prefect", "agent", "docker", "start", "--name", name, "--log-level", "DEBUG", *args]
    for label in labels:
        cmd += ["--label", label]
    if container_api:
        cmd += ["--env", f"PREFECT__CLOUD__API={container_api}"]
    return venv.popen(cmd, env=agent_env, log=log)


def wait_for_log_line(path: Path, text: str, *, proc: subprocess.Popen[str] | None = None,
                      timeout: float = 60) -> None:
    """Wait until `text` appears in a log file (e.g. the agent's "Waiting for flow runs...")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    content = path.read_text(errors="replace") if path.exists() else "<no log>"
    raise AssertionError(f"{text!r} not in {path} within {timeout} s:\n{content[-4000:]}")


# ------------------------------------------------------------------------------------------------ backends


@dataclass(frozen=True)
class PrefectBackend:
    """A running server plus the credentials the real client uses in one of the two backend modes.

    `server` mode: auth none, `PREFECT__BACKEND=server`, no key. `cloud` mode: auth token,
    `PREFECT__BACKEND=cloud`, a USER key to register and create runs, a RUNNER key to execute them.
    """

    mode: str
    server: Any
    user_token: str | None = field(default=None, repr=False)  # a failing test's traceback shows reprs
    runner_token: str | None = field(default=None, repr=False)

    def env(self, *, runner: bool = False, **extra: str) -> dict[str, str]:
        return prefect_env(self.server, self.runner_token if runner else self.user_token, **extra)


BACKEND_MODES = ("server", "cloud")


@contextmanager
def running_backend(mode: str, workdir: Path, **server_kwargs: Any) -> Iterator[PrefectBackend]:
    """Start a server (tests.support.server_fixtures.start_server) for `mode`, mint its keys, stop it after.

    Module-scoped fixtures use this directly because the `server_factory` fixture is function-scoped.
    """
    from tests.support.server_fixtures import start_server

    server = start_server(workdir, auth="none" if mode == "server" else "token", **server_kwargs)
    try:
        if mode == "server":
            yield PrefectBackend(mode, server)
        else:
            yield PrefectBackend(mode, server, user_token=server.create_token("USER", "pytest-user"),
                                 runner_token=server.create_token("RUNNER", "pytest-runner"))
    finally:
        server.stop()


@pytest.fixture(scope="module", params=BACKEND_MODES)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    module_database_url_factory: Callable[..., str],
) -> Iterator[PrefectBackend]:
    """One server per backend mode for the whole test module, on the module's store (`db_backend`: SQLite,
    or also PostgreSQL in the server modules). A module may override it, as test_prefect_docker_agent.py does
    with a function-scoped one listening on 0.0.0.0."""
    with running_backend(request.param, tmp_path_factory.mktemp(f"server-{request.param}"),
                         database_url=module_database_url_factory()) as backend:
        yield backend
