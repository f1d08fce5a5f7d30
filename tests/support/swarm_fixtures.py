"""The test daemon as a single-node Docker Swarm manager (registered in tests/conftest.py).

`swarm_manager` (module scope) makes the daemon a manager (`docker swarm init --advertise-addr 127.0.0.1`)
unless it already is one, and at teardown removes every service and network carrying the session's test
label (plus the networks a test registered by name), then leaves only a swarm it created itself, and removes
the `docker_gwbridge`/`ingress` leftovers that `swarm init` made once nothing uses them. A daemon that was
already a manager (another session, a developer's cluster) is never left. Tests using it are marked `swarm`
(and `docker`, through `docker_client`) automatically.

Also here: `reporter_image`, a busybox flow stand-in that reports its own run Running then Success over the
API the agent hands it (so many runs can end Success in seconds, without Prefect in the image), and
`ContainerStarts`, a live count of task-container starts per flow run from the daemon's event stream.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import pytest

from tests.support.docker_fixtures import RUN_ID, TEST_RUN_LABEL, docker_unavailable
from tests.support.images import TEST_IMAGE_PREFIX, remove_image
from tests.support.runtime_fixtures import build_small_image

FLOW_RUN_LABEL = "io.prefect.flow-run-id"
SWARM_LEFTOVERS = ("ingress", "docker_gwbridge")  # what `swarm init` creates and `swarm leave` may leave
REPORTER_IMAGE = f"{TEST_IMAGE_PREFIX}swarm-reporter:{RUN_ID}"  # this session's own; removed at its end
_REPORTER_HASH_LABEL = "io.local-agent.reporter-hash"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the swarm fixture carries the `swarm` marker (`-m "not swarm"` deselects it)."""
    for item in items:
        if "swarm_manager" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.swarm)


# ------------------------------------------------------------------------------------------ the manager


class NotAManager(Exception):
    """The daemon is not, and cannot become, a swarm manager (the daemon's reason in the message)."""


def swarm_state(client: docker.DockerClient) -> tuple[str, bool, str]:
    """(LocalNodeState, ControlAvailable, Error) from `docker info`."""
    swarm = client.info().get("Swarm") or {}
    state, error = str(swarm.get("LocalNodeState", "")), str(swarm.get("Error", ""))
    return state, bool(swarm.get("ControlAvailable")), error


def become_manager(client: docker.DockerClient, **init: Any) -> bool:
    """Make the daemon a swarm manager; True when this call created the swarm (so it may leave it later).

    `init` goes to docker-py's `swarm.init` (a second daemon on the same host needs its own `listen_addr`
    and `data_path_port`). Raises NotAManager with the daemon's reason when it cannot be one."""
    state, control, error = swarm_state(client)
    if state == "active" and control:
        return False
    if state not in ("inactive", ""):
        raise NotAManager(f"the daemon's swarm state is {state!r} (manager: {control}) {error}".strip())
    try:
        client.swarm.init(advertise_addr="127.0.0.1", **init)
    except docker.errors.APIError as exc:
        raise NotAManager(f"docker swarm init failed: {exc.explanation or exc}") from exc
    return True


def leave_swarm(client: docker.DockerClient) -> list[str]:
    """`docker swarm leave --force`, then the leftovers nothing uses any more; returns what was removed."""
    client.swarm.leave(force=True)
    removed = []
    for name in SWARM_LEFTOVERS:
        try:
            network = client.networks.get(name)
        except docker.errors.NotFound:
            continue
        if network.attrs.get("Containers"):
            continue  # in use (a container of someone else): not ours to remove
        for _ in range(20):  # the swarm's own endpoints on it go a moment after the leave
            try:
                network.remove()
                removed.append(name)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                time.sleep(0.5)
    return removed


@dataclass
class SwarmManager:
    """The manager daemon for one test module; `created` says whether its teardown leaves the swarm."""

    client: docker.DockerClient
    created: bool
    networks: set[str] = field(default_factory=set)

    def network_name(self, purpose: str) -> str:
        """A unique overlay network name for this module, removed at teardown."""
        name = f"la-{purpose}-{RUN_ID}"
        self.networks.add(name)
        return name

    def services_of(self, run_id: str) -> list[Any]:
        """The run's services, found by the run label (what the agent puts on every service it creates)."""
        return self.client.services.list(filters={"label": f"{FLOW_RUN_LABEL}={run_id}"})

    def tasks_of(self, service_id: str) -> list[dict[str, Any]]:
        return self.client.api.tasks(filters={"service": service_id})  # type: ignore[no-any-return,no-untyped-call]

    def cleanup(self) -> None:
        """Remove every service and network carrying the session's test label, and the named networks."""
        label = f"{TEST_RUN_LABEL}={RUN_ID}"
        for service in self.client.services.list(filters={"label": label}):
            try:
                service.remove()  # type: ignore[no-untyped-call]
            except docker.errors.NotFound:
                pass
        wait_until_gone(self.client, label, timeout=5)
        names = {str(n.name) for n in self.client.networks.list(filters={"label": label})} | self.networks
        for name in sorted(names):
            remove_network(self.client, name)


