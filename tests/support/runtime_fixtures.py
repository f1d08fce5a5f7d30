"""Fixtures for the Docker boundary: a `DockerRuntime`, and a seconds-fast stand-in for a Prefect flow image.

The stand-in is busybox plus a `/bin/prefect` shell script, so launch, logs, exit codes, signals and OOM can
be tested in well under a second per container, without Python or Prefect in the image. Its knobs are
environment variables of the container:

* `STAND_IN_SLEEP` seconds to stay up (default 0), `STAND_IN_EXIT` exit code (default 0);
* `STAND_IN_ALLOC_MB` makes PID 1 hold that much memory while sleeping (OOM tests with `mem_limit`);
* `STAND_IN_IGNORE_TERM=1` ignores SIGTERM, so `stop` must escalate to SIGKILL.

It prints `prefect <args>` and every `PREFECT__*` / `STAND_IN_*` variable (values of names containing KEY,
TOKEN or SECRET as `***`, so a test that tails its logs cannot leak a credential).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterator

import docker
import docker.errors
import pytest

from agent.runtime.docker import DockerRuntime, DockerUnavailable
from tests.support.api_surface import agent_base_url
from tests.support.docker_fixtures import RUN_ID, TEST_RUN_LABEL, docker_unavailable, test_labels
from tests.support.images import REPO_ROOT, TEST_IMAGE_PREFIX, file_lock, remove_image

__all__ = ["RUN_ID", "STAND_IN_IMAGE", "test_labels"]

STAND_IN_IMAGE = f"{TEST_IMAGE_PREFIX}stand-in:{RUN_ID}"  # this session's own; removed at its end
STAND_IN_HASH_LABEL = "io.local-agent.stand-in-hash"

PREFECT_SCRIPT = r"""#!/bin/sh
# Stand-in for `prefect execute flow-run` (tests/support/runtime_fixtures.py).
echo "prefect $*"
env | grep -E '^(PREFECT__|STAND_IN_)' | sort \
  | sed -E 's/^([A-Z0-9_]*(KEY|TOKEN|SECRET)[A-Z0-9_]*)=.+$/\1=***/'
if [ -n "${STAND_IN_IGNORE_TERM:-}" ]; then
  trap '' TERM
else
  trap 'echo "stand-in: SIGTERM"; exit 143' TERM
fi
if [ -n "${STAND_IN_ALLOC_MB:-}" ]; then
  # held by this shell (PID 1), so an OOM kill ends the container at once, as it would a real flow
  ballast=$(head -c "${STAND_IN_ALLOC_MB}m" /dev/zero | tr '\0' x)
  echo "stand-in: holding ${#ballast} bytes"
fi
sleep "${STAND_IN_SLEEP:-0}" &
wait $!
echo "stand-in: exiting ${STAND_IN_EXIT:-0}"
exit "${STAND_IN_EXIT:-0}"
"""

DOCKERFILE = """FROM {base}
COPY prefect /bin/prefect
CMD ["prefect", "execute", "flow-run"]
"""


def build_small_image(client: docker.DockerClient, tag: str, hash_label: str, base: str,
                      files: dict[str, bytes]) -> str:
    """Build `tag` from `files` (its Dockerfile among them, every file executable) unless an image with the
    same content hash (the files and `base`'s id) already exists; one build at a time per tag."""
    digest = hashlib.sha256(b"\0".join([*files.values(), str(client.images.get(base).id).encode()]))
    content_hash = digest.hexdigest()[:16]
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    with file_lock(REPO_ROOT / ".cache" / f"image-{hashlib.sha256(tag.encode()).hexdigest()[:12]}.lock"):
        try:
            if client.images.get(tag).labels.get(hash_label) == content_hash:
                return tag
        except docker.errors.ImageNotFound:
            pass
        for event in client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                                      labels={hash_label: content_hash}, decode=True):
            if "error" in event:
                raise RuntimeError(f"building {tag} failed: {event['error']}")
    return tag


def build_stand_in(client: docker.DockerClient, base: str) -> str:
    """Build `STAND_IN_IMAGE` from `base` unless an image with the same content hash already exists."""
    files = {"Dockerfile": DOCKERFILE.format(base=base).encode(), "prefect": PREFECT_SCRIPT.encode()}
    return build_small_image(client, STAND_IN_IMAGE, STAND_IN_HASH_LABEL, base, files)


@pytest.fixture(scope="session")
def stand_in_image(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    """`STAND_IN_IMAGE`: busybox plus a `/bin/prefect` that stands in for the real CLI (built in well under a
    second, layers cached: a tag per session costs nothing and no session removes another's)."""
    yield build_stand_in(docker_client, busybox_image)
    remove_image(docker_client, STAND_IN_IMAGE)


@pytest.fixture(scope="session")
def runtime() -> Iterator[DockerRuntime]:
    """The real `DockerRuntime` through the API-surface recorder (docker's env handling when it is off);
    session end removes this run's test containers."""
    rt = DockerRuntime(agent_base_url())
    try:
        rt.ping()
    except DockerUnavailable as exc:
        docker_unavailable(str(exc))
    yield rt
    for info in rt.find_by_label(TEST_RUN_LABEL, RUN_ID):
        rt.remove(info.id, force=True)
    rt.close()


@pytest.fixture
def container_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Unique, recognisable container names: `lat-<RUN_ID>-<test>-<suffix>`."""
    test = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40].strip("-")

    def make(suffix: str = "c") -> str:
        return f"lat-{RUN_ID}-{test}-{suffix}"

    return make
