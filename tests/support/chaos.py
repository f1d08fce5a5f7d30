"""The chaos harness: real agents behind a `FaultProxy`, one real server, judged by Docker and the server.

Shared by `tests/chaos/` and `benchmarks/recovery.py` (one copy of every scenario). The judges share nothing
with the agent: container starts are counted from the daemon's own event stream (read straight from the
daemon, never through the proxy), states and run logs are read back from the server over HTTP.

The stand-in flow reports nothing, so `FlowRunnerStandIn` does what `prefect execute flow-run` would: as soon
as a run's container starts, the run is set to Success. Left Submitted with its container cleaned up, a run
would look to a restarted agent like one claimed but never launched (it would rightly be relaunched).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import docker
import requests

from tests.support.api import call, register_docker_flow

CHAOS_LABEL = "io.local-agent.chaos"
FLOW_RUN_LABEL = "io.prefect.flow-run-id"
AGENT_LABEL = "io.local-agent.agent"
SUBMITTED_LINE = "Submitted for execution"
TRANSIENT_REQUEUE = "Rescheduled by the agent:"
ORPHAN_REQUEUE = "Rescheduled by agent '"
AGENT_RETRY = "transient engine error, attempt"
SET_STATES = ("mutation($input: set_flow_run_states_input!) "
              "{ set_flow_run_states(input: $input) { states { id status } } }")
SUCCESS = {"type": "Success", "message": "chaos: the stand-in flow finished", "__version__": "1.4.1",
           "context": {}, "cached_inputs": {}, "_result": {"type": "NoResultType", "__version__": "1.4.1"}}


class Server(Protocol):
    url: str

    def graphql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]: ...


class Agent(Protocol):
    name: str

    def kill(self) -> None: ...

    def output(self) -> str: ...


class HttpApi:
    """A GraphQL client of its own (one requests.Session per thread that uses it)."""

    def __init__(self, url: str) -> None:
        self.url, self._session = url, requests.Session()

    def graphql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"query": query, "variables": json.dumps(variables)}  # a JSON string, as Prefect sends it
        response = self._session.post(self.url + "/", json=body, timeout=30)
        return response.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._session.close()


@dataclass(frozen=True)
class Start:
    run_id: str
    agent: str
    at: float  # wall clock (Docker's timeNano), comparable with time.time() on this host


class StartLog:
    """Docker's own `start` events of the containers labelled `CHAOS_LABEL=<tag>`, read in a thread."""

    def __init__(self, tag: str, on_start: Callable[[str], None] | None = None) -> None:
        self.tag, self.on_start = tag, on_start
        self.starts: list[Start] = []
        self._lock = threading.Lock()
        self._client = docker.from_env(timeout=60)
        filters = {"type": "container", "event": "start", "label": f"{CHAOS_LABEL}={tag}"}
        self._stream = self._client.events(decode=True, filters=filters)
        self._thread = threading.Thread(target=self._read, daemon=True, name="chaos-starts")
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                attrs = event.get("Actor", {}).get("Attributes", {})
                start = Start(attrs.get(FLOW_RUN_LABEL, "?"), attrs.get(AGENT_LABEL, "?"),
                              event.get("timeNano", time.time_ns()) / 1e9)
                with self._lock:
                    self.starts.append(start)
                if self.on_start is not None:
                    self.on_start(start.run_id)
        except Exception:  # noqa: BLE001 - the stream ends when close() cuts it
            return

    def snapshot(self) -> list[Start]:
        with self._lock:
            return list(self.starts)

    def counts(self) -> Counter[str]:
        return Counter(s.run_id for s in self.snapshot())

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)
        self._client.close()


class FlowRunnerStandIn:
    """Sets Success on every run whose container started, as the real flow runner would; retries through a
    server outage until `close()`."""

    def __init__(self, url: str) -> None:
        self._api = HttpApi(url)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name="chaos-flow-runner")
        self._thread.start()

    def started(self, run_id: str) -> None:
        self._queue.put(run_id)

    def _work(self) -> None:
        while (run_id := self._queue.get()) is not None:
            item = {"flow_run_id": run_id, "version": None, "state": SUCCESS}
            while True:
                try:
                    call(self._api, SET_STATES, {"input": {"states": [item]}})
                    break
                except (requests.RequestException, AssertionError, ValueError):
                    if self._closing.wait(0.5):  # the server is down (a restart scenario): retry until closed
                        return

    def close(self) -> None:
        self._closing.set()
        self._queue.put(None)
        self._thread.join(30)
        self._api.close()


# ---------------------------------------------------------------------------------------------- server I/O
def register_flow(server: Server, image: str, tag: str) -> str:
    name, _, image_tag = image.partition(":")
    return register_docker_flow(server, name=f"chaos-{tag}", image_name=name, image_tag=image_tag or "latest")


def create_runs(server: Server, flow_id: str, n: int, label: str) -> list[str]:
    """`n` due runs through the real `create_flow_run` mutation, several per request (aliases)."""
    ids: list[str] = []
    template = ('r{i}: create_flow_run(input: {{flow_id: "{flow}", labels: ["{label}"], '
                'flow_run_name: "{name}"}}) ')
    for start in range(0, n, 20):
        fields = [template.format(i=i, flow=flow_id, label=label, name=f"chaos-{start + i}") + "{ id }"
                  for i in range(min(20, n - start))]
        data = call(server, "mutation { " + " ".join(fields) + " }")
        ids.extend(data[f"r{i}"]["id"] for i in range(len(fields)))
    return ids


