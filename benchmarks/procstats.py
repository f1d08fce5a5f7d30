"""Resource use of an agent process tree (the process and any children it spawned), via psutil / /proc."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Usage:
    rss_mb: float
    cpu_s: float  # user + system seconds so far, children included


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def usage(pid: int) -> Usage:
    rss = 0
    cpu = 0.0
    for proc in _tree(pid):
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return Usage(rss_mb=rss / 2**20, cpu_s=cpu)  # MiB, as ps/top show it
