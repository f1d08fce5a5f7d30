"""Write-lock hold of long writes: a flow at the task limit registered, run and cancelled, others writing.

`python -m benchmarks.write_lock [--tasks N] [--out FILE]` (from the repository root). One server process
(SQLite, auth off, default settings). The flow is registered in one `create_flow_from_compressed_string`
(all tasks and edges in the call), a run of it is created (one Pending task run per task) and cancelled
(the cascade to every task run). Meanwhile a second client writes without pause - a flow-run heartbeat,
then a claim (`Submitted`, version 1) of a queued run - and every write's round trip is recorded with
the phase it started in. Printed: each phase's duration and the other client's latency max / p95 per phase;
the goal is <= 1 s for any of its writes. Nothing here is asserted (see tests/integration).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import backend
from benchmarks.stats import percentile
from tests.support.api import heartbeat_and_claim

COMPRESSED = ("mutation($input: create_flow_from_compressed_string_input!) "
              "{ create_flow_from_compressed_string(input: $input) { id } }")
CANCEL = "mutation($id: UUID!) { cancel_flow_run(input: {flow_run_id: $id}) { state } }"


def compressed_flow(tasks: int) -> str:
    flow = backend.serialized_flow("write-lock", "img:1")
    flow["tasks"] = [{"name": f"t{i}", "slug": f"t{i}-1", "type": "prefect.core.task.Task",
                      "__version__": "1.4.1"} for i in range(tasks)]
    flow["edges"] = [{"upstream_task": {"slug": f"t{i}-1"}, "downstream_task": {"slug": f"t{i + 1}-1"}}
                     for i in range(0, tasks - 1, 2)]
    return base64.b64encode(gzip.compress(json.dumps(flow).encode())).decode()


class Writer(threading.Thread):
    """The other client: one write after another, each (phase, latency, error or None)."""

    def __init__(self, url: str, heartbeat_run: str, claimable: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.heartbeat_run, self.claimable = url, heartbeat_run, claimable
        self.phase = "idle"
        self.samples: list[tuple[str, float, str | None]] = []
        self.stop_event = threading.Event()

    def write(self, query: str, variables: dict[str, Any]) -> None:
        phase, started, error = self.phase, time.perf_counter(), None
        try:
            backend.graphql(self.url, query, variables, timeout=300)
        except (backend.GraphQLError, OSError, urllib.error.URLError) as exc:
            error = str(exc)[:300]
        self.samples.append((phase, time.perf_counter() - started, error))

    def run(self) -> None:
        heartbeat_and_claim(self.write, self.heartbeat_run, self.claimable, self.stop_event)


def _project(url: str) -> str:
    backend.register_flow(url, "small", "img:1")  # creates project "bench"
    found = backend.graphql(url, 'query { project(where: {name: {_eq: "bench"}}) { id } }')
    return str(found["project"][0]["id"])


def _timed(writer: Writer, phase: str, call: Any) -> tuple[Any, float]:
    writer.phase = phase
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def measure(url: str, tasks: int) -> dict[str, Any]:
    small = backend.register_flow(url, "small", "img:1")
    runs = [backend.create_flow_run(url, small, name=f"r{i}", labels=[], scheduled_at=time.time())
            for i in range(2001)]
    writer = Writer(url, runs[0], runs[1:])
    payload = compressed_flow(tasks)
    project = _project(url)
    writer.start()
    time.sleep(1.0)  # a baseline of the other client's latency with nothing else going on
    flow, register_s = _timed(writer, "register", lambda: backend.graphql(url, COMPRESSED, {"input": {
        "project_id": project, "serialized_flow": payload}}, timeout=600))
    flow_id = flow["create_flow_from_compressed_string"]["id"]
    run_id, create_s = _timed(writer, "create_run", lambda: backend.create_flow_run(
        url, flow_id, name="big", labels=[], scheduled_at=time.time()))
    _, cancel_s = _timed(writer, "cancel", lambda: backend.graphql(url, CANCEL, {"id": run_id}, timeout=600))
    writer.phase = "after"
    time.sleep(0.5)
    writer.stop_event.set()
    writer.join(timeout=600)
    return {"tasks": tasks, "register_s": register_s, "create_run_s": create_s, "cancel_s": cancel_s,
            "other_client": _summary(writer.samples)}


def _summary(samples: list[tuple[str, float, str | None]]) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for phase in ("idle", "register", "create_run", "cancel", "after", "all"):
        picked = [s for s in samples if phase in ("all", s[0])]
        latencies = [s[1] for s in picked]
        phases[phase] = {"writes": len(picked), "failed": sum(1 for s in picked if s[2]),
                         "max_s": max(latencies, default=None), "p95_s": percentile(latencies, 95),
                         "errors": sorted({s[2] for s in picked if s[2]})[:3]}
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.write_lock", description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000,
                        help="tasks in the big flow (default: the default limit)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="write-lock-") as work:
        server = backend.Server(database_url=f"sqlite:///{work}/write-lock.db",
                                log_path=Path(work) / "server.log").start()
        try:
            result = measure(server.url, args.tasks)
        finally:
            server.stop()
    _print(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def _print(result: dict[str, Any]) -> None:
    print(f"flow of {result['tasks']} tasks: register {result['register_s']:.2f} s, create run "
          f"{result['create_run_s']:.2f} s, cancel {result['cancel_s']:.2f} s")
    print("other client's writes (heartbeat + claim), per phase:")
    for phase, figures in result["other_client"].items():
        if not figures["writes"]:
            continue
        print(f"  {phase:<10} writes {figures['writes']:>5}  failed {figures['failed']:>3}  "
              f"max {figures['max_s']:.3f} s  p95 {figures['p95_s']:.3f} s  {figures['errors'] or ''}")


if __name__ == "__main__":
    main()
