"""`python -m benchmarks schedule-lateness [--quick]`: how late our agent launches the runs the server's
scheduler created.

A real server (`python -m server start`, SQLite, auth off, its scheduler at the default settings) and our
agent (`python -m agent start`, default settings, no pulls) on the stand-in flow image (busybox plus a no-op
`/bin/prefect`, so only the launch is timed). Prefect 1.4.1's client cannot register an interval under one
minute, so `flows` flows each get a one-minute `IntervalClock`, serialized as that client does, with start
dates `stagger_s` apart: together one run falls due every `stagger_s` seconds for `window_s` seconds.

Per run: lateness = its container's `start` event (Docker's clock) minus its scheduled start; also the
agent's "Submitted for execution" line minus it, and how far ahead of its time the scheduler created it
(`flow_run.created`, read from the database file). The stand-in reports nothing, so the benchmark sets each
started run to Success, as a flow runner would. Nothing is asserted; the p95 target is reported.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from benchmarks import backend
from benchmarks.dockerenv import docker_client, ensure_flow_image
from benchmarks.peers import our_agent
from benchmarks.report import write_benchmark
from benchmarks.stats import percentile

TARGET_P95_S = 1.0
LABEL = "bench-schedule"
AGENT_LABEL = "io.local-agent.agent"
RUN_ID_LABEL = "io.prefect.flow-run-id"
SUBMITTED = "Submitted for execution"
CLOCK_S = 60.0  # the shortest IntervalClock Prefect 1.4.1's client serializes


@dataclass(frozen=True)
class Sizes:
    flows: int
    stagger_s: float
    window_s: float


FULL = Sizes(flows=20, stagger_s=3.0, window_s=240.0)
QUICK = Sizes(flows=6, stagger_s=10.0, window_s=60.0)


class Starts:
    """First `start` event per flow run of one agent's containers, from the daemon's event stream."""

    def __init__(self, client: docker.DockerClient, agent_name: str) -> None:
        filters = {"type": "container", "event": "start", "label": f"{AGENT_LABEL}={agent_name}"}
        self._stream = client.api.events(decode=True, filters=filters, since=int(time.time()) - 1)
        self.at: dict[str, float] = {}
        self._thread = threading.Thread(target=self._pump, name="schedule-starts", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for event in self._stream:
                run_id = event.get("Actor", {}).get("Attributes", {}).get(RUN_ID_LABEL)
                if run_id:
                    self.at.setdefault(run_id, event.get("timeNano", event.get("time", 0) * 1e9) / 1e9)
        except Exception:  # noqa: BLE001 - the stream raises when it is closed: nothing left to record
            return

    def close(self) -> None:
        self._stream.close()
        self._thread.join(timeout=5)


def interval_schedule(start: float, interval_s: float) -> dict[str, Any]:
    """A `Schedule` with one `IntervalClock`, exactly as Prefect 1.4.1's `ScheduleSchema` dumps it."""
    dt = datetime.fromtimestamp(start, UTC).replace(tzinfo=None).isoformat()
    clock = {"start_date": {"dt": dt, "tz": "UTC"}, "end_date": None, "interval": int(interval_s * 1e6),
             "parameter_defaults": {}, "labels": None, "__version__": "1.4.1", "type": "IntervalClock"}
    return {"clocks": [clock], "filters": [], "or_filters": [], "not_filters": [], "adjustments": [],
            "__version__": "1.4.1"}


def register_scheduled(url: str, project: str, name: str, image: str, start: float) -> str:
    """create_flow then set_schedule_active, the Prefect client's order (`Client.register`)."""
    flow = backend.serialized_flow(name, image)
    flow["schedule"] = interval_schedule(start, CLOCK_S)
    flow["run_config"]["labels"] = [LABEL]
    create = "mutation($input: create_flow_input!) { create_flow(input: $input) { id } }"
    flow_id: str = backend.graphql(url, create, {"input": {
        "project_id": project, "serialized_flow": flow, "set_schedule_active": False}})["create_flow"]["id"]
    _set_schedule(url, flow_id, active=True)
    return flow_id


def _set_schedule(url: str, flow_id: str, *, active: bool) -> None:
    name = "set_schedule_active" if active else "set_schedule_inactive"
    backend.graphql(url, f"mutation($input: {name}_input!) {{ {name}(input: $input) {{ success }} }}",
                    {"input": {"flow_id": flow_id}})


