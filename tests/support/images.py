"""Build the images tests need: offline from host-built wheels on our machines, from PyPI everywhere else.

Our CI machines have no registry and no PyPI inside containers, but they carry a local base image
(`local/python:3.11-slim`). When it exists, requirements are turned into wheels on the host (`pip wheel`, same
Python minor version as the image) and the build runs with `--build-arg PIP_NO_INDEX=1`; otherwise the
Dockerfile's own defaults (python:3.12-slim, PyPI) apply, exactly as a user would build it.

A build is skipped when an image with the tag exists and carries the content-hash label of the same inputs, so
the second test session costs nothing. The build context is a tar assembled here (only the paths that matter),
which keeps `.venv/`, `.cache/` and `.git/` out of the daemon upload regardless of any `.dockerignore`.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors
from docker.utils import build as docker_build

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
#: Tests never build, overwrite or share a user's tags (the demo's `local-agent-example-flow:1.4.1`, a
#: product `local-agent:latest`): what they build is named `local-agent-test-*`. No "/" in the name: Prefect's
#: DockerAgent pulls any image whose name has one. Big images are reused across sessions (content-hash label);
#: small ones get a tag per session and are removed at its end (`session_image`).
TEST_IMAGE_PREFIX = "local-agent-test-"
FLOW_IMAGE = f"{TEST_IMAGE_PREFIX}example-flow:1.4.1"
#: What the flow image and the test virtualenv install: marshmallow 4 breaks Prefect 1.x serialization.
PREFECT_REQUIREMENTS = ("prefect==1.4.1", "marshmallow<4", "pendulum<3")  # pendulum 3 breaks its CronClock
LOCAL_BASE_IMAGE = "local/python:3.11-slim"
HASH_LABEL = "io.local-agent.content-hash"
ALWAYS_EXCLUDED = (
    ".git", ".venv", ".cache", "**/__pycache__", "**/*.pyc", ".pytest_cache", ".ruff_cache", "**/*.egg-info",
)


class ImageBuildError(RuntimeError):
    """The daemon reported an error in the build stream; the message carries the tail of the build log."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock, so concurrent sessions (or xdist workers) do one-time work only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def offline_mode(client: docker.DockerClient) -> bool:
    """Our offline machines are recognised by their local base image."""
    try:
        client.images.get(LOCAL_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_wheels(requirements: Sequence[str], wheels_dir: Path) -> None:
    """`pip wheel` the requirements into wheels_dir once; a stamp named after the set marks it done.

    The host Python must match the image's minor version (3.11 here) for binary wheels to install.
    """
    if not requirements:
        return
    key = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:16]
    stamp = wheels_dir / f".requirements-{key}"
    with file_lock(REPO_ROOT / ".cache" / "wheels.lock"):
        if stamp.exists():
            return
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
               "-w", str(wheels_dir), "--find-links", str(wheels_dir), *requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError(f"pip wheel {requirements} failed:\n{proc.stdout}\n{proc.stderr}")
        stamp.write_text("\n".join(requirements) + "\n")


def context_excludes(context: Path, include: Sequence[str] | None) -> list[str]:
    """dockerignore-style patterns: everything but `include` (if given), then .dockerignore, then junk."""
    patterns = ["*", *(f"!{p.strip('/')}" for p in include)] if include is not None else []
    ignore_file = context / ".dockerignore"
    if ignore_file.exists():
        lines = (line.strip() for line in ignore_file.read_text().splitlines())
        patterns += [line for line in lines if line and not line.startswith("#")]
    return [*patterns, *ALWAYS_EXCLUDED]


def content_hash(context: Path, files: Iterable[str], extra: Mapping[str, object]) -> str:
    """Hash of the context files (wheels excluded: the requirement list stands for them) and build inputs."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for rel in sorted(files):
        path = context / rel
        if rel.startswith("wheels/") or rel in ("wheels", ".dockerignore") or not path.is_file():
            continue
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _existing(client: docker.DockerClient, tag: str) -> tuple[str | None, str | None]:
    """(image id, content hash label) of the image currently tagged `tag`."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None, None
    return image.id, (image.labels or {}).get(HASH_LABEL)


