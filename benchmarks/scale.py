"""`python -m benchmarks queue-scale | claims | wakeup [--quick]`: the server on PostgreSQL with replicas.

Each command starts its own throwaway PostgreSQL cluster (`benchmarks/postgres.py`), runs one measurement and
writes `benchmarks/results/<name>-<date>.json` and `.md` (or into `--out`). `--quick` is a small size that
only proves the pipeline works (CI's smoke test); its numbers mean nothing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.postgres import cluster, server_version
from benchmarks.report import write_benchmark

TARGET_QUEUE_MEDIAN_MS = 20.0
TARGET_WAKEUP_P95_S = 1.0


@dataclass(frozen=True)
class Sizes:
    queue_runs: int
    queue_samples: int
    claim_runs: int
    wake_runs: int
    claim_rounds: int = 2  # 1x1 and 3x3 set-ups alternated this often (the load drifts between them)


FULL = Sizes(queue_runs=1_000_000, queue_samples=200, claim_runs=3000, wake_runs=50)
QUICK = Sizes(queue_runs=5_000, queue_samples=30, claim_runs=150, wake_runs=3, claim_rounds=1)


def queue_scale(sizes: Sizes, work_dir: Path) -> dict[str, Any]:
    """The queue query at `queue_runs` stored runs on PostgreSQL, then on SQLite, same server code."""
    from benchmarks.queue_latency import measure_queue_on

    with cluster() as pg:
        figures: dict[str, Any] = {"postgres_version": server_version(pg)}
        figures |= measure_queue_on(pg.create_database(), work_dir, sizes.queue_runs, sizes.queue_samples,
                                    prefix="postgres")
    figures |= measure_queue_on(f"sqlite:///{work_dir / 'queue-scale.db'}", work_dir, sizes.queue_runs,
                                sizes.queue_samples, prefix="sqlite")
    figures["target"] = f"postgres median <= {TARGET_QUEUE_MEDIAN_MS} ms"
    figures["met"] = figures["postgres.median_ms"] <= TARGET_QUEUE_MEDIAN_MS
    return figures


def claims(sizes: Sizes, work_dir: Path) -> dict[str, Any]:
    from benchmarks.claims import compare

    with cluster() as pg:
        figures: dict[str, Any] = {"postgres_version": server_version(pg)}
        return figures | compare(pg.create_database, work_dir, sizes.claim_runs, sizes.claim_rounds)


def wakeup(sizes: Sizes, work_dir: Path) -> dict[str, Any]:
    """On PostgreSQL (LISTEN/NOTIFY plus the re-check), then two replicas on one SQLite file, where nothing
    crosses processes but the long poll's periodic re-check: the fallback's latency, for comparison."""
    from benchmarks.wakeup import measure_wakeup

    with cluster() as pg:
        figures: dict[str, Any] = {"postgres_version": server_version(pg)}
        figures["postgres"] = measure_wakeup(pg.create_database(), work_dir, sizes.wake_runs)
    figures["sqlite"] = measure_wakeup(f"sqlite:///{work_dir / 'wakeup.db'}", work_dir, sizes.wake_runs)
    figures["target"] = f"postgres p95 <= {TARGET_WAKEUP_P95_S} s"
    figures["met"] = figures["postgres"]["p95_s"] <= TARGET_WAKEUP_P95_S
    return figures


COMMANDS: dict[str, tuple[Callable[[Sizes, Path], dict[str, Any]], str]] = {
    "queue-scale": (queue_scale, "get_runs_in_queue latency with many runs stored, PostgreSQL and SQLite"),
    "claims": (claims, "claims per second: 3 replicas x 3 claimers vs 1 replica x 1 claimer (PostgreSQL)"),
    "wakeup": (wakeup, "cross-replica wake-up latency: long poll on replica B, run created on replica A"),
}


def run_scale(name: str, quick: bool, out_dir: Path) -> dict[str, Path]:
    """Run one command and write its JSON and markdown; returns their paths."""
    measure, title = COMMANDS[name]
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as work:
        began, load_before = datetime.now(UTC), os.getloadavg()[0]
        figures = measure(QUICK if quick else FULL, Path(work))
    return write_benchmark(name, quick=quick, began=began, load_before=load_before, figures=figures,
                           render=markdown, out_dir=out_dir, title=title)


def markdown(meta: dict[str, Any], figures: dict[str, Any]) -> str:
    load = " -> ".join(str(x) for x in meta["load_1min"])
    when = f"{meta['started']} UTC on {meta['machine']}, Python {meta['python']}"
    lines = [f"# {meta['title']}", "", f"{when}, 1-min load average {load} (start -> end)"
             + (" (quick: sizes for a smoke test, numbers mean nothing)" if meta["quick"] else ""), "",
             "| figure | value |", "|---|---:|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in _flat(figures) if key != "samples_s"]
    return "\n".join(lines) + "\n"


def _flat(figures: Any, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    items = figures.items() if isinstance(figures, dict) else enumerate(figures, 1)
    for key, value in items:
        if isinstance(value, dict | list) and key != "samples_s":
            rows += _flat(value, f"{prefix}{key}.")
        elif key != "samples_s":
            rows.append((f"{prefix}{key}", value))
    return rows


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