def _project(url: str) -> str:
    create = "mutation($input: create_project_input!) { create_project(input: $input) { id } }"
    project = {"name": "bench-schedule", "tenant_id": backend.tenant_id(url)}
    data = backend.graphql(url, create, {"input": project})
    return str(data["create_project"]["id"])


def _scheduler_defaults() -> dict[str, Any]:
    from server.settings import ServerSettings

    fields = ServerSettings.model_fields
    return {name: fields[name].default for name in
            ("scheduler_interval_s", "scheduler_max_runs", "scheduler_max_days") if name in fields}


def _runs(url: str, flow_ids: list[str]) -> list[dict[str, Any]]:
    query = ("query($ids: [uuid!]) { flow_run(where: {flow_id: {_in: $ids}}) "
             "{ id flow_id state scheduled_start_time } }")
    return list(backend.graphql(url, query, {"ids": flow_ids})["flow_run"])


def _submitted_lines(url: str, run_ids: list[str]) -> dict[str, list[float]]:
    query = ("query($ids: [uuid!]) { log(where: {flow_run_id: {_in: $ids}}, order_by: {timestamp: asc}) "
             "{ flow_run_id timestamp message } }")
    lines: dict[str, list[float]] = {}
    for start in range(0, len(run_ids), 200):
        for log in backend.graphql(url, query, {"ids": run_ids[start:start + 200]})["log"]:
            if SUBMITTED in (log["message"] or ""):
                lines.setdefault(log["flow_run_id"], []).append(_ts(log["timestamp"]))
    return lines


