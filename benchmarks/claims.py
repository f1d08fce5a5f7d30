"""Claims per second: 3 server replicas on one PostgreSQL with 3 claimers against 1 replica with 1 claimer.

A claimer is the agent's own claim loop over HTTP with the agent's own client (`agent.api.cloud.CloudClient`):
`get_runs_in_queue`, the runs' metadata (`flow_runs`, for each run's version), then one batched
`set_flow_run_states` to `Submitted` with each run's version (`partial`, as `agent.launch.claims` sends it),
until the queue is empty. Claimers race for the same runs, as agents with the same labels do; a claim lost to
another claimer is counted, never retried. Each claimer is its own process (agents are), started on a shared
wall-clock instant; the figure is N / (last claimer done - that instant). The N due runs are seeded with
`server.seed` into a fresh database before the replicas start, so only claiming is timed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.replicas import prepare_database, replicas

CLAIM_LABEL = "bench-claims"
START_DELAY_S = 2.0  # time for every claimer process to import the agent before the shared start


def claim_until_empty(url: str, tenant: str, start_at: float) -> dict[str, Any]:
    """One claimer process: the agent's claim loop against `url` until the queue is empty."""
    return asyncio.run(_claim_loop(url, tenant, start_at))


async def _claim_loop(url: str, tenant: str, start_at: float) -> dict[str, Any]:
    from agent.api.cloud import CloudClient
    from agent.api.models import iso_now, submitted_state

    cloud = CloudClient(url)
    await cloud.connect()
    won = lost = requests = 0
    claimed: list[str] = []
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while ids := await cloud.runs_in_queue(tenant, [CLAIM_LABEL], iso_now(10.0)):
            runs = await cloud.flow_runs(ids, iso_now(-3.0))
            requests += 2
            if not runs:
                continue
            entries = [claim_entry(r.id, r.version, submitted_state(r.serialized_state)) for r in runs]
            outcomes = await cloud.set_flow_run_states_partial(entries)
            requests += 1
            for entry, outcome in zip(entries, outcomes, strict=True):
                if outcome.get("status") == "SUCCESS":
                    won += 1
                    claimed.append(entry["flow_run_id"])
                else:
                    lost += 1
        requests += 1
    finally:
        await cloud.close()
    return {"won": won, "lost": lost, "requests": requests, "done_at": time.time(), "claimed": claimed}


def claim_entry(run_id: str, version: int, state: dict[str, Any]) -> dict[str, Any]:
    return {"flow_run_id": run_id, "version": version, "state": state}


def measure_claims(database_url: str, work_dir: Path, *, runs: int, servers: int,
                   claimers: int) -> dict[str, Any]:
    """Seed `runs` due runs, start `servers` replicas, race `claimers` claimer processes (round-robin over
    the replicas); returns runs/s and the claim outcomes."""
    from server import db
    from server.seed import analyze, seed_flow_runs

    tenant = prepare_database(database_url)
    engine = db.create_db_engine(database_url)
    try:
        seed_flow_runs(engine, runs, due=runs, labels=[CLAIM_LABEL], tenant_id=tenant)
        analyze(engine)
    finally:
        engine.dispose()
    with replicas(database_url, servers, work_dir, name=f"claims-{servers}x{claimers}") as started, \
            ProcessPoolExecutor(max_workers=claimers) as pool:
        start_at = time.time() + START_DELAY_S
        futures = [pool.submit(claim_until_empty, started[i % servers].url, tenant, start_at)
                   for i in range(claimers)]
        results = [f.result() for f in futures]
    elapsed = max(r["done_at"] for r in results) - start_at
    claimed = [run for r in results for run in r["claimed"]]
    return {
        "runs": runs, "servers": servers, "claimers": claimers, "elapsed_s": round(elapsed, 3),
        "claims_per_s": round(runs / elapsed, 1), "won": len(claimed), "distinct_won": len(set(claimed)),
        "lost_races": sum(r["lost"] for r in results), "requests": sum(r["requests"] for r in results),
    }


def compare(database_url_for: Any, work_dir: Path, runs: int, rounds: int = 2) -> dict[str, Any]:
    """1 replica x 1 claimer and 3 replicas x 3 claimers, alternated `rounds` times (the load drifts;
    alternating keeps each pair close in time), each on a fresh database of the same cluster."""
    pairs = []
    for _ in range(rounds):
        single = measure_claims(database_url_for(), work_dir, runs=runs, servers=1, claimers=1)
        triple = measure_claims(database_url_for(), work_dir, runs=runs, servers=3, claimers=3)
        pairs.append({"single": single, "replicated": triple,
                      "ratio": round(triple["claims_per_s"] / single["claims_per_s"], 2)})
    return {"rounds": pairs, "ratio_median": round(statistics.median(p["ratio"] for p in pairs), 2)}
