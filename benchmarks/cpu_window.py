"""CPU seconds of an agent process tree and of the whole machine over a window known only afterwards.

A burst's window (the agent's first poll -> its last container start or trailing request) is found from the
proxy's record once the burst is over, so a background thread samples both counters ten times a second and
the window is read off by linear interpolation; a single read at the end would also count the quiet seconds
the benchmark waits out before stopping the agent.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

import psutil

_CHILDREN_EVERY = 10  # ticks between re-reads of the child list (a /proc scan: ~2 ms)


def machine_busy_s() -> float:
    """Seconds of CPU the machine's cores spent busy so far (user, nice, system, irq, softirq)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def value_at(times: list[float], series: list[float], t: float) -> float:
    """`series` (sampled at the ascending `times`) at time `t`: linear between samples, clamped outside."""
    i = bisect.bisect_left(times, t)
    if i == 0:
        return series[0]
    if i == len(times):
        return series[-1]
    t0, t1 = times[i - 1], times[i]
    share = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
    return series[i - 1] + (series[i] - series[i - 1]) * share


@dataclass(frozen=True)
class CpuWindow:
    """What `CpuSampler.window` reads: seconds of wall clock, of agent CPU and of the machine's busy CPU."""

    wall_s: float
    agent_cpu_s: float
    machine_busy_s: float

    @property
    def percent_of_core(self) -> float | None:
        return 100.0 * self.agent_cpu_s / self.wall_s if self.wall_s > 0 else None

    @property
    def share_percent(self) -> float | None:
        """The agent's CPU as a percentage of all the CPU the machine's cores were busy with."""
        return 100.0 * self.agent_cpu_s / self.machine_busy_s if self.machine_busy_s > 0 else None


class CpuSampler:
    """`with CpuSampler(pid) as cpu:` samples (time, agent tree CPU, machine busy CPU) every `interval`."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self._root = psutil.Process(pid)
        self._interval = interval
        self._procs: list[psutil.Process] = [self._root]
        self._times: list[float] = []
        self._agent: list[float] = []
        self._machine: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(self._interval):
            tick += 1
            if tick % _CHILDREN_EVERY == 0:
                try:
                    self._procs = [self._root, *self._root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    return
            self._sample()

    def _tree_cpu_s(self) -> float:
        total = 0.0
        for proc in self._procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def _sample(self) -> None:
        at, agent, machine = time.time(), self._tree_cpu_s(), machine_busy_s()
        with self._lock:
            if self._agent and agent < self._agent[-1]:  # a child went away: never let the count go back
                agent = self._agent[-1]
            self._times.append(at)
            self._agent.append(agent)
            self._machine.append(machine)

    def window(self, begin: float, end: float) -> CpuWindow:
        """Both counters' growth between the wall-clock times `begin` and `end` (clamped to the samples)."""
        with self._lock:
            times, agent, machine = self._times, self._agent, self._machine
            return CpuWindow(
                wall_s=end - begin,
                agent_cpu_s=value_at(times, agent, end) - value_at(times, agent, begin),
                machine_busy_s=value_at(times, machine, end) - value_at(times, machine, begin),
            )
