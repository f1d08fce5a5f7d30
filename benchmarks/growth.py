"""`python -m benchmarks growth [--quick] [--stores sqlite,postgres]`: how the server's cost grows with the
runs and logs it stores.

For each store and size (10^4, 10^5, 10^6 flow runs; 10 log lines per run) a fresh database (a SQLite file,
or a database in a throwaway PostgreSQL cluster: `growth_stores.py`) is seeded with the server's own seeders
(`server.seed`: finished runs, a due backlog, one task run each, the log lines), a fresh server process is
started on it and driven over HTTP as an agent and a flow run would: `get_runs_in_queue`,
`set_flow_run_states` (Submitted -> Running -> Success of due runs) and `write_run_logs` in calls of 100
lines. Every figure is also given as a ratio to the smallest size of the same store in the same run.

At the largest size, half of the finished runs (the oldest) are then aged past the retention cutoff and one
retention pass (`server.retention.sweep`, in a separate process, as the lease holder's sweep would run next
to the API) deletes them while the queue and state calls go on; the same calls are timed before, during and
after it, and the database's size is taken before, after the pass, and after a vacuum (SQLite `VACUUM`,
PostgreSQL `VACUUM FULL`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import backend
from benchmarks.config import REPO_ROOT
from benchmarks.growth_stores import StoreKind
from benchmarks.stats import percentile

RETENTION_DAYS = 30.0
STORES = ("sqlite", "postgres")


@dataclass(frozen=True)
class Sizes:
    runs: tuple[int, ...]
    logs_per_run: int = 10
    queue_samples: int = 200
    state_runs: int = 30  # due runs taken Submitted -> Running -> Success per measurement (3 calls each)
    during_state_runs: int = 200  # at most this many during the retention pass
    log_calls: int = 100
    log_batch: int = 100  # lines per write_run_logs call, as Prefect's CloudHandler batches them
    retention_batch_runs: int = 200  # the server's default LOCAL_AGENT_SERVER_RETENTION_BATCH_RUNS

    @property
    def due(self) -> int:
        """The due backlog: the queue's page (25) stays full after every state measurement took its runs."""
        return 50 + 2 * (self.state_runs + 1) + self.during_state_runs


FULL = Sizes(runs=(10_000, 100_000, 1_000_000))
QUICK = Sizes(runs=(200, 400), queue_samples=20, state_runs=4, during_state_runs=4, log_calls=4,
              retention_batch_runs=5)


def latency(times_ms: list[float]) -> dict[str, Any]:
    return {"median_ms": statistics.median(times_ms) if times_ms else None,
            "p95_ms": percentile(times_ms, 95), "max_ms": max(times_ms) if times_ms else None,
            "samples": len(times_ms)}


class Store:
    """One seeded database and the server process on it."""

    def __init__(self, kind: StoreKind, work_dir: Path, runs: int, sizes: Sizes) -> None:
        from benchmarks.queue_latency import seed_database
        from server import db
        from server.seed import analyze, seed_logs

        self.kind, self.url = kind, kind.new_url(runs)
        began = time.monotonic()
        self.tenant = seed_database(self.url, runs, due=sizes.due)
        self.seed_runs_s = time.monotonic() - began
        self.engine = db.create_db_engine(self.url)
        began = time.monotonic()
        self.log_lines = seed_logs(self.engine, sizes.logs_per_run)
        if kind.name == "postgres":
            analyze(self.engine)  # the log table was empty at the first ANALYZE
        self.seed_logs_s = time.monotonic() - began
        log_path = work_dir / f"server-{kind.name}-{runs}.log"
        self.server = backend.Server(database_url=self.url, log_path=log_path)
        self.due = self._due_runs()

    def _due_runs(self) -> list[str]:
        from server import db

        with db.read_tx(self.engine) as conn:
            rows = conn.exec_driver_sql("SELECT id FROM flow_run WHERE state = 'Scheduled' ORDER BY id")
            return [row[0] for row in rows]

    def take_due(self, count: int) -> list[str]:
        taken, self.due = self.due[:count], self.due[count:]
        return taken

    def size(self) -> dict[str, Any]:
        return self.kind.size(self.engine, self.url)

    def close(self) -> None:
        self.server.stop()
        self.engine.dispose()
        self.kind.drop(self.url)  # disk: the largest database alone is gigabytes


