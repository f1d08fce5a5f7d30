"""CI's 10-run smoke version of `python -m benchmarks run`, so the benchmark cannot rot.

It asserts that the command runs end to end against the real server, Docker daemon, our agent and Prefect
1.4.1's DockerAgent, and that every figure reached results.json and results.md. No timing is asserted: the
figures of a 10-run smoke on a shared CI machine mean nothing; the committed full run is what counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from benchmarks.config import TARGETS
from benchmarks.report import ROWS, SERVER_ROWS

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every per-agent figure except the image size, which the smoke skips (a rebuild on each code change).
AGENT_FIGURES = [key for key, *_ in ROWS if key != "image.size_mb"]
SERVER_FIGURES = [key for key, *_ in SERVER_ROWS]

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Path:
    out = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=400,
    )
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, f"benchmark exited {proc.returncode}\n{tail}"
    return out


def test_smoke_writes_every_figure(smoke_results: Path) -> None:
    results = json.loads((smoke_results / "results.json").read_text())
    assert results["errors"] == {}
    for system in ("ours", "prefect"):
        figures = results["figures"][system]
        missing = [key for key in AGENT_FIGURES if figures.get(key) is None]
        assert not missing, f"{system} lacks {missing}"
        assert figures["burst.started"] == figures["burst.runs"] == 10
        assert len(results["samples"][system]["scheduled"]) == results["meta"]["config"]["scheduled_runs"]
    server = results["figures"]["server"]
    assert all(server.get(key) is not None for key in SERVER_FIGURES), server
    assert set(results["figures"]["ceiling"]) == {"before_ours", "before_prefect"}
    assert [t["key"] for t in results["targets"]] == [t.key for t in TARGETS]
    assert all(t["verdict"] in {"met", "MISSED"} for t in results["targets"]), results["targets"]


def test_smoke_writes_markdown_and_chart(smoke_results: Path) -> None:
    markdown = (smoke_results / "results.md").read_text()
    for _key, label, *_ in (*ROWS, *SERVER_ROWS):
        assert label in markdown
    for target in TARGETS:
        assert target.description in markdown
    assert (smoke_results / "lateness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_leaves_no_containers(smoke_results: Path, docker_client: docker.DockerClient) -> None:
    flow_name = json.loads((smoke_results / "results.json").read_text())["meta"]["flow_name"]
    left = docker_client.api.containers(all=True, filters={"label": f"io.prefect.flow-name={flow_name}"})
    assert left == []