def _drop_superseded(client: docker.DockerClient, old_id: str | None, tag: str) -> None:
    """Remove the image a rebuild untagged, so repeated edits don't pile up dangling images.

    A container still using it (another session's) makes the daemon refuse; that image then stays.
    """
    if old_id is None or client.images.get(tag).id == old_id:
        return
    try:
        client.images.remove(old_id)
    except docker.errors.APIError:
        pass


def _stream_build(client: docker.DockerClient, fileobj: io.BytesIO, **kwargs: object) -> None:
    """Run a build and raise on the first `error` in the stream (the API call itself returns 200 anyway)."""
    log: list[str] = []
    for chunk in client.api.build(fileobj=fileobj, custom_context=True, decode=True, rm=True, forcerm=True,
                                  **kwargs):
        if "stream" in chunk:
            log.append(chunk["stream"])
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("error") or chunk["errorDetail"].get("message")
            raise ImageBuildError(f"building {kwargs.get('tag')} failed: {detail}\n{''.join(log[-40:])}")


def build_image(
    *,
    context: Path,
    dockerfile: Path | None,
    tag: str,
    target: str | None = None,
    wheel_requirements: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    include: Sequence[str] | None = None,
    client: docker.DockerClient | None = None,
    buildargs: Mapping[str, str] | None = None,
) -> str:
    """Build `tag` from `context` unless an image with the same content hash exists; returns the tag.

    `include` limits the context to these paths (the Dockerfile and `wheels/` are always added); `buildargs`
    go on top of the offline ones.
    """
    client = client or docker.from_env()
    context = context.resolve()
    dockerfile_rel = str((dockerfile or context / "Dockerfile").resolve().relative_to(context))
    args: dict[str, str] = {}
    if offline_mode(client):
        ensure_wheels(list(wheel_requirements), context / "wheels")
        args = {"PYTHON_IMAGE": LOCAL_BASE_IMAGE, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}
    args.update(buildargs or {})
    if include is not None:
        include = [*include, dockerfile_rel, "wheels"]
    excludes = context_excludes(context, include)
    files = docker_build.exclude_paths(str(context), list(excludes), dockerfile=dockerfile_rel)
    digest = content_hash(context, files, {"dockerfile": dockerfile_rel, "target": target, "args": args,
                                           "requirements": list(wheel_requirements), "labels": labels})
    with file_lock(REPO_ROOT / ".cache" / f"build-{hashlib.sha256(tag.encode()).hexdigest()[:12]}.lock"):
        old_id, old_hash = _existing(client, tag)
        if old_hash == digest:
            return tag
        fileobj = docker_build.tar(str(context), exclude=list(excludes), dockerfile=(dockerfile_rel, None))
        _stream_build(client, fileobj, tag=tag, dockerfile=dockerfile_rel, target=target, buildargs=args,
                      labels={**(labels or {}), HASH_LABEL: digest})
        _drop_superseded(client, old_id, tag)
    return tag


def remove_image(client: docker.DockerClient, tag: str) -> None:
    """Untag (and delete, when nothing else uses it) an image a test session built; best effort."""
    try:
        client.images.remove(tag, force=True, noprune=False)
    except docker.errors.APIError:  # gone already, or still used by a container the daemon keeps
        pass


def flow_image_env(image: str = FLOW_IMAGE) -> dict[str, str]:
    """What makes examples/register.py record `image` in the flows' Docker storage (its defaults name the
    demo's image)."""
    name, _, tag = image.rpartition(":")
    return {"EXAMPLE_FLOW_IMAGE_NAME": name, "EXAMPLE_FLOW_IMAGE_TAG": tag}