STATES_MUTATION = ("mutation($input: set_flow_run_states_input!) "
                   "{ set_flow_run_states(input: $input) { states { id status } } }")
LOGS_MUTATION = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"


def set_state(url: str, run_id: str, state: str) -> float:
    """One `set_flow_run_states` round trip in ms."""
    body = {"input": {"states": [{"flow_run_id": run_id, "version": None,
                                  "state": {"type": state, "message": "growth", "__version__": "1.4.1"}}]}}
    t0 = time.perf_counter()
    outcome = backend.graphql(url, STATES_MUTATION, body)["set_flow_run_states"]["states"][0]
    elapsed = (time.perf_counter() - t0) * 1000.0
    if outcome["status"] != "SUCCESS":  # a refused transition would be timed as a cheap no-op
        raise RuntimeError(f"set_flow_run_states {state} of {run_id}: {outcome}")
    return elapsed


def run_states(url: str, run_ids: list[str]) -> list[tuple[float, float]]:
    """Submitted -> Running -> Success for each run: (wall-clock start, ms) per call."""
    samples = []
    for run_id in run_ids:
        for state in ("Submitted", "Running", "Success"):
            began = time.time()
            samples.append((began, set_state(url, run_id, state)))
    return samples


def write_logs(url: str, run_ids: list[str], calls: int, batch: int) -> dict[str, Any]:
    """`calls` write_run_logs calls of `batch` lines each, one run per call, sequentially."""
    times = []
    for i in range(calls):
        run_id = run_ids[i % len(run_ids)]
        logs = [{"flow_run_id": run_id, "name": "prefect.CloudTaskRunner", "level": "INFO",
                 "message": f"Task 'say': line {k} of a growth benchmark call",
                 "timestamp": datetime.now(UTC).isoformat()} for k in range(batch)]
        t0 = time.perf_counter()
        backend.graphql(url, LOGS_MUTATION, {"input": {"logs": logs}})
        times.append(time.perf_counter() - t0)
    return {"lines_per_s": calls * batch / sum(times), "lines_per_call": batch, "calls": calls,
            "call_median_ms": statistics.median(times) * 1000.0,
            "call_p95_ms": (percentile(times, 95) or 0.0) * 1000.0}


def api_figures(store: Store, sizes: Sizes) -> dict[str, Any]:
    """The queue, state and log calls against the running server, in that order."""
    from benchmarks.queue_latency import time_queue

    times, returned = time_queue(store.server.url, store.tenant, sizes.queue_samples)
    queue = latency(times) | {"returned": returned}
    run_states(store.server.url, store.take_due(1))  # untimed warm-up, as the queue's
    states = run_states(store.server.url, store.take_due(sizes.state_runs))
    write_logs(store.server.url, store.due[:1], 1, sizes.log_batch)
    logs = write_logs(store.server.url, store.due[:10], sizes.log_calls, sizes.log_batch)
    return {"queue": queue, "set_state": latency([ms for _, ms in states]), "write_logs": logs}


def measure_size(kind: StoreKind, runs: int, sizes: Sizes, work_dir: Path, *,
                 retention: bool) -> dict[str, Any]:
    load = os.getloadavg()[0]
    store = Store(kind, work_dir, runs, sizes)
    try:
        size = store.size()
        figures: dict[str, Any] = {
            "runs": runs, "load_1min": round(load, 1), "log_lines": store.log_lines,
            "seed_runs_s": store.seed_runs_s, "seed_logs_s": store.seed_logs_s, "db_bytes": size["bytes"],
            "bytes_per_10k_runs": size["bytes"] * 10_000 / runs}
        store.server.start()
        figures |= api_figures(store, sizes)
        if retention:
            figures["retention"] = measure_retention(store, sizes, figures, work_dir)
        return figures
    finally:
        store.close()