def _created(db_path: Path) -> dict[str, float]:
    """`flow_run.created` per run: not in the API, so from the database file (naive UTC)."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT id, created FROM flow_run").fetchall()
    return {run_id: datetime.fromisoformat(str(created)).replace(tzinfo=UTC).timestamp()
            for run_id, created in rows}


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _wait_and_finish(url: str, flow_ids: list[str], starts: Starts, end: float) -> None:
    """Until every run due by `end` has started (or 60 s after `end`); starts are set Success meanwhile."""
    finished: set[str] = set()
    deadline = end + 60.0
    while True:
        due = [r for r in _runs(url, flow_ids) if _ts(r["scheduled_start_time"]) <= end]
        fresh = [r["id"] for r in due if r["id"] in starts.at and r["id"] not in finished]
        if fresh:
            backend.finish_runs(url, fresh)
            finished.update(fresh)
        if (time.time() > end and all(r["id"] in starts.at for r in due)) or time.time() > deadline:
            return
        time.sleep(1.0)


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median_s": round(statistics.median(values), 3),
            "p95_s": round(percentile(values, 95) or 0.0, 3), "max_s": round(max(values), 3),
            "min_s": round(min(values), 3)}


def _figures(url: str, flow_ids: list[str], starts: Starts, created: dict[str, float],
             window: tuple[float, float]) -> dict[str, Any]:
    runs = _runs(url, flow_ids)
    due = [r for r in runs if window[0] - 1 <= _ts(r["scheduled_start_time"]) <= window[1]]
    at = {r["id"]: _ts(r["scheduled_start_time"]) for r in due}
    lines = _submitted_lines(url, list(at))
    late = {rid: starts.at[rid] - at[rid] for rid in at if rid in starts.at}
    per_time = {(r["flow_id"], r["scheduled_start_time"]) for r in runs}
    return {
        "runs_due": len(due), "runs_started": len(late), "runs_not_started": len(due) - len(late),
        "duplicate_runs": len(runs) - len(per_time),
        "runs_without_one_submitted_line": sum(len(lines.get(rid, [])) != 1 for rid in at),
        "lateness_container_start": _spread(list(late.values())),
        "lateness_submitted_line": _spread([lines[rid][0] - at[rid] for rid in at if rid in lines]),
        "created_ahead": _spread([at[rid] - created[rid] for rid in at if rid in created]),
        "samples_s": {rid: round(value, 4) for rid, value in sorted(late.items(), key=lambda kv: at[kv[0]])},
    }


def measure(sizes: Sizes, work: Path) -> dict[str, Any]:
    """One server, one agent, `sizes.flows` staggered one-minute clocks; figures for the runs due in the
    window."""
    client = docker_client()
    image = ensure_flow_image(client)
    db_path = work / "schedule.db"
    server = backend.Server(f"sqlite:///{db_path}", work / "server.log").start()
    agent = our_agent(server.url, server.port, LABEL, f"bench-schedule-{os.getpid()}", work)
    starts = Starts(client, agent.env["PREFECT__CLOUD__AGENT__NAME"])
    flow_ids: list[str] = []
    try:
        agent.start()
        interval = float(_scheduler_defaults().get("scheduler_interval_s", 10.0))
        first = time.time() + 2 * interval + 5  # after the scheduler's first pass over the new flows
        project = _project(server.url)
        flow_ids = [register_scheduled(server.url, project, f"bench-schedule-{i:02d}", image,
                                       first + i * sizes.stagger_s) for i in range(sizes.flows)]
        end = first + sizes.window_s
        _wait_and_finish(server.url, flow_ids, starts, end)
        for flow_id in flow_ids:
            _set_schedule(server.url, flow_id, active=False)
        figures = _figures(server.url, flow_ids, starts, _created(db_path), (first, end))
    finally:
        agent.stop()
        starts.close()
        server.stop()
        _remove_containers(client, agent.env["PREFECT__CLOUD__AGENT__NAME"])
    return figures


def _remove_containers(client: docker.DockerClient, agent_name: str) -> None:
    for container in client.api.containers(all=True, filters={"label": f"{AGENT_LABEL}={agent_name}"}):
        try:
            client.api.remove_container(container["Id"], force=True)
        except docker.errors.APIError:  # removed by the agent's own clean-up meanwhile
            continue


def run_schedule_lateness(quick: bool, out_dir: Path) -> dict[str, Path]:
    """Measure and write `schedule-lateness-<date>.json` and `.md` (`-quick` with --quick)."""
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-schedule-") as work:
        began, load_before = datetime.now(UTC), os.getloadavg()[0]
        figures = measure(sizes, Path(work))
    figures["target"] = f"container-start lateness p95 <= {TARGET_P95_S} s"
    figures["met"] = figures["lateness_container_start"].get("p95_s", float("inf")) <= TARGET_P95_S
    return write_benchmark("schedule-lateness", quick=quick, began=began, load_before=load_before,
                           figures=figures, render=markdown, out_dir=out_dir, sizes=asdict(sizes),
                           clock_s=CLOCK_S, server_scheduler=_scheduler_defaults())


def markdown(meta: dict[str, Any], figures: dict[str, Any]) -> str:
    sizes, load = meta["sizes"], " -> ".join(str(x) for x in meta["load_1min"])
    lines = [
        "# Lateness of scheduled runs: the server's scheduler and our agent", "",
        f"{meta['started']} UTC on {meta['machine']}, Python {meta['python']}, 1-min load average {load} "
        f"(start -> end){' (quick: a smoke test, numbers mean nothing)' if meta['quick'] else ''}", "",
        f"{sizes['flows']} flows, each a {meta['clock_s']:.0f} s IntervalClock, start dates "
        f"{sizes['stagger_s']} s apart (a run due every {sizes['stagger_s']} s) for "
        f"{sizes['window_s']:.0f} s; "
        f"server scheduler settings {meta['server_scheduler']}.", "",
        "| figure | n | median (s) | p95 (s) | max (s) | min (s) |", "|---|---:|---:|---:|---:|---:|",
    ]
    for key, title in (("lateness_container_start", "container start - scheduled start"),
                       ("lateness_submitted_line", "'Submitted' line - scheduled start"),
                       ("created_ahead", "scheduled start - run created (lead)")):
        row = figures[key]
        lines.append(f"| {title} | {row['n']} | " + " | ".join(
            str(row.get(k, "-")) for k in ("median_s", "p95_s", "max_s", "min_s")) + " |")
    counts = ("runs_due", "runs_started", "runs_not_started", "duplicate_runs",
              "runs_without_one_submitted_line")
    lines += ["", "| count | value |", "|---|---:|", *(f"| {k} | {figures[k]} |" for k in counts), "",
              f"Target: {figures['target']}: {'met' if figures['met'] else '**MISSED**'}."]
    return "\n".join(lines) + "\n"
