"""Size of our agent image (the `agent` target of the repository's Dockerfile), built as the tests build it.

Prefect's own agent image (`prefecthq/prefect:1.4.1`) needs a registry we cannot reach here, so only ours is
measured.
"""

from __future__ import annotations

import tomllib
from typing import Any

import docker

from benchmarks.config import BENCH_LABEL, REPO_ROOT

AGENT_TAG = "local-agent-bench-agent:latest"


def _requirements() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    # The classic builder also builds the server stage that precedes `agent`, so its wheels are needed too.
    return [*project["dependencies"], *project.get("optional-dependencies", {}).get("server", [])]


def measure_agent_image(client: docker.DockerClient) -> dict[str, Any]:
    """Build (or reuse, by content hash) the agent image; its size in MB, or the reason it is n/a."""
    dockerfile = REPO_ROOT / "Dockerfile"
    if not dockerfile.exists():
        return {"image.size_mb": None, "image.note": "no Dockerfile yet"}
    try:
        from tests.support.images import build_image
    except ImportError as exc:
        return {"image.size_mb": None, "image.note": f"tests.support.images unavailable: {exc}"}
    try:
        tag = build_image(
            context=REPO_ROOT, dockerfile=dockerfile, tag=AGENT_TAG, target="agent",
            wheel_requirements=_requirements(), include=["agent", "server", "pyproject.toml", "README.md"],
            labels={BENCH_LABEL: "agent"}, client=client,
        )
    except Exception as exc:  # noqa: BLE001 - a failed build is reported, not fatal to the benchmark
        return {"image.size_mb": None, "image.note": f"build failed: {str(exc)[:300]}"}
    size = client.images.get(tag).attrs["Size"]
    return {"image.size_mb": size / 1e6, "image.tag": tag}
