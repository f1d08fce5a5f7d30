"""What the cost curves need around the long-sleeping stand-in flows: a count of every container start per
flow run (a relaunch shows as a second start), and the part of a flow runner the stand-in lacks.

A real `prefect execute flow-run` sets its run Running when it starts and sends the run's heartbeat while it
runs; the agent heartbeats a run only while it holds it (pull, create), so a stand-in that reports nothing
would be taken by the server's zombie sweep for a dead flow after `zombie_timeout_s` (600 s by default),
rescheduled and launched again. `FlowRunnerStandIn` does both from the benchmark process, straight at the
server (never through the agent's counting proxy), so the agent's steady path is the normal one.
"""

from __future__ import annotations

import threading
from typing import Any, Self

import docker

from benchmarks import backend
from benchmarks.dockerenv import ContainerEvents

STATES_MUTATION = ("mutation($input: set_flow_run_states_input!) "
                   "{ set_flow_run_states(input: $input) { states { id status } } }")
HEARTBEAT_MUTATION = ("mutation($input: update_flow_run_heartbeat_input!) "
                      "{ update_flow_run_heartbeat(input: $input) { success } }")
BATCH = 100


class StartCounter(ContainerEvents):
    """Every `start` of the benchmark flow's containers, counted per flow run id."""

    def __init__(self, client: docker.DockerClient, flow_name: str) -> None:
        super().__init__(client, flow_name, ("start",))

    def counts(self) -> dict[str, int]:
        return {run_id: len(times) for run_id, times in self.snapshot("start").items()}


class FlowRunnerStandIn:
    """Running at each container start, then one heartbeat per run every `interval` s from a thread."""

    def __init__(self, url: str, interval: float) -> None:
        self.url, self.interval = url, interval
        self.live: list[str] = []
        self.running_failed = 0
        self.heartbeats = 0
        self.heartbeat_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cost-heartbeats", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def running(self, run_ids: list[str]) -> None:
        """Set the runs Running (as the flow runner does on start; it also sets their heartbeat)."""
        state = {"type": "Running", "message": "benchmark: the stand-in flow is running",
                 "__version__": "1.4.1"}
        for start in range(0, len(run_ids), BATCH):
            chunk = run_ids[start:start + BATCH]
            states = [{"flow_run_id": run_id, "version": None, "state": state} for run_id in chunk]
            answer = backend.graphql(self.url, STATES_MUTATION, {"input": {"states": states}})
            outcomes = answer["set_flow_run_states"]["states"]
            self.running_failed += sum(outcome["status"] != "SUCCESS" for outcome in outcomes)
        with self._lock:
            self.live.extend(run_ids)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                live = list(self.live)
            for run_id in live:
                if self._stop.is_set():
                    return
                try:
                    backend.graphql(self.url, HEARTBEAT_MUTATION, {"input": {"flow_run_id": run_id}})
                    self.heartbeats += 1
                except (OSError, backend.GraphQLError):
                    self.heartbeat_errors += 1

    def figures(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "runs_set_running": len(self.live),
                "running_refused": self.running_failed, "heartbeats_sent": self.heartbeats,
                "heartbeat_errors": self.heartbeat_errors}
