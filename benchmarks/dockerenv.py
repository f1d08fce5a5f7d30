"""The Docker side every system shares: the tiny flow image, the start-event clock, and clean-up.

Every container start is timed from the daemon's own event stream (`timeNano` of the `start` event), so the
ceiling, our agent and Prefect's agent are measured on one clock that none of them controls.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Iterable
from typing import Any, Self

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from benchmarks.config import BENCH_LABEL, FLOW_IMAGE

RUN_ID_LABEL = "io.prefect.flow-run-id"
FLOW_NAME_LABEL = "io.prefect.flow-name"
BASE_IMAGES = ("local/busybox:latest", "busybox:latest")
# A stand-in for `prefect execute flow-run`: the flow "runs" and exits 0 at once, so only launching is timed.
FAKE_PREFECT = "#!/bin/sh\nexit 0\n"
# A stand-in that lives as long as its run config asks (`BENCH_SLEEP_S`), for the scenarios that need flow
# containers to stay up while the agent watches them (cost curves, soak). `exec`: SIGTERM reaches the sleep.
SLEEPER_IMAGE = "local-agent-bench-sleeper:latest"
SLEEPING_PREFECT = '#!/bin/sh\nexec sleep "${BENCH_SLEEP_S:-0}"\n'


def docker_client() -> docker.DockerClient:
    return docker.from_env(timeout=120)


def ensure_flow_image(client: docker.DockerClient) -> str:
    """Build `local-agent-bench-flow:latest` (busybox + a no-op `/bin/prefect`) unless it exists already."""
    return _ensure_stand_in(client, FLOW_IMAGE, FAKE_PREFECT)


def ensure_sleeper_image(client: docker.DockerClient) -> str:
    """Build `local-agent-bench-sleeper:latest`: `/bin/prefect` sleeps `$BENCH_SLEEP_S` s, then exits 0."""
    return _ensure_stand_in(client, SLEEPER_IMAGE, SLEEPING_PREFECT)


def _ensure_stand_in(client: docker.DockerClient, image: str, script: str) -> str:
    if _image_exists(client, image):
        return image
    base = next((name for name in BASE_IMAGES if _image_exists(client, name)), None)
    if base is None:
        raise RuntimeError(f"none of {BASE_IMAGES} is available locally to build {image}")
    dockerfile = f"FROM {base}\nCOPY prefect /bin/prefect\nRUN chmod 755 /bin/prefect\n"
    context = _tar_context({"Dockerfile": dockerfile, "prefect": script})
    client.images.build(
        fileobj=context, custom_context=True, tag=image, rm=True, forcerm=True,
        labels={BENCH_LABEL: "flow"},
    )
    return image


def _image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except ImageNotFound:
        return False


def _tar_context(files: dict[str, str]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


class ContainerEvents:
    """Records every event of each kind in `actions` (`start`, `die`, `destroy`) of every container labelled
    with our benchmark's flow name, as the daemon timed it: `first[action][run]` the first, and `snapshot()`
    all of them (a run started twice - relaunched, rescheduled - must show).

    Keyed by the `io.prefect.flow-run-id` label, which both agents set (and the ceilings imitate), so each
    event maps back to the flow run - and its scheduled time - that caused it.
    """

    def __init__(self, client: docker.DockerClient, flow_name: str,
                 actions: tuple[str, ...] = ("start",)) -> None:
        self._client = client
        self._filters = {"type": "container", "event": list(actions),
                         "label": f"{FLOW_NAME_LABEL}={flow_name}"}
        self.first: dict[str, dict[str, float]] = {action: {} for action in actions}
        self._every: dict[str, dict[str, list[float]]] = {action: {} for action in actions}
        self._cond = threading.Condition()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._stream = self._client.api.events(decode=True, filters=self._filters, since=int(time.time()) - 1)
        self._thread = threading.Thread(target=self._pump, name="docker-container-events", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _pump(self) -> None:
        try:
            for event in self._stream or ():
                run_id = event.get("Actor", {}).get("Attributes", {}).get(RUN_ID_LABEL)
                action = str(event.get("status", event.get("Action")))
                if not run_id or action not in self.first:
                    continue
                stamp = event.get("timeNano", event.get("time", 0) * 1e9) / 1e9
                with self._cond:
                    self.first[action].setdefault(run_id, stamp)
                    self._every[action].setdefault(run_id, []).append(stamp)
                    self._cond.notify_all()
        except Exception:  # noqa: BLE001 - the stream raises when closed; nothing to record then
            return

    def snapshot(self, action: str) -> dict[str, list[float]]:
        """Every `action` event so far, per flow run, in the daemon's order."""
        with self._cond:
            return {run_id: list(times) for run_id, times in self._every[action].items()}

    def wait(self, run_ids: Iterable[str], timeout: float) -> bool:
        """Block until every run in `run_ids` had every event (or `timeout`); True when all did."""
        wanted = set(run_ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(wanted <= book.keys() for book in self.first.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return True


class StartWatcher(ContainerEvents):
    """The first `start` of every flow container: when each run began."""

    def wait_for(self, run_ids: Iterable[str], timeout: float) -> dict[str, float]:
        """Block until every run in `run_ids` has started (or `timeout`); returns the starts seen."""
        wanted = set(run_ids)
        self.wait(wanted, timeout)
        with self._cond:
            return {rid: t for rid, t in self.first["start"].items() if rid in wanted}


def remove_flow_containers(client: docker.DockerClient, flow_name: str) -> int:
    """Remove every container of this benchmark's flow (our agent removes only successful runs' containers,
    and not at once; Prefect's auto-removes)."""
    removed = 0
    # The low-level list: the high-level one inspects each container and trips over auto-removed ones.
    for container in client.api.containers(all=True, filters={"label": f"{FLOW_NAME_LABEL}={flow_name}"}):
        try:
            client.api.remove_container(container["Id"], force=True)
            removed += 1
        except (NotFound, APIError):  # auto_remove got there first, or removal is already in progress
            continue
    return removed
