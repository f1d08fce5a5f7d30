"""Benchmark sizes (full and smoke), the issue's targets and the measured Prefect baseline.

Sizes are chosen so the full run stays under 20 minutes on 2 cores: the long parts are the two idle windows
(2 min each, run side by side) and the immediate scenario, whose gaps must be long enough for Prefect's poll
backoff to reach its 10 s ceiling, as it would on a quiet production queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
FLOW_IMAGE = "local-agent-bench-flow:latest"  # no "/" in the name: Prefect's DockerAgent never pulls it
BENCH_LABEL = "io.local-agent.bench"  # on every container/image the benchmark itself creates


@dataclass(frozen=True)
class BenchConfig:
    """How much of each scenario to run; `smoke()` shrinks everything for CI."""

    smoke: bool = False
    burst_runs: int = 200
    burst_repeats: int = 5  # our agent's bursts, each right after its own ceiling burst: median and spread
    prefect_burst_repeats: int = 2  # Prefect's burst is the baseline, not the figure judged (time budget)
    scheduled_runs: int = 40
    scheduled_lead_s: float = 12.0  # first due time; > the agents' 10 s prefetch so they see it coming
    scheduled_spacing_s: float = 0.5
    immediate_runs: int = 15
    immediate_gap_s: tuple[float, float] = (6.0, 16.0)  # uniform random pause before each run is created
    idle_s: float = 120.0
    startup_repeats: int = 3
    queue_runs: int = 100_000
    queue_samples: int = 200
    seed: int = 7
    systems: tuple[str, ...] = ("ours", "prefect")
    run_timeout_s: float = 180.0  # a scenario waiting longer than this for its containers gives up
    build_agent_image: bool = True

    def repeats_of(self, system: str) -> int:
        """How many bursts `system` runs."""
        return self.prefect_burst_repeats if system == "prefect" else self.burst_repeats

    @classmethod
    def full(cls) -> BenchConfig:
        return cls()

    @classmethod
    def smoke_config(cls) -> BenchConfig:
        return cls(
            smoke=True,
            burst_runs=10,
            burst_repeats=2,  # the repetition path runs, Prefect's single burst keeps the smoke short
            prefect_burst_repeats=1,
            scheduled_runs=10,
            scheduled_lead_s=2.0,  # inside the prefetch window: the smoke checks the path, not the timing
            scheduled_spacing_s=0.1,
            immediate_runs=4,
            immediate_gap_s=(0.2, 0.6),
            idle_s=3.0,
            startup_repeats=1,
            queue_runs=2_000,
            queue_samples=30,
            run_timeout_s=60.0,
            build_agent_image=False,
        )


@dataclass(frozen=True)
class Target:
    """One goal of the issue: `key` names the figure in results.json, `limit` its bound."""

    key: str
    description: str
    op: str  # ">=" or "<="
    limit: float | None = None  # absolute bound; None when the bound is Prefect's own figure
    against_prefect: bool = False
    factor: float = 1.0  # the bound is `factor` x Prefect's figure (against_prefect only)

    def bound(self, prefect_value: float | None) -> float | None:
        if not self.against_prefect:
            return self.limit
        return None if prefect_value is None else self.factor * prefect_value

    def met(self, value: float | None, prefect_value: float | None) -> bool | None:
        bound = self.bound(prefect_value)
        if value is None or bound is None:
            return None
        return value >= bound if self.op == ">=" else value <= bound


TARGETS: tuple[Target, ...] = (
    Target("burst.ratio_to_ceiling", "burst throughput >= 95 % of the Docker ceiling (median of the repeats)",
           ">=", 0.95),
    Target("scheduled.p95_s", "scheduled lateness p95 <= 0.30 s", "<=", 0.30),
    Target("immediate.p95_s", "immediate lateness p95 <= 1.0 s", "<=", 1.0),
    Target("idle.requests_per_min", "idle API requests/min <= Prefect's", "<=", against_prefect=True),
    Target("idle.rss_mb", "idle RSS <= Prefect's", "<=", against_prefect=True),
    Target("startup.first_poll_s", "launch -> first poll <= Prefect's", "<=", against_prefect=True),
    Target("burst.requests_per_run", "<= 1.5 API requests per launched run in a burst", "<=", 1.5),
    Target("burst.cpu_ms_per_run", "agent CPU per launched run in a burst <= half of Prefect's", "<=",
           against_prefect=True, factor=0.5),
    Target("queue.median_ms", "server queue latency median <= 20 ms at 100,000 runs", "<=", 20.0),
)

# Prefect 1.4.1 DockerAgent measured on this machine before the benchmark existed (issue 7; medians).
PREFECT_BASELINE: dict[str, float] = {
    "burst.runs_per_s": 4.5,
    "burst.ratio_to_ceiling": 0.95,
    "scheduled.p50_s": 0.32,
    "scheduled.p95_s": 0.44,
    "immediate.p50_s": 3.1,
    "immediate.p95_s": 7.0,
    "idle.rss_mb": 57.0,
    "idle.cpu_percent": 0.1,
    "idle.requests_per_min": 6.0,
    "startup.first_poll_s": 0.57,
    "burst.requests_per_run": 2.85,
}
