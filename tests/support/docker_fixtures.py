"""Docker fixtures: the daemon client, test images and a real local registry (registered in conftest.py).

Everything a test session creates carries `io.local-agent.test-run=<RUN_ID>` and is removed at session end;
other helpers' sessions run on the same daemon at the same time, so cleanup is by this label only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from tests.support.images import REPO_ROOT, build_flow_image, file_lock
from tests.support.server_fixtures import free_port

RUN_ID = uuid.uuid4().hex[:12]
TEST_RUN_LABEL = "io.local-agent.test-run"
LOCAL_BUSYBOX = "local/busybox:latest"


def test_labels(**extra: str) -> dict[str, str]:
    """Labels for anything a test creates in Docker; the session removes containers carrying them."""
    return {TEST_RUN_LABEL: RUN_ID, **extra}


test_labels.__test__ = False  # type: ignore[attr-defined]  # imported into test modules; not a test


def docker_required() -> bool:
    return os.environ.get("LOCAL_AGENT_REQUIRE_DOCKER") == "1"


def docker_unavailable(reason: str) -> None:
    """Skip on a developer machine without Docker; fail in CI, where a skipped suite would look green."""
    if docker_required():
        pytest.fail(f"Docker is required (LOCAL_AGENT_REQUIRE_DOCKER=1): {reason}")
    pytest.skip(reason)


def remove_containers(client: docker.DockerClient, label: str) -> int:
    """Force-remove every container with `label` ("key=value"); gone-already is fine (an agent or auto_remove
    got there first). The low-level list: the high-level one inspects each container and trips over those."""
    removed = 0
    for container in client.api.containers(all=True, filters={"label": label}):
        for attempt in range(10):
            try:
                client.api.remove_container(container["Id"], force=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                # Podman refuses to force-remove a container that stops while it kills it; a moment later
                # the container is stopped and goes.
                if "state improper" in str(exc) and attempt < 9:
                    time.sleep(0.2)
                    continue
                if "already in progress" not in str(exc):
                    raise
            break
    return removed


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        docker_unavailable(f"Docker daemon unreachable: {exc}")
    yield client
    remove_containers(client, f"{TEST_RUN_LABEL}={RUN_ID}")
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    """`local/busybox:latest` on our offline machines, else `busybox:latest` from Docker Hub."""
    try:
        docker_client.images.get(LOCAL_BUSYBOX)
        return LOCAL_BUSYBOX
    except docker.errors.ImageNotFound:
        pass
    try:
        docker_client.images.pull("busybox", tag="latest")
    except docker.errors.APIError as exc:
        docker_unavailable(f"no {LOCAL_BUSYBOX} and pulling busybox failed: {exc}")
    return "busybox:latest"


@pytest.fixture(scope="session")
def flow_image(docker_client: docker.DockerClient) -> str:
    """The example flow image (Prefect 1.4.1 + examples/flows), built once and reused while unchanged."""
    return build_flow_image(docker_client)


# ----------------------------------------------------------------------------------------------- registry


@dataclass
class LocalRegistry:
    """A real registry (Debian's `docker-registry`) on 127.0.0.1, where the daemon allows plain HTTP."""

    client: docker.DockerClient
    port: int
    process: subprocess.Popen[bytes]
    pushed: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reference(self, repo_name: str, tag: str = "latest") -> str:
        return f"{self.url}/{repo_name}:{tag}"

    def push(self, local_tag: str, repo_name: str, auth_config: dict[str, str] | None = None,
             tag: str = "latest") -> str:
        """Tag `local_tag` as `<url>/<repo_name>:<tag>` and push it; returns that reference. The pushed tag
        is `tag`, not the local one: a session's images carry session tags (`images.TEST_IMAGE_PREFIX`)."""
        ref = self.reference(repo_name, tag)
        self.client.images.get(local_tag).tag(f"{self.url}/{repo_name}", tag)
        self.pushed.add(ref)
        chunks = self.client.images.push(
            f"{self.url}/{repo_name}", tag=tag, stream=True, decode=True, auth_config=auth_config
        )
        for chunk in chunks:
            if "error" in chunk:
                raise RuntimeError(f"push of {ref} failed: {chunk['error']}")
        return ref

    def remove_local_tags(self) -> None:
        """Untag every `<url>/...` reference in the daemon (pushed or pulled); the port makes them ours."""
        for image in self.client.images.list():
            for ref in image.tags:
                if ref.startswith(self.url + "/"):
                    try:
                        self.client.images.remove(ref, noprune=False)
                    except docker.errors.APIError:
                        pass

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.remove_local_tags()


def ensure_registry_binary() -> str | None:
    """The registry binary, installing Debian's `docker-registry` (apt-get update only if needed)."""
    found = shutil.which("docker-registry")
    if found or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "docker-registry"]
    with file_lock(REPO_ROOT / ".cache" / "apt.lock"):
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
    return shutil.which("docker-registry")


def _registry_config(root: Path, port: int, htpasswd: Path | None) -> Path:
    config = root / "config.yml"
    auth = f"auth:\n  htpasswd:\n    realm: local-agent-tests\n    path: {htpasswd}\n" if htpasswd else ""
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    return config


def start_registry(binary: str, root: Path, client: docker.DockerClient, attempts: int = 3,
                   htpasswd: Path | None = None) -> LocalRegistry:
    """Start on a free port and wait for `/v2/`; retry on a new port if another process won the port race.

    With `htpasswd` (bcrypt entries) the registry requires a login: `/v2/` answers 401 once it is up."""
    ready = {200, 401} if htpasswd else {200}
    for _ in range(attempts):
        port = free_port()
        log = open(root / f"registry-{port}.log", "wb")  # noqa: SIM115 - owned by the child process
        config = _registry_config(root, port, htpasswd)
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in ready:
                    return LocalRegistry(client=client, port=port, process=proc)
            except requests.RequestException:
                time.sleep(0.1)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"docker-registry did not start; see {root}/registry-*.log")


@pytest.fixture(scope="session")
def registry(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRegistry]:
    binary = ensure_registry_binary()
    if binary is None:
        docker_unavailable("Debian package docker-registry is not installed and apt-get could not install it")
    reg = start_registry(binary, tmp_path_factory.mktemp("registry"), docker_client)
    yield reg
    reg.stop()
