"""The agent's Prometheus metrics: one registry per process, served on `/metrics` by `agent.ops.health`.

Module-level, like prometheus-client's own idiom: the launch pipeline, the poll loop and the watcher record
events with one line each and never need a handle passed down to them. The registry is our own (not the
global default) so the endpoint shows only agent metrics, and tests can read the values with
`METRICS.value(...)`. Names follow Prometheus conventions (`_total` counters, `_seconds` units) under the
`local_agent_` namespace; reasons are small closed sets, never run ids, so cardinality stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from agent.version import __version__

NAMESPACE = "local_agent"
PULL_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
disable_created_metrics()  # type: ignore[no-untyped-call]  # `*_created` series double the output and no dashboard reads them
POLL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60)


def failure_reason(exc: BaseException) -> str:
    """A launch failure's metric label (config | policy | image | container | docker): the error says."""
    return str(getattr(exc, "failure_reason", "docker"))


class AgentMetrics:
    """Every metric the agent exports; `METRICS` below is the process-wide instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        counter, gauge, histogram = self._factory(Counter), self._factory(Gauge), self._factory(Histogram)
        self.info = gauge("info", "Agent version and name (value 1).", ["version", "name"])
        self.runs_claimed = counter("runs_claimed", "Flow runs claimed (set Submitted).")
        self.runs_launched = counter("runs_launched", "Flow-run containers created and started.")
        self.runs_failed = counter(
            "runs_failed", "Flow runs the agent marked Failed, by reason (launch failures: config, policy, "
            "image, container, docker; the container died: exit_code, oom_killed).", ["reason"])
        self.runs_requeued = counter("runs_requeued", "Claimed runs put back to Scheduled, by reason.",
                                     ["reason"])
        self.runs_cancelled = counter("runs_cancelled", "Containers stopped because their run was cancelled.")
        self.containers_running = gauge(
            "flow_containers_running", "Flow-run containers of this agent running, as the watcher last saw.")
        self.containers_removed = counter(
            "containers_removed", "Flow-run containers removed by cleanup, by reason (succeeded, expired).",
            ["reason"])
        self.pull_seconds = histogram("image_pull_seconds", "Duration of image pulls.", buckets=PULL_BUCKETS)
        self.poll_seconds = histogram("poll_duration_seconds", "Duration of successful queue polls "
                                      "(long polls included).", buckets=POLL_BUCKETS)
        self.docker_errors = counter("docker_errors", "Failed Docker API calls, by kind "
                                     "(unavailable, other).", ["kind"])
        self.api_errors = counter("api_errors", "Failed GraphQL requests, by kind "
                                  "(transient, auth, conflict, other).", ["kind"])
        self.heartbeats = counter("run_heartbeats", "update_flow_run_heartbeat calls for runs in flight.")
        self.last_poll = gauge("last_successful_poll_timestamp_seconds",
                               "Unix time of the last successful queue poll.")
        self.docker_up = gauge("docker_up", "1 while the Docker daemon answers, 0 during an outage.")
        self.info.labels(version=__version__, name="").set(1)
        self.docker_up.set(1)

    def _factory(self, kind: type[Any]) -> Callable[..., Any]:
        def make(name: str, documentation: str, labels: Sequence[str] = (), **kwargs: Any) -> Any:
            return kind(name, documentation, list(labels), namespace=NAMESPACE, registry=self.registry,
                        **kwargs)

        return make

    def set_name(self, name: str) -> None:
        self.info.clear()
        self.info.labels(version=__version__, name=name).set(1)

    def poll_succeeded(self, seconds: float) -> None:
        self.poll_seconds.observe(seconds)
        self.last_poll.set(time.time())

    def launch_failed(self, exc: BaseException) -> None:
        self.runs_failed.labels(reason=failure_reason(exc)).inc()

    def docker_call_done(self, future: Future[Any]) -> None:
        """Done-callback of every engine call: count the failed ones by the error's own kind."""
        if future.cancelled():
            return
        kind = getattr(future.exception(), "engine_error_kind", None)
        if kind is not None:
            self.docker_errors.labels(kind=kind).inc()

    @contextmanager
    def counting_api_errors(self) -> Iterator[None]:
        """Wraps one GraphQL request; every API error leaving it is counted by its kind, then re-raised."""
        try:
            yield
        except Exception as exc:
            kind = getattr(exc, "api_error_kind", None)
            if kind is not None:
                self.api_errors.labels(kind=kind).inc()
            raise

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0.0 when absent); for tests and `local-agent check` diagnostics."""
        found = self.registry.get_sample_value(name, labels or None)
        return float(found) if found is not None else 0.0


METRICS = AgentMetrics()