def age_oldest_half(store: Store) -> tuple[int, datetime]:
    """Set the state timestamp of the oldest half of the finished runs (the first seeded) past the cutoff."""
    from sqlalchemy import func, select, update

    from server import db

    fr = db.flow_run
    cutoff = db.utcnow() - timedelta(days=RETENTION_DAYS)
    with db.write_tx(store.engine) as conn:
        finished = conn.execute(select(func.count()).where(fr.c.state == "Success")).scalar_one()
        oldest = select(fr.c.id).where(fr.c.state == "Success").order_by(fr.c.id).limit(finished // 2)
        conn.execute(update(fr).where(fr.c.id.in_(oldest)).values(state_timestamp=cutoff - timedelta(days=1)))
    return finished // 2, cutoff


def sweep_process(url: str, cutoff: datetime, batch_runs: int, started: Path) -> dict[str, float]:
    """One retention pass as the server runs it (its settings, its engine), timed; in a child process that
    touches `started` when the pass begins."""
    from server import db, retention
    from server.context import Services
    from server.settings import ServerSettings

    settings = ServerSettings(database_url=url, retention_days=RETENTION_DAYS,
                              retention_batch_runs=batch_runs)
    engine = db.create_db_engine(url)
    try:
        services = Services(settings=settings, engine=engine)
        started.touch()
        began = time.time()
        deleted = retention.sweep(services, cutoff)
        return {"deleted": deleted, "began": began, "ended": time.time()}
    finally:
        engine.dispose()


def during_pass(store: Store, sizes: Sizes, pending: subprocess.Popen[bytes],
                started: Path) -> tuple[list[Any], list[Any]]:
    """From the pass's start to its end, queue queries (10 at a time) and one run's three state calls,
    alternately: (wall-clock start, wall-clock end) per call."""
    from benchmarks.queue_latency import QUEUE_LABEL

    queue: list[Any] = []
    states: list[Any] = []
    while not started.exists() and pending.poll() is None:
        time.sleep(0.005)
    while pending.poll() is None:
        for _ in range(10):
            t0 = time.time()
            backend.queue_query(store.server.url, store.tenant, [QUEUE_LABEL], t0 + 10)
            queue.append((t0, time.time()))
        if len(states) < 3 * sizes.during_state_runs and store.due:
            states += [(t0, t0 + ms / 1000.0) for t0, ms in run_states(store.server.url, store.take_due(1))]
    return queue, states


def overlapping(samples: list[Any], began: float, ended: float) -> list[float]:
    """The calls in flight while the pass ran, in ms."""
    return [(t1 - t0) * 1000.0 for t0, t1 in samples if t1 >= began and t0 <= ended]


def measure_retention(store: Store, sizes: Sizes, before: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    from benchmarks.queue_latency import time_queue

    began = time.monotonic()
    aged, cutoff = age_oldest_half(store)
    age_s = time.monotonic() - began
    size_before = store.size()
    started = work_dir / f"retention-started-{store.kind.name}"
    command = [sys.executable, "-m", "benchmarks.growth", store.url, cutoff.isoformat(),
               str(sizes.retention_batch_runs), str(started)]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE) as pending:
        queue_during, states_during = during_pass(store, sizes, pending, started)
        out, _ = pending.communicate()
    if pending.returncode != 0:
        raise RuntimeError(f"the retention pass exited with {pending.returncode}")
    result = json.loads(out)
    pass_s = result["ended"] - result["began"]
    times, _ = time_queue(store.server.url, store.tenant, sizes.queue_samples)
    run_states(store.server.url, store.take_due(1))
    states_after = run_states(store.server.url, store.take_due(sizes.state_runs))
    size_after = store.size()
    store.server.stop()  # a vacuum is maintenance: SQLite's checkpoint of it must not wait for the server
    began = time.monotonic()
    store.kind.vacuum(store.engine, store.url)
    vacuum_s = time.monotonic() - began
    window = (result["began"], result["ended"])
    return {
        "retention_days": RETENTION_DAYS, "batch_runs": sizes.retention_batch_runs, "aged_runs": aged,
        "age_s": age_s, "deleted_runs": int(result["deleted"]), "pass_s": pass_s,
        "runs_deleted_per_s": result["deleted"] / pass_s if pass_s > 0 else None,
        "size": {"before_bytes": size_before["bytes"], "after_pass_bytes": size_after["bytes"],
                 "after_pass_free_bytes": size_after["free_bytes"],
                 "after_pass_dead_rows": size_after.get("dead_rows"),
                 "after_vacuum_bytes": store.size()["bytes"], "vacuum": store.kind.vacuum_command,
                 "vacuum_s": vacuum_s},
        "queue": {"before": before["queue"], "during": latency(overlapping(queue_during, *window)),
                  "after": latency(times)},
        "set_state": {"before": before["set_state"], "during": latency(overlapping(states_during, *window)),
                      "after": latency([ms for _, ms in states_after])},
    }


RATIO_KEYS = (("queue", "median_ms"), ("queue", "p95_ms"), ("set_state", "median_ms"),
              ("set_state", "p95_ms"), ("write_logs", "lines_per_s"), ("db_bytes", None),
              ("bytes_per_10k_runs", None))


def with_ratios(rows: list[dict[str, Any]]) -> None:
    """`ratios`: each figure over the smallest size's, same run."""
    base = rows[0]
    for row in rows:
        row["ratios"] = {}
        for key, sub in RATIO_KEYS:
            value, ref = (row[key], base[key]) if sub is None else (row[key][sub], base[key][sub])
            row["ratios"][key if sub is None else f"{key}.{sub}"] = (
                round(value / ref, 3) if value is not None and ref else None)


def measure(kind: StoreKind, sizes: Sizes, work_dir: Path) -> dict[str, Any]:
    """Every size on one store, smallest first; the retention pass at the largest."""
    largest = sizes.runs[-1]
    rows = [measure_size(kind, runs, sizes, work_dir, retention=runs == largest) for runs in sizes.runs]
    with_ratios(rows)
    retention = rows[-1].pop("retention")
    return {"baseline_runs": rows[0]["runs"], "sizes": rows, "retention": retention}


def measure_stores(stores: tuple[str, ...], sizes: Sizes, work_dir: Path) -> dict[str, Any]:
    from benchmarks.growth_stores import PostgresStore, SqliteStore
    from benchmarks.postgres import cluster, server_version

    figures: dict[str, Any] = {}
    if "sqlite" in stores:
        figures["sqlite"] = measure(SqliteStore(work_dir), sizes, work_dir)
    if "postgres" in stores:
        with cluster() as pg:
            version = server_version(pg)
            figures["postgres"] = {"version": version} | measure(PostgresStore(pg), sizes, work_dir)
    return figures


def run_growth(quick: bool, out_dir: Path, stores: tuple[str, ...] = STORES) -> dict[str, Path]:
    """Measure, then write growth-<date>.json, .md and .png (growth-quick.* with --quick)."""
    from benchmarks.growth_report import markdown, plot
    from benchmarks.report import write_benchmark

    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-growth-", dir=os.environ.get("BENCH_GROWTH_TMP")) as work:
        began, load_before = datetime.now(UTC), os.getloadavg()[0]
        figures = measure_stores(stores, sizes, Path(work))
    stem = "growth-quick" if quick else f"growth-{began.strftime('%Y-%m-%d')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(figures, out_dir / f"{stem}.png")
    paths = write_benchmark("growth", quick=quick, began=began, load_before=load_before, figures=figures,
                            render=markdown, out_dir=out_dir, sizes=asdict(sizes), plot=f"{stem}.png",
                            title="Server growth: cost vs runs and log lines stored")
    return paths | {"png": out_dir / f"{stem}.png"}


if __name__ == "__main__":  # the retention pass's own process: URL, cutoff, batch runs, started marker
    url_arg, cutoff_arg, batch_arg, started_arg = sys.argv[1:5]
    print(json.dumps(sweep_process(url_arg, datetime.fromisoformat(cutoff_arg), int(batch_arg),
                                   Path(started_arg))))
