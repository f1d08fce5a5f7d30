"""The repeated-burst bookkeeping of `python -m benchmarks run`: the order of the bursts, how the repeats
become figures, the halved-Prefect target, the CPU window read off the samples and the report's table.
Nothing here times anything; the figures themselves come from the benchmark run."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from benchmarks.burst_report import burst_section
from benchmarks.config import TARGETS, BenchConfig
from benchmarks.cpu_window import CpuSampler, value_at
from benchmarks.runner import burst_schedule
from benchmarks.scenarios import burst_figures


def test_rounds_alternate_the_agents_then_ours_alone() -> None:
    full = burst_schedule(BenchConfig.full(), ["ours", "prefect"])
    assert full == [("ours", 1), ("prefect", 1), ("ours", 2), ("prefect", 2), ("ours", 3), ("ours", 4),
                    ("ours", 5)]
    smoke = burst_schedule(BenchConfig.smoke_config(), ["ours", "prefect"])
    assert smoke == [("ours", 1), ("prefect", 1), ("ours", 2)]
    assert burst_schedule(BenchConfig.full(), ["prefect"]) == [("prefect", 1), ("prefect", 2)]
    assert burst_schedule(BenchConfig.full(), []) == []


def _burst(ratio: float | None, cpu_ms: float, started: int = 10, ops: int = 1) -> dict[str, Any]:
    return {
        "runs": 10, "started": started, "duration_s": 2.0, "runs_per_s": 5.0, "ceiling_runs_per_s": 6.0,
        "ratio_to_ceiling": ratio, "requests": 10, "requests_per_run": 1.0, "window_s": 2.0,
        "cpu_s": cpu_ms / 100, "cpu_ms_per_run": cpu_ms, "cpu_percent": 5.0, "cpu_share_percent": 3.0,
        "requests_by_operation": {"get_runs_in_queue": ops, "flow_run": 2},
    }


def test_repeats_become_a_median_and_a_spread() -> None:
    figures = burst_figures([_burst(0.9, 12.0), _burst(1.1, 8.0, started=9, ops=2), _burst(0.8, 10.0),
                             _burst(None, 30.0)])
    assert figures["burst.ratio_to_ceiling"] == pytest.approx(0.9)  # the ratio missing once is left out
    assert (figures["burst.ratio_min"], figures["burst.ratio_max"]) == (0.8, 1.1)
    assert figures["burst.cpu_ms_per_run"] == pytest.approx(11.0)
    assert figures["burst.repeats"] == 4 and figures["burst.started"] == 9 and figures["burst.runs"] == 10
    assert figures["burst.requests_by_operation"] == {"flow_run": 8, "get_runs_in_queue": 5}


def test_cpu_target_is_half_of_prefects_figure() -> None:
    target = next(t for t in TARGETS if t.key == "burst.cpu_ms_per_run")
    assert target.bound(20.0) == 10.0
    assert target.met(10.0, 20.0) is True and target.met(10.5, 20.0) is False
    assert target.met(5.0, None) is None
    idle = next(t for t in TARGETS if t.key == "idle.rss_mb")
    assert idle.bound(58.0) == 58.0


def test_a_window_is_read_between_samples() -> None:
    times, series = [10.0, 11.0, 13.0], [1.0, 2.0, 6.0]
    assert value_at(times, series, 12.0) == 4.0
    assert value_at(times, series, 11.0) == 2.0
    assert (value_at(times, series, 5.0), value_at(times, series, 20.0)) == (1.0, 6.0)


def test_the_sampler_sees_a_busy_child_and_not_an_idle_one() -> None:
    busy = "import time\nwhile time.process_time() < 0.8: pass\ntime.sleep(30)"  # 0.8 s of CPU, then idle
    proc = subprocess.Popen([sys.executable, "-c", busy])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with CpuSampler(proc.pid, interval=0.05) as sampler, CpuSampler(idle.pid, interval=0.05) as quiet:
            began = time.time()
            deadline = time.monotonic() + 30
            while sampler.window(began - 60, time.time()).agent_cpu_s < 0.5 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            ended = time.time()
        window, still = sampler.window(began - 60, ended), quiet.window(began - 60, ended)
    finally:
        for p in (proc, idle):
            p.kill()
            p.wait()
    # what the child burnt before the first sample (its start-up) is outside every window
    assert window.agent_cpu_s >= 0.5 and window.machine_busy_s >= window.agent_cpu_s * 0.9
    assert still.agent_cpu_s < 0.3


def test_the_report_has_a_row_per_burst() -> None:
    figures = {"ours": {"burst.each": [_burst(0.9, 12.0), _burst(1.1, 8.0)]},
               "prefect": {"burst.each": [_burst(0.95, 25.0)]}}
    lines = burst_section(figures)
    rows = [line for line in lines if line.startswith("| ours |") or line.startswith("| Prefect 1.4.1 |")]
    assert len(rows) == 3 and "| 12.0 |" in rows[0] and "| 25.0 |" in rows[2]
    assert burst_section({}) == []