def build_flow_image(client: docker.DockerClient | None = None) -> str:
    """The example flow image (Prefect 1.4.1 + examples/flows), rebuilt only when its inputs changed."""
    return build_image(
        context=REPO_ROOT,
        dockerfile=EXAMPLES_DIR / "Dockerfile",
        tag=FLOW_IMAGE,
        wheel_requirements=list(PREFECT_REQUIREMENTS),
        include=["examples/flows", "examples/register.py"],
        labels={"io.local-agent.image": "example-flow"},
        client=client,
    )


# ------------------------------------------------------------------------------------------------ PostgreSQL

POSTGRES_IMAGE_DIR = REPO_ROOT / "tests" / "support" / "postgres_image"
#: What docker-compose.yml runs by default (LOCAL_AGENT_POSTGRES_IMAGE); pulled where a registry is reachable.
OFFICIAL_POSTGRES_IMAGE = "postgres:16"
#: Debian's packages behind the official image's environment contract, built where nothing can be pulled.
POSTGRES_STAND_IN_IMAGE = f"{TEST_IMAGE_PREFIX}postgres:stand-in"
POSTGRES_PACKAGE = "postgresql-15"


def postgres_image(client: docker.DockerClient | None = None) -> str:
    """The image compose's `postgres` service runs in tests: the official one online, else the stand-in."""
    client = client or docker.from_env()
    if not offline_mode(client):
        return OFFICIAL_POSTGRES_IMAGE
    return build_postgres_stand_in(client)


def build_postgres_stand_in(client: docker.DockerClient) -> str:
    """The stand-in, built without network inside the build: the packages come from the host's apt."""
    context = REPO_ROOT / ".cache" / "postgres-image"
    with file_lock(REPO_ROOT / ".cache" / "postgres-debs.lock"):
        context.mkdir(parents=True, exist_ok=True)
        for name in ("Dockerfile", "docker-entrypoint.sh"):
            shutil.copy2(POSTGRES_IMAGE_DIR / name, context / name)
        ensure_postgres_debs(client, context / "debs")
    return build_image(
        context=context,
        dockerfile=None,
        tag=POSTGRES_STAND_IN_IMAGE,
        labels={"io.local-agent.image": "postgres-stand-in"},
        buildargs={"BASE_IMAGE": LOCAL_BASE_IMAGE},
        client=client,
    )


def ensure_postgres_debs(client: docker.DockerClient, debs: Path) -> None:
    """Download, once per base image, the packages PostgreSQL needs that the base image lacks.

    apt resolves against the base image's own dpkg status file, so dependencies it already has are skipped
    and alternatives are chosen as an install inside the image would choose them.
    """
    base_id = str(client.images.get(LOCAL_BASE_IMAGE).id).split(":")[-1][:12]
    stamp = debs / f".complete-{base_id}"
    if stamp.exists():
        return
    shutil.rmtree(debs, ignore_errors=True)
    (debs / "partial").mkdir(parents=True)
    status = debs.parent / "base-dpkg-status"
    status.write_bytes(client.containers.run(
        LOCAL_BASE_IMAGE, ["cat", "/var/lib/dpkg/status"], remove=True,
        labels={"io.local-agent.image": "postgres-stand-in-probe"}))
    download = ["apt-get", "-q", "-o", "Debug::NoLocking=1", "-o", f"Dir::State::status={status}",
                "-o", f"Dir::Cache::archives={debs}", "install", "--yes", "--download-only",
                "--no-install-recommends", POSTGRES_PACKAGE]
    proc = subprocess.run(download, capture_output=True, text=True)
    if proc.returncode != 0 and os.geteuid() == 0:  # the host's package lists may be older than the image
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        proc = subprocess.run(download, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageBuildError(f"downloading {POSTGRES_PACKAGE} for the stand-in image failed (the host must "
                              "run the base image's Debian release; try `apt-get update`):\n"
                              f"{proc.stdout}\n{proc.stderr}")
    shutil.rmtree(debs / "partial", ignore_errors=True)
    (debs / "lock").unlink(missing_ok=True)
    stamp.touch()
