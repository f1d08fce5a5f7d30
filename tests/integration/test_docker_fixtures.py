"""Smoke tests of the Docker test fixtures: the registry round trip, the flow image, and `build_image`."""

from __future__ import annotations

import time
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.support.docker_fixtures import RUN_ID, LocalRegistry, test_labels
from tests.support.images import HASH_LABEL, ImageBuildError, build_flow_image, build_image


def _run(client: docker.DockerClient, image: str, command: list[str]) -> str:
    container = client.containers.run(image, command, labels=test_labels(), detach=True)
    try:
        result = container.wait(timeout=60)
        output = container.logs().decode()
        assert result["StatusCode"] == 0, output
        return output
    finally:
        container.remove(force=True)


def test_registry_push_then_pull_round_trip(
    docker_client: docker.DockerClient, busybox_image: str, registry: LocalRegistry
) -> None:
    ref = registry.push(busybox_image, f"smoke-{RUN_ID}")
    assert ref == f"{registry.url}/smoke-{RUN_ID}:latest"
    original = docker_client.images.get(busybox_image).id
    docker_client.images.remove(ref)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)

    pulled = docker_client.images.pull(f"{registry.url}/smoke-{RUN_ID}", tag="latest")

    assert pulled.id == original
    assert ref in pulled.tags


def test_registry_pull_of_unknown_manifest_fails(
    docker_client: docker.DockerClient, registry: LocalRegistry
) -> None:
    with pytest.raises(docker.errors.NotFound, match="manifest unknown"):
        docker_client.images.pull(f"{registry.url}/does-not-exist-{RUN_ID}", tag="nope")


def test_flow_image_has_prefect_141_and_the_example_flows(
    docker_client: docker.DockerClient, flow_image: str
) -> None:
    script = (
        "import importlib.metadata as m, os, prefect; "
        "print(prefect.__version__, m.version('marshmallow').split('.')[0], "
        "sorted(os.listdir('/opt/prefect/flows')), os.path.exists('/opt/prefect/register.py'), "
        "os.path.exists('/wheels'))"
    )
    out = _run(docker_client, flow_image, ["python", "-c", script])
    assert out.split()[:2] == ["1.4.1", "3"], out
    assert "'hello.py', 'mapped.py', 'retry.py', 'sleepy.py'" in out, out
    assert out.strip().endswith("True False"), out  # register.py present, no wheels left in the image


def test_flow_script_loads_inside_the_image(docker_client: docker.DockerClient, flow_image: str) -> None:
    """What `prefect execute flow-run` does with our Docker storage: extract the flow from its script path."""
    script = (
        "from prefect.utilities.storage import extract_flow_from_file as x; "
        "f = x(file_path='/opt/prefect/flows/hello.py'); print(f.name, f.storage.path, len(f.tasks))"
    )
    assert _run(docker_client, flow_image, ["python", "-c", script]).split() == [
        "hello",
        "/opt/prefect/flows/hello.py",
        "4",
    ]


def test_build_image_skips_an_unchanged_build(docker_client: docker.DockerClient, flow_image: str) -> None:
    before = docker_client.images.get(flow_image)
    started = time.monotonic()
    assert build_flow_image(docker_client) == flow_image  # the call the fixture makes
    assert time.monotonic() - started < 10
    assert docker_client.images.get(flow_image).id == before.id
    assert before.labels[HASH_LABEL]


def _write_context(root: Path, run_line: str) -> Path:
    (root / "wheels").mkdir(parents=True)
    (root / "wheels" / ".keep").touch()
    (root / "Dockerfile").write_text(f"FROM local/busybox:latest\nCOPY wheels/ /wheels/\n{run_line}\n")
    return root


def test_build_image_builds_labels_and_surfaces_stream_errors(
    docker_client: docker.DockerClient, busybox_image: str, tmp_path: Path
) -> None:
    if busybox_image != "local/busybox:latest":
        pytest.skip("the throwaway Dockerfile builds FROM local/busybox")
    tag = f"local-agent-test-build:{RUN_ID}"
    try:
        ok = _write_context(tmp_path / "ok", "RUN echo built > /built")
        build_image(context=ok, dockerfile=None, tag=tag, labels=test_labels(), client=docker_client)
        image = docker_client.images.get(tag)
        assert image.labels[HASH_LABEL] and image.labels["io.local-agent.test-run"] == RUN_ID

        bad = _write_context(tmp_path / "bad", "RUN echo about to fail && exit 3")
        with pytest.raises(ImageBuildError, match="returned a non-zero code: 3"):
            build_image(context=bad, dockerfile=None, tag=tag, labels=test_labels(), client=docker_client)
    finally:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass
