"""`python -m benchmarks growth --quick` end to end at tiny sizes: every figure is there, the retention pass
deleted exactly the runs it aged, and the plot is written. Never a timing assert: the numbers go to the
benchmark's results, not to pass/fail."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.__main__ import main
from benchmarks.growth import QUICK

LATENCY = ("median_ms", "p95_ms", "max_ms", "samples")


def test_growth_quick_writes_every_figure_and_the_plot(tmp_path: Path) -> None:
    assert main(["growth", "--quick", "--stores", "sqlite", "--out", str(tmp_path)]) == 0

    figures = json.loads((tmp_path / "growth-quick.json").read_text())["figures"]
    assert list(figures) == ["sqlite"]  # PostgreSQL too without --stores (its own cluster: not in the suite)
    rows = figures["sqlite"]["sizes"]
    assert [row["runs"] for row in rows] == list(QUICK.runs)
    for row in rows:
        assert row["log_lines"] == row["runs"] * QUICK.logs_per_run
        assert row["db_bytes"] > 0 and row["bytes_per_10k_runs"] > 0
        assert row["queue"]["returned"] == 25 and row["queue"]["samples"] == QUICK.queue_samples
        assert row["set_state"]["samples"] == 3 * QUICK.state_runs
        assert all(row[key][field] is not None for key in ("queue", "set_state") for field in LATENCY)
        assert row["write_logs"]["lines_per_s"] > 0 and row["write_logs"]["calls"] == QUICK.log_calls
        assert all(value is not None for value in row["ratios"].values())
    assert set(rows[0]["ratios"].values()) == {1.0}  # the baseline is the smallest size of the same run

    retention = figures["sqlite"]["retention"]
    finished = QUICK.runs[-1] - QUICK.due + QUICK.state_runs + 1  # seeded, plus those the calls finished
    assert retention["aged_runs"] == finished // 2 == retention["deleted_runs"]
    assert retention["runs_deleted_per_s"] > 0
    size = retention["size"]
    assert size["after_pass_free_bytes"] > 0 and size["after_vacuum_bytes"] < size["after_pass_bytes"]
    for call in ("queue", "set_state"):
        assert set(retention[call]) == {"before", "during", "after"}
        assert set(LATENCY) <= set(retention[call]["during"])
        assert retention[call]["after"]["samples"] > 0
    assert retention["queue"]["during"]["samples"] > 0  # the pass ran while the queue was being asked

    markdown = (tmp_path / "growth-quick.md").read_text()
    assert "## SQLite" in markdown and "set_flow_run_states" in markdown and "growth-quick.png" in markdown
    assert (tmp_path / "growth-quick.png").read_bytes().startswith(b"\x89PNG")


def test_seeded_log_lines_belong_to_their_runs_and_read_back_through_the_api(database_url: str,
                                                                                tmp_path: Path) -> None:
    from server.seed import seed_flow_runs, seed_logs
    from tests.support.server_fixtures import InProcessServer

    store = InProcessServer(tmp_path, database_url=database_url)
    try:
        seed_flow_runs(store.services.engine, 7, due=2)
        assert seed_logs(store.services.engine, 3) == 21
        query = ("query($id: uuid!) { log(where: {flow_run_id: {_eq: $id}}, order_by: {timestamp: asc}) "
                 "{ level message timestamp } }")
        runs = store.graphql("query { flow_run { id } }")["data"]["flow_run"]
        for run in runs:
            logs = store.graphql(query, {"id": run["id"]})["data"]["log"]
            assert [line["level"] for line in logs] == ["INFO"] * 3
            assert len({line["timestamp"] for line in logs}) == 3
    finally:
        store.close()
    assert len(runs) == 7
