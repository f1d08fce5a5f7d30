"""Server queue latency: `get_runs_in_queue` round trips against a database holding many flow runs.

The database is seeded directly with the server's own seeder (`server.seed`: creating 100,000 runs through
GraphQL would take most of the time budget): finished runs plus a due backlog of 50, then `ANALYZE`. A fresh
server process is then started on it and queried over HTTP exactly as an agent would, sequentially, without
long polling, so the figure includes HTTP and GraphQL overhead - what an agent actually waits for.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import backend
from benchmarks.replicas import prepare_database
from benchmarks.stats import percentile

QUEUE_LABEL = "bench-queue"
DUE_RUNS = 50  # a due backlog twice the 25-run page, so every query returns a full page


def seed_database(database_url: str, runs: int, due: int = DUE_RUNS) -> str:
    """The schema, `runs` flow runs (`due` of them due) by the server's own seeder, then ANALYZE; returns the
    tenant id."""
    from server import db  # the server's own tables and seeder, so the rows are exactly what it reads
    from server.seed import analyze, seed_flow_runs

    tenant = prepare_database(database_url)
    engine = db.create_db_engine(database_url)
    try:
        seed_flow_runs(engine, runs, due=min(due, runs), labels=[QUEUE_LABEL], tenant_id=tenant)
        analyze(engine)
        return tenant
    finally:
        engine.dispose()


def time_queue(url: str, tenant: str, samples: int, warm_up: int = 5) -> tuple[list[float], int]:
    """`samples` sequential queue queries after `warm_up` untimed ones (the connection pool and the page
    cache); each round trip in ms, and how many runs the last one returned."""
    for _ in range(warm_up):
        backend.queue_query(url, tenant, [QUEUE_LABEL], time.time() + 10)
    times: list[float] = []
    returned = 0
    for _ in range(samples):
        t0 = time.perf_counter()
        ids = backend.queue_query(url, tenant, [QUEUE_LABEL], time.time() + 10)
        times.append((time.perf_counter() - t0) * 1000.0)
        returned = len(ids)
    return times, returned


def measure_queue(work_dir: Path, runs: int, samples: int) -> dict[str, Any]:
    """Seed a SQLite file, start a server on it, time `samples` sequential queue queries; figures in ms."""
    return measure_queue_on(f"sqlite:///{work_dir / 'queue.db'}", work_dir, runs, samples, prefix="queue")


def measure_queue_on(database_url: str, work_dir: Path, runs: int, samples: int, *,
                     prefix: str) -> dict[str, Any]:
    """The same on any database URL (SQLite or PostgreSQL); figures named `<prefix>.*`."""
    began = time.monotonic()
    tenant = seed_database(database_url, runs)
    seed_s = time.monotonic() - began
    server = backend.Server(database_url=database_url, log_path=work_dir / f"server-{prefix}.log").start()
    try:
        times, returned = time_queue(server.url, tenant, samples)
    finally:
        server.stop()
    return {
        f"{prefix}.runs_stored": runs,
        f"{prefix}.median_ms": statistics.median(times),
        f"{prefix}.p95_ms": percentile(times, 95),
        f"{prefix}.max_ms": max(times),
        f"{prefix}.samples": samples,
        f"{prefix}.returned": returned,
        f"{prefix}.seed_s": seed_s,
    }
