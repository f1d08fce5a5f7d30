"""Watching every flow-run container this agent started: exits, cancellation, restart recovery, cleanup.

* **Exits.** Docker's event stream (`start`/`die` of containers carrying our agent label, read in a daemon
  thread) wakes the watcher at once; a sweep every `watch_interval` lists our running containers as the
  fallback (a missed event, a stream broken by a daemon restart). What an exit means for its run (Failed
  with the forensics, Cancelled, resubmitted, nothing) is `agent.supervise.settle`'s to record.
* **Cancellation.** One query per interval reads the states of all watched runs. Cancelling/Cancelled with
  the container alive: SIGTERM, SIGKILL after `cancel_grace_seconds`, then Cancelled, with a run log saying
  so. A run that reached any other finished state while its container keeps running is stopped the same way
  after one grace period.
* **Never because of Docker.** A Docker outage (`DockerUnavailable`) is reported to the agent (it stops
  claiming) and the watcher simply tries again later: it never concludes from an unreachable daemon that a
  container is gone. A container the daemon itself stopped (a daemon restart) is not the flow's failure
  either: its run is resubmitted (`agent.supervise.infra`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from loguru import logger

from agent.api.cloud import ApiError, CloudClient
from agent.api.models import (
    ACTIVE_STATES,
    CANCEL_STATES,
    FINISHED_STATES,
    FlowRun,
)
from agent.launch.admission import Admission
from agent.launch.plan import LABEL_FLOW_NAME, LABEL_FLOW_RUN_NAME
from agent.ops.metrics import METRICS
from agent.runtime.docker_types import (
    FLOW_RUN_LABEL,
    ContainerInfo,
    DockerError,
    DockerUnavailable,
    LaunchResult,
    container_name_for,
)
from agent.runtime.port import ContainerRuntime
from agent.session import Session
from agent.settings import Settings, settings_secrets
from agent.supervise import cleanup, reconcile
from agent.supervise.events import EventFollower
from agent.supervise.flow_logs import FlowLogStreamer
from agent.supervise.settle import ExitRecorder

EVENT_BATCH_S = 0.5  # Docker events are gathered this long before they are handled
LOG_DRAIN_S = 5.0  # how long a successful container's removal waits for --show-flow-logs to print its end


@dataclass
class Watched:
    """One container the watcher follows until its exit is settled."""

    run_id: str
    container_id: str
    name: str
    run_name: str
    finished_since: float | None = None  # when the run was first seen finished while the container ran
    stopping: bool = False
    since: float = field(default_factory=time.monotonic)  # when watching began: a duration without times


def _watched(info: ContainerInfo, run_name: str | None = None) -> Watched:
    """A container found in Docker (adopted): its run name from the label set at launch, if it has one."""
    labels = info.labels
    run_id = labels.get(FLOW_RUN_LABEL, "")
    name = run_name or labels.get(LABEL_FLOW_RUN_NAME) or labels.get(LABEL_FLOW_NAME) or run_id
    return Watched(run_id, info.id, info.name, name)


class Watcher:
    """Owns the watched containers; `start()` after the agent connected, `stop()` on shutdown."""

    def __init__(self, settings: Settings, cloud: CloudClient, runtime: ContainerRuntime, session: Session,
                 admission: Admission, busy: Callable[[], set[str]]) -> None:
        self.settings, self.cloud, self.runtime, self.admission = settings, cloud, runtime, admission
        self.agent_name, self.agent_id, self.host_id = settings.name, session.agent_id, session.host_id
        self._busy = busy  # runs with a launch in flight: not orphans, whatever Docker shows yet
        self.watched: dict[str, Watched] = {}
        self._events: list[tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._stops = asyncio.Semaphore(4)
        self._next_cleanup = 0.0
        self._orphans: set[str] = set()  # runs Submitted before this process claimed any (reconcile)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.exits = ExitRecorder(settings, cloud, runtime)
        self._follower = EventFollower(runtime, reconcile.agent_labels(self.agent_name), self._notify)
        show = settings.show_flow_logs
        self.flow_logs = FlowLogStreamer(runtime, settings_secrets(settings)) if show else None
        # Adopted containers' output is shown from the watcher's start (the last process showed what came
        # before); containers this process launches are shown from their own start.
        self._logs_since = time.time()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Recover what a previous run of this agent left, then watch (events thread + periodic loop)."""
        self._loop = asyncio.get_running_loop()
        self._logs_since = time.time()
        self._next_cleanup = time.monotonic() + self.settings.cleanup_interval
        try:
            await self._recover()
        except (ApiError, DockerError) as exc:  # the periodic loop retries what recovery could not do
            self._docker_error(exc)
            logger.warning("restart recovery incomplete, retried periodically: {error}", error=exc)
        self._follower.start()
        self._main = asyncio.create_task(self._run(), name="watcher")

    async def stop(self) -> None:
        self._follower.stop()
        if self.flow_logs is not None:
            self.flow_logs.stop()
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    def watch(self, run: FlowRun, result: LaunchResult) -> None:
        """The pipeline's hook after a launch (created or adopted): follow this container from now on."""
        if result.status in ("exited", "dead"):
            self._notify("die", result.container_id)
            return
        self._add(Watched(run.id, result.container_id, container_name_for(run.id), run.name or run.id),
                  launched=True)

    def _add(self, watched: Watched, *, launched: bool = False) -> None:
        """Follow `watched`; `launched`: this process started it, so its output is new from the start."""
        if watched.run_id and watched.run_id not in self.watched:
            self.watched[watched.run_id] = watched
            logger.debug("watching container {name} of flow run {id}", name=watched.name, id=watched.run_id)
            if self.flow_logs is not None:
                since = None if launched else self._logs_since
                self.flow_logs.follow(watched.container_id, watched.run_name, since=since)
        METRICS.containers_running.set(len(self.watched))

    def _notify(self, action: str, container_id: str) -> None:
        """Thread-safe: queue a Docker event for the loop."""
        if self._loop is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            self._loop.call_soon_threadsafe(self._queue_event, action, container_id)

    def _queue_event(self, action: str, container_id: str) -> None:
        self._events.append((action, container_id))
        self._wake.set()

    # ------------------------------------------------------------------ loop
    async def _run(self) -> None:
        next_sweep = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_sweep - time.monotonic()))
            self._wake.clear()
            if self._events:  # exits come in bursts: one state query and no wasted inspects for a batch
                await asyncio.sleep(EVENT_BATCH_S)
            await self._guarded(self._handle_events())
            if time.monotonic() < next_sweep:
                continue
            next_sweep = time.monotonic() + self.settings.watch_interval
            await self._guarded(self._sweep())
            await self._guarded(self._check_states())
            await self._guarded(self._requeue_orphans())
            if time.monotonic() >= self._next_cleanup:
                self._next_cleanup = time.monotonic() + self.settings.cleanup_interval
                await self._guarded(self._cleanup())

    async def _guarded(self, step: Awaitable[object]) -> None:
        """One step of the loop; no failure may end the watcher."""
        try:
            await step
        except DockerUnavailable as exc:  # the agent logs the outage once and reports it; retried later
            self.admission.engine_down(exc)
            logger.debug("watcher: {error}", error=exc)
        except (ApiError, DockerError) as exc:
            logger.warning("watcher: {error}", error=exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop watching the others
            logger.opt(exception=exc).error("watcher step failed: {error!r}", error=exc)

    def _docker_error(self, exc: BaseException) -> None:
        if isinstance(exc, DockerUnavailable):
            self.admission.engine_down(exc)

    async def _handle_events(self) -> None:
        events, self._events = self._events, []
        by_container = {w.container_id: w for w in self.watched.values()}
        died = {container_id for action, container_id in events if action == "die"}
        exits: dict[str, tuple[Watched, ContainerInfo | None]] = {}
        for action, container_id in events:
            known = by_container.get(container_id)
            if action == "start" and known is None and container_id not in died:
                info = await self.runtime.inspect(container_id)
                if info is not None and info.running:
                    self._add(_watched(info))
            elif action == "die" and not (known and known.stopping) and container_id not in exits:
                info = await self.runtime.inspect(container_id)
                if info is not None and info.running:
                    continue  # restarted meanwhile (a restart policy): still ours to watch
                watched = known or (_watched(info) if info is not None else None)
                if watched is not None:
                    exits[container_id] = (watched, info)
        if exits:  # one state query for every exit in the batch
            states = await reconcile.run_states(self.cloud, [w.run_id for w, _ in exits.values()])
            for watched, info in exits.values():
                await self._settle(watched, info, known=states.get(watched.run_id))

    async def _sweep(self) -> None:
        """The fallback for missed events: adopt unknown running containers, settle vanished ones."""
        running = await self.runtime.find(reconcile.agent_labels(self.agent_name), all=False,
                                   inspect=False)  # ids and labels are all the sweep needs
        ids = {info.id for info in running}
        for info in running:
            if info.labels.get(FLOW_RUN_LABEL) not in self.watched:
                self._add(_watched(info))
        for watched in list(self.watched.values()):
            if watched.container_id in ids or watched.stopping:
                continue
            found = await self.runtime.inspect(watched.container_id)
            if found is None or found.exited:
                await self._settle(watched, found)
        METRICS.containers_running.set(len(self.watched))

    # ------------------------------------------------------------------ run states
    async def _check_states(self) -> None:
        """ONE query for all watched runs: cancellations, and runs finished while their container runs."""
        candidates = [w for w in self.watched.values() if not w.stopping]
        if not candidates:
            return
        states = await reconcile.run_states(self.cloud, [w.run_id for w in candidates])
        grace = self.settings.cancel_grace_seconds
        for watched in candidates:
            found = states.get(watched.run_id)
            if found is None:
                continue
            watched.run_name = found.name or watched.run_name
            if found.state in CANCEL_STATES:
                watched.stopping = True
                self._spawn(self._stop_container(watched, found.state, cancel=True))
            elif found.state in FINISHED_STATES:
                watched.finished_since = watched.finished_since or time.monotonic()
                if time.monotonic() - watched.finished_since >= grace:
                    watched.stopping = True
                    self._spawn(self._stop_container(watched, found.state, cancel=False))
            else:
                watched.finished_since = None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_container(self, watched: Watched, state: str | None, *, cancel: bool) -> None:
        """SIGTERM, SIGKILL after the grace period; then settle (Cancelling becomes Cancelled)."""
        grace = self.settings.cancel_grace_seconds
        watched.stopping = True
        why = (f"Flow run is {state}: the agent stops container {watched.name} (SIGTERM, SIGKILL after "
               f"{grace:g}s)" if cancel else f"Flow run is {state} but its container {watched.name} kept "
               f"running for {grace:g}s: the agent stops it (SIGTERM, SIGKILL after {grace:g}s)")
        logger.info("flow run {id}: {why}", id=watched.run_id, why=why)
        await self.exits.run_log(watched.run_id, why, "INFO")
        try:
            async with self._stops:
                await self.runtime.stop(watched.container_id, grace)
            info = await self.runtime.inspect(watched.container_id)
        except DockerError:
            watched.stopping = False  # try again at the next check
            raise
        if cancel:
            METRICS.runs_cancelled.inc()
        await self._settle(watched, info, stopped_by_agent=True)

    # ------------------------------------------------------------------ settling an exit
    async def _settle(self, watched: Watched, info: ContainerInfo | None, *,
                      known: reconcile.RunState | None = None, stopped_by_agent: bool = False) -> None:
        """Record a finished container in its run (if nobody else did), then stop watching it."""
        if known is None:
            known = (await reconcile.run_states(self.cloud, [watched.run_id])).get(watched.run_id)
        ended = await self.exits.record(watched.run_id, watched.name, info, known,
                                        stopped_by_agent=stopped_by_agent, run_name=watched.run_name,
                                        watched_since=watched.since)
        self.watched.pop(watched.run_id, None)
        METRICS.containers_running.set(len(self.watched))
        if info is not None and cleanup.remove_at_once(info, ended,
                                                      self.settings.keep_successful_containers_hours):
            self._spawn(self._remove_succeeded(watched.run_id, info))

    async def _remove_succeeded(self, run_id: str, info: ContainerInfo) -> None:
        """A successful run's container goes once its exit is recorded and its output printed; a failure
        here leaves it to the cleanup sweep."""
        if self.flow_logs is not None:
            await self.flow_logs.drained(info.id, LOG_DRAIN_S)
        await self.runtime.remove(info.id)
        logger.info("flow run {id}: removed {kind} {name} (the run succeeded)", id=run_id, kind=info.kind,
                    name=info.name)
        METRICS.containers_removed.labels(reason="succeeded").inc()

    # ------------------------------------------------------------------ recovery and cleanup
    async def _recover(self) -> None:
        self._orphans = await reconcile.submitted_ids(self.cloud, self.agent_id)  # before the first claim
        found = await reconcile.inventory(self.runtime, self.agent_name)
        await reconcile.discard_never_started(self.runtime, found.never_started)
        for info in found.running:
            self._add(_watched(info))
        await self._settle_unrecorded(found.finished)
        requeued = await self._requeue_orphans()
        logger.info("restart recovery: adopted {r} running and {f} finished container(s), removed {n} never "
                    "started, requeued {q} claimed but never launched", r=len(found.running),
                    f=len(found.finished), n=len(found.never_started), q=requeued)

    async def _settle_unrecorded(self, finished: list[ContainerInfo]) -> dict[str, reconcile.RunState]:
        """Exited containers whose run is still active: record their exits. Returns the states read (one
        query for all), as they were before."""
        ids = [i.labels.get(FLOW_RUN_LABEL, "") for i in finished]
        states = await reconcile.run_states(self.cloud, ids) if ids else {}
        for info in finished:
            known = states.get(info.labels.get(FLOW_RUN_LABEL, ""))
            if known is not None and known.state in ACTIVE_STATES:
                await self._settle(_watched(info, known.name), info, known=known)
        return states

    async def _requeue_orphans(self) -> int:
        """At start, then (for what failed to be requeued) in every sweep until none is left."""
        if not self._orphans:  # none left from before this process: nothing to ask the API
            return 0
        return await reconcile.requeue_orphans(
            self.cloud, self.runtime, agent_id=self.agent_id, agent_name=self.agent_name,
            host=self.host_id, busy=self._busy() | set(self.watched), candidates=self._orphans)

    async def _cleanup(self) -> None:
        """Record exits the watcher missed (API down at the time), then remove what may go."""
        infos = await self.runtime.find(reconcile.agent_labels(self.agent_name), all=True)
        finished = [i for i in infos if i.exited]
        if not finished:
            return
        states: dict[str, str] | None = None
        try:
            found = await self._settle_unrecorded(finished)
            states = {run_id: run.state or cleanup.GONE for run_id, run in found.items()}
        except ApiError as exc:
            logger.debug("cleanup without run states: {error}", error=exc)
        await cleanup.sweep(self.runtime, finished, states, self.settings.keep_failed_containers_hours,
                            self.settings.cleanup_interval, self.settings.keep_successful_containers_hours)