@dataclass(frozen=True)
class RunRecord:
    id: str
    state: str
    agent_id: str | None
    logs: tuple[tuple[str, str], ...]  # (timestamp, message)


def read_runs(server: Server, run_ids: list[str]) -> dict[str, RunRecord]:
    """Every run's state, agent and run logs, 100 runs per query."""
    found: dict[str, RunRecord] = {}
    for start in range(0, len(run_ids), 100):
        chunk = run_ids[start:start + 100]
        query = """query($ids: [uuid!]) {
          flow_run(where: {id: {_in: $ids}}, limit: 10000) { id state agent_id }
          log(where: {flow_run_id: {_in: $ids}}, order_by: {timestamp: asc}, limit: 10000) {
            flow_run_id timestamp message } }"""
        data = call(server, query, {"ids": chunk})
        logs: dict[str, list[tuple[str, str]]] = {}
        for log in data["log"]:
            logs.setdefault(log["flow_run_id"], []).append((log["timestamp"], log["message"]))
        for row in data["flow_run"]:
            found[row["id"]] = RunRecord(row["id"], row["state"], row.get("agent_id"),
                                         tuple(logs.get(row["id"], [])))
    return found


def states(server: Server, run_ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for start in range(0, len(run_ids), 200):
        query = "query($ids: [uuid!]) { flow_run(where: {id: {_in: $ids}}, limit: 10000) { id state } }"
        out.update({r["id"]: r["state"] for r in call(server, query, {"ids": run_ids[start:start + 200]})
                    ["flow_run"]})
    return out


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------- judging
@dataclass
class Verdict:
    """What the real systems say about one burst."""

    scenario: str
    runs: int
    starts: Counter[str]
    records: dict[str, RunRecord]
    faults: dict[str, Any] = field(default_factory=dict)
    agent_retries: int = 0
    wall_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    def _ids(self, predicate: Callable[[RunRecord], bool]) -> list[str]:
        return sorted(r.id for r in self.records.values() if predicate(r))

    @property
    def multi_started(self) -> dict[str, int]:
        return {run: n for run, n in sorted(self.starts.items()) if n > 1 and run in self.records}

    @property
    def never_started(self) -> list[str]:
        return self._ids(lambda r: self.starts[r.id] == 0)

    @property
    def failed(self) -> list[str]:
        return self._ids(lambda r: r.state == "Failed")

    @property
    def unfinished(self) -> list[str]:
        """Runs not Success/Failed at the end: started and then put back, or never launched."""
        return self._ids(lambda r: r.state not in ("Success", "Failed"))

    @property
    def without_submitted_line(self) -> list[str]:
        return self._ids(lambda r: not any(SUBMITTED_LINE in m for _, m in r.logs))

    def count_logs(self, text: str) -> int:
        return sum(1 for r in self.records.values() for _, m in r.logs if text in m)

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "runs": self.runs, "starts": sum(self.starts[r] for r in self.records),
            "runs_started_more_than_once": len(self.multi_started),
            "runs_never_started": len(self.never_started),
            "failed": len(self.failed), "unfinished": len(self.unfinished),
            "without_submitted_line": len(self.without_submitted_line),
            "states": dict(Counter(r.state for r in self.records.values())),
            "requeues_transient": self.count_logs(TRANSIENT_REQUEUE),
            "requeues_orphan": self.count_logs(ORPHAN_REQUEUE), "agent_retries": self.agent_retries,
            "faults": self.faults, "wall_s": round(self.wall_s, 1), **self.figures,
        }

    def problems(self) -> list[str]:
        """Empty when every run started exactly once, none failed, each finished (the stand-in flow runner
        sets Success at its start) and each has its Submitted line."""
        found = []
        if len(self.records) != self.runs:
            found.append(f"{self.runs - len(self.records)} runs missing from the server")
        for label, items in (("started more than once", self.multi_started),
                             ("never started", self.never_started), ("Failed", self.failed),
                             ("left unfinished (not Success)", self.unfinished),
                             ("without a 'Submitted for execution' line", self.without_submitted_line)):
            if items:
                found.append(f"{len(items)} runs {label}: {self._details(items)}")
        return found

    def _details(self, items: Iterable[str]) -> str:
        shown = []
        for run_id in list(items)[:3]:
            record = self.records.get(run_id)
            messages = [m[:160] for _, m in record.logs] if record else []
            state = record.state if record else "?"
            shown.append(f"{run_id} ({state}, starts={self.starts[run_id]}): {messages}")
        return "; ".join(shown)


def wait_settled(server: Server, run_ids: list[str], starts: StartLog, timeout: float,
                 quiet_s: float = 5.0) -> bool:
    """Until every run started and is finished (Success/Failed), and nothing changed for `quiet_s`; False
    at the deadline (a termination bound, not a speed target)."""
    deadline = time.monotonic() + timeout
    last_change, last_seen = time.monotonic(), (-1, "")
    while time.monotonic() < deadline:
        counts = starts.counts()
        try:
            current = states(server, run_ids)
        except (requests.RequestException, AssertionError, ValueError):
            time.sleep(0.5)  # the server is being restarted
            continue
        done = all(counts[r] > 0 and current.get(r) in ("Success", "Failed") for r in run_ids)
        seen = (sum(counts.values()), repr(sorted(Counter(current.values()).items())))
        if seen != last_seen:
            last_change, last_seen = time.monotonic(), seen
        if done and time.monotonic() - last_change >= quiet_s:
            return True
        time.sleep(0.5)
    return False
