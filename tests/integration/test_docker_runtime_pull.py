"""Real pulls from a local docker-registry: progress summaries, digests, missing tags, single-flight."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator

import docker
import pytest

from agent.runtime.docker import DockerRuntime, ImagePullError, split_image
from tests.support.docker_fixtures import RUN_ID, LocalRegistry, test_labels


@pytest.fixture(scope="module")
def remote_image(docker_client: docker.DockerClient, registry: LocalRegistry,
                 busybox_image: str) -> Iterator[str]:
    """An image that exists only in the registry: busybox + one random 2 MB layer nobody else has."""
    blob = os.urandom(2_000_000)
    dockerfile = f"FROM {busybox_image}\nCOPY blob /blob\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("blob", blob)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    local = f"lat-remote-{RUN_ID}:1"
    docker_client.images.build(fileobj=context, custom_context=True, tag=local, labels=test_labels(), rm=True)
    ref = registry.push(local, f"lat/remote-{RUN_ID}")
    docker_client.images.remove(local)
    docker_client.images.remove(ref)  # last tag: the random layer leaves the daemon with it
    yield ref
    remove_image(docker_client, ref)


def remove_image(client: docker.DockerClient, ref: str) -> None:
    try:
        client.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass


def test_pull_summarises_progress_and_resolves_digests(runtime: DockerRuntime, remote_image: str,
                                                       docker_client: docker.DockerClient) -> None:
    assert not runtime.image_present(remote_image)
    lines: list[str] = []
    image_id = runtime.pull(remote_image, on_progress=lines.append, progress_interval=60)
    assert image_id == runtime.image_id(remote_image)
    assert len(lines) == 1  # a fast pull: only the closing line, not one line per layer event
    assert lines[0].startswith(f"pulled {remote_image} in ")
    assert "2 layers (1 already present), 2.0 MB downloaded (sha256:" in lines[0]
    digest = runtime.image_digest(remote_image)
    repository, _ = split_image(remote_image)
    assert digest is not None and digest.startswith(f"{repository}@sha256:") and digest[-71:] in lines[0]

    by_digest: list[str] = []
    assert runtime.pull(digest, on_progress=by_digest.append) == image_id
    again: list[str] = []
    credentials = {"username": "u", "password": "p"}  # sent, and ignored by a registry without auth
    assert runtime.pull(remote_image, on_progress=again.append, auth_config=credentials)
    assert "image is up to date" in again[0]

    remove_image(docker_client, remote_image)
    remove_image(docker_client, digest)
    chatty: list[str] = []
    runtime.pull(remote_image, on_progress=chatty.append, progress_interval=0)
    assert any(line.startswith(f"pulling {remote_image}: ") and " MB" in line for line in chatty)
    assert chatty[-1].startswith("pulled ")


def test_missing_tag_is_a_permanent_pull_error(runtime: DockerRuntime, registry: LocalRegistry) -> None:
    ref = registry.reference(f"lat/remote-{RUN_ID}", "no-such-tag")
    with pytest.raises(ImagePullError) as caught:
        runtime.pull(ref)
    assert "manifest unknown" in caught.value.registry_message and caught.value.status_code == 404
    assert not caught.value.transient and caught.value.image == ref


def test_concurrent_pulls_of_one_image_share_one_pull(runtime: DockerRuntime, remote_image: str,
                                                      docker_client: docker.DockerClient) -> None:
    remove_image(docker_client, remote_image)
    joined, heard = threading.Event(), {i: [] for i in range(3)}
    results: dict[int, str] = {}

    def hold_until_joined(line: str) -> None:
        heard[0].append(line)
        joined.wait(10)  # the leader's pull pauses here until both followers wait on it

    def caller(i: int) -> None:
        listener = hold_until_joined if i == 0 else heard[i].append
        results[i] = runtime.pull(remote_image, on_progress=listener, progress_interval=0)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    threads[0].start()
    key = "{}@{}".format(*split_image(remote_image))
    wait_until(lambda: runtime._pulls.in_flight(key))
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: len(runtime._pulls._flights[key].listeners) == 3)
    joined.set()
    for thread in threads:
        thread.join(30)
    assert len(set(results.values())) == 1 and len(results) == 3
    closing = [lines[-1] for lines in heard.values()]
    assert closing[0].startswith("pulled ") and len(set(closing)) == 1  # one pull, heard three times


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)