def wait_until_gone(client: docker.DockerClient, label: str, timeout: float = 30) -> None:
    """Task containers go away after their service with a delay (a finished job's, not at all for a long
    while), and networks cannot be removed before: wait up to `timeout`, then force-remove the rest."""
    deadline = time.monotonic() + timeout
    while client.containers.list(all=True, filters={"label": label}) and time.monotonic() < deadline:
        time.sleep(0.2)
    for container in client.containers.list(all=True, filters={"label": label}):
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass


def remove_network(client: docker.DockerClient, name: str, attempts: int = 20) -> None:
    """Remove a network by name; retried while detached endpoints are still being released."""
    for _ in range(attempts):
        try:
            client.networks.get(name).remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            time.sleep(0.25)


@pytest.fixture(scope="module")
def swarm_manager(docker_client: docker.DockerClient) -> Iterator[SwarmManager]:
    """The daemon as a swarm manager for this module (skip, or fail under LOCAL_AGENT_REQUIRE_DOCKER=1,
    when it cannot be one)."""
    try:
        created = become_manager(docker_client)
    except NotAManager as exc:
        docker_unavailable(f"the Docker daemon cannot be a swarm manager: {exc}")
    manager = SwarmManager(docker_client, created)
    try:
        yield manager
    finally:
        manager.cleanup()
        if created:
            leave_swarm(docker_client)


# ----------------------------------------------------------------------------------------- event counting


class ContainerStarts:
    """Task-container starts per flow run, from the daemon's live event stream (no event can be missed by
    polling too slowly: a run started twice counts 2 even if its first container is already gone)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._client = docker.from_env(timeout=None)  # type: ignore[arg-type]  # the stream never times out
        self._stream = self._client.events(decode=True, filters={
            "type": "container", "event": "start", "label": f"{TEST_RUN_LABEL}={RUN_ID}"})
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True, name="container-starts")
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                run_id = event.get("Actor", {}).get("Attributes", {}).get(FLOW_RUN_LABEL)
                if run_id:
                    with self._lock:
                        self.counts[run_id] += 1
        except Exception:  # the stream closed under us at close()
            return

    def of(self, run_ids: list[str]) -> dict[str, int]:
        with self._lock:
            return {run_id: self.counts[run_id] for run_id in run_ids}

    def close(self) -> None:
        self._stream.close()
        self._client.close()


@pytest.fixture
def container_starts(docker_client: docker.DockerClient) -> Iterator[ContainerStarts]:
    starts = ContainerStarts()
    try:
        yield starts
    finally:
        starts.close()


# ------------------------------------------------------------------------------------------ the reporter

REPORTER_SCRIPT = r"""#!/bin/sh
# Stand-in for `prefect execute flow-run` that reports its run Running, then Success, over the API
# (tests/support/swarm_fixtures.py). Exit 1 when the API cannot be reached, so a broken path fails the run.
echo "reporter: run ${PREFECT__CONTEXT__FLOW_RUN_ID} via ${PREFECT__CLOUD__API}"
report() {
  kind=$1
  result='{"type":"NoResultType","__version__":"1.4.1"}'
  state='{"type":"'"$kind"'","message":"reporter","context":{},"cached_inputs":{},'
  state="$state"'"__version__":"1.4.1","_result":'"$result"'}'
  mutation='mutation($input: set_flow_run_states_input!) '
  mutation="$mutation"'{ set_flow_run_states(input: $input) { states { id } } }'
  run='{"flow_run_id":"'"${PREFECT__CONTEXT__FLOW_RUN_ID}"'","version":null,"state":'"$state"'}'
  body='{"query":"'"$mutation"'","variables":{"input":{"states":['"$run"']}}}'
  token="${PREFECT__CLOUD__AUTH_TOKEN:-${PREFECT__CLOUD__API_KEY:-}}"
  set -- --header "Content-Type: application/json"
  [ -n "$token" ] && set -- "$@" --header "Authorization: Bearer $token"
  answer=$(wget -q -O - "$@" --post-data "$body" "${PREFECT__CLOUD__API}") \
    || { echo "reporter: API unreachable"; exit 1; }
  case "$answer" in *'"errors"'*) echo "reporter: $answer"; exit 1;; esac
  echo "reporter: $kind"
}
report Running
sleep "${STAND_IN_SLEEP:-0}"
report Success
"""

REPORTER_DOCKERFILE = """FROM {base}
COPY prefect /bin/prefect
CMD ["prefect", "execute", "flow-run"]
"""


def build_reporter(client: docker.DockerClient, base: str) -> str:
    """Build REPORTER_IMAGE from `base` (busybox) unless one with the same content exists."""
    files = {"Dockerfile": REPORTER_DOCKERFILE.format(base=base).encode(),
             "prefect": REPORTER_SCRIPT.encode()}
    return build_small_image(client, REPORTER_IMAGE, _REPORTER_HASH_LABEL, base, files)


@pytest.fixture(scope="session")
def reporter_image(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    yield build_reporter(docker_client, busybox_image)
    remove_image(docker_client, REPORTER_IMAGE)


def docker_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """The docker CLI (stack deploy/rm have no API of their own); AssertionError with both streams."""
    proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc
