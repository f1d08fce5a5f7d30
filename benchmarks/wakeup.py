"""Cross-replica wake-up latency: an agent long-polling replica B sees a run created through replica A.

The poller is the agent's own client (`CloudClient.runs_in_queue` with `wait_seconds`, the agent's 10 s
long poll and 10 s prefetch); every run it receives it claims at once (`Submitted`, as the agent does), so the
next poll waits again. The creator sends `create_flow_run` to replica A after a random pause (seeded), and the
figure is, per run, the poll's answer naming it minus the moment the create request was sent. What wakes B is
whatever the server offers across processes (a database notification, or its periodic re-check).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import backend
from benchmarks.claims import claim_entry
from benchmarks.replicas import prepare_database, replicas
from benchmarks.stats import percentile

WAKE_LABEL = "bench-wake"
LONG_POLL_S = 10.0


class Poller:
    """The agent's poll-then-claim loop against one replica; records when each run id first arrives."""

    def __init__(self, url: str, tenant: str) -> None:
        self.url, self.tenant = url, tenant
        self.seen: dict[str, float] = {}
        self.arrived = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        from agent.api.cloud import CloudClient
        from agent.api.models import iso_now, submitted_state

        cloud = CloudClient(self.url)
        await cloud.connect()
        try:
            while not stop.is_set():
                ids = await cloud.runs_in_queue(self.tenant, [WAKE_LABEL], iso_now(10.0), LONG_POLL_S)
                now = time.time()
                fresh = [i for i in ids if i not in self.seen]
                for run_id in fresh:
                    self.seen[run_id] = now
                if fresh:
                    self.arrived.set()
                    runs = await cloud.flow_runs(fresh, iso_now(-3.0))
                    await cloud.set_flow_run_states_partial([
                        claim_entry(r.id, r.version, submitted_state(r.serialized_state)) for r in runs])
        finally:
            await cloud.close()


async def _create_and_wait(poller: Poller, url: str, flow_id: str, index: int) -> float:
    sent = time.time()
    run_id = await asyncio.to_thread(backend.create_flow_run, url, flow_id, name=f"wake-{index}",
                                     labels=[WAKE_LABEL], scheduled_at=time.time())
    while run_id not in poller.seen:
        poller.arrived.clear()
        try:
            await asyncio.wait_for(poller.arrived.wait(), LONG_POLL_S * 3)
        except TimeoutError:
            raise RuntimeError(f"run {run_id} never reached the poller on the other replica") from None
    return poller.seen[run_id] - sent


async def _measure(url_a: str, url_b: str, tenant: str, flow_id: str, runs: int, seed: int) -> list[float]:
    poller = Poller(url_b, tenant)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    rng = random.Random(seed)
    latencies: list[float] = []
    try:
        await asyncio.sleep(1.0)  # the first long poll is waiting on B
        for index in range(runs):
            await asyncio.sleep(rng.uniform(0.3, 1.5))  # pauses unrelated to any server re-check period
            latencies.append(await _create_and_wait(poller, url_a, flow_id, index))
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return latencies


def measure_wakeup(database_url: str, work_dir: Path, runs: int, seed: int = 20261205) -> dict[str, Any]:
    """Two replicas on `database_url`; `runs` runs created on A while an agent long-polls B."""
    tenant = prepare_database(database_url)
    with replicas(database_url, 2, work_dir, name="wakeup") as (a, b):
        flow_id = backend.register_flow(a.url, "bench-wake", "local/busybox:latest")
        latencies = asyncio.run(_measure(a.url, b.url, tenant, flow_id, runs, seed))
    return {
        "runs": runs, "median_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 95) or 0.0, 3), "max_s": round(max(latencies), 3),
        "min_s": round(min(latencies), 3), "samples_s": [round(x, 4) for x in latencies],
    }
