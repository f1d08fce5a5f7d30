"""Podman's Docker-compatible API as test fixtures: one `podman system service` per kind (rootful, rootless)
per session, on storage of its own under a temp dir, removed at session end (registered in tests/conftest.py).

`podman_rootful` / `podman_rootless` yield a `PodmanService`: `base_url` (an agent's BASE_URL), `kind`, a
docker-py `client` for the test's own checks, and `load(image)`, which copies a Docker image into that
Podman's storage once per session. Tests using them are marked `podman`. Without podman (or, rootless,
without `runuser`/`useradd`) they skip on a developer machine and fail under LOCAL_AGENT_REQUIRE_DOCKER=1.

What the services need on these machines (docs: ../shared/env/README.md): a `containers.conf` whose
`default_ulimits` stay within this process's hard limits (rootful Podman asks for 1048576, which the VMs
refuse), the local registry marked insecure in a `registries.conf` (rootful), and for rootless a user with
subordinate ids (`lapodman`, created when missing) and native overlay storage (fuse-overlayfs needs a
`/dev/fuse` the user may open; vfs copies the whole image per container).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.support.api_surface import recorded_base_url
from tests.support.docker_fixtures import LocalRegistry, docker_unavailable, remove_containers
from tests.support.images import REPO_ROOT

ROOTLESS_USER = "lapodman"
SUBIDS = "100000:65536"
PODMAN_FIXTURES = {"podman_rootful", "podman_rootless"}
EXPORTS = REPO_ROOT / ".cache" / "podman-exports"
STALE_EXPORT_S = 3600.0


@dataclass
class PodmanService:
    """One running `podman system service` on storage of its own."""

    kind: str  # "rootful" | "rootless"
    root: Path
    process: subprocess.Popen[bytes]
    client: docker.DockerClient
    loaded: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.root / "podman.sock"

    @property
    def base_url(self) -> str:
        """An agent's BASE_URL: through the API-surface recorder (engine `podman`) while it records."""
        return recorded_base_url("podman", str(self.socket)) or f"unix://{self.socket}"

    def load(self, docker_client: docker.DockerClient, image: str) -> str:
        """Copy `image` from Docker into this Podman (`docker save | podman load`), once per session; returns
        the name as given: Podman stores it as `localhost/<name>` and resolves the short name to it."""
        image_id = str(docker_client.images.get(image).id)
        if self.loaded.get(image) == image_id:
            return image
        archive = export(docker_client, image, image_id)
        with archive.open("rb") as data:
            self.client.api.load_image(data)
        self.loaded[image] = image_id
        return image

    def remove_containers(self, label: str) -> int:
        return remove_containers(self.client, label)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            for summary in self.client.api.containers(all=True):
                with contextlib.suppress(docker.errors.APIError):
                    self.client.api.remove_container(summary["Id"], force=True)
        self.client.close()
        self._signal(signal.SIGTERM)  # the group: runuser does not pass the signal on to the rootless service
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(5)
        self._end_pause_process()
        unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)  # its own session: the group is the service and nothing else

    def _end_pause_process(self) -> None:
        """Rootless Podman keeps a pause process (its user namespace) after the service: ours ends with it."""
        pid_file = self.root / "run" / "libpod" / "tmp" / "pause.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def export(docker_client: docker.DockerClient, image: str, image_id: str) -> Path:
    """`docker save` of `image` (with its name), kept under .cache while the image id stays the same."""
    EXPORTS.mkdir(parents=True, exist_ok=True)
    safe_name = image.replace("/", "_").replace(":", "_")
    path = EXPORTS / f"{image_id.removeprefix('sha256:')[:16]}-{safe_name}.tar"
    if not path.exists():
        repository = image.rpartition(":")[0].replace("/", "_") or safe_name
        for stale in EXPORTS.glob(f"*-{repository}_*.tar"):  # rebuilt, or another session's tag, since
            if time.time() - stale.stat().st_mtime > STALE_EXPORT_S:
                stale.unlink(missing_ok=True)
        partial = path.with_suffix(".part")
        with partial.open("wb") as out:
            for chunk in docker_client.images.get(image).save(named=image):
                out.write(chunk)
        partial.rename(path)
    return path


def unmount_under(root: Path) -> None:
    """Rootful Podman leaves its storage's mounts behind a stopped service: unmount them lazily, deepest
    first."""
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)


def podman_missing() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman catatonit uidmap slirp4netns fuse-overlayfs)"
    if shutil.which("catatonit") is None and not Path("/usr/libexec/podman/catatonit").exists():
        return "catatonit is not installed: every --init container fails on Podman (apt-get install " \
               "catatonit)"
    return None


def containers_conf(path: Path, extra: str = "") -> Path:
    """`default_ulimits` within this process's hard limits: Podman's own (1048576) is refused here, and
    so is an nproc limit as high as the hard nproc limit (96367); the hard nofile limit (20000) works."""
    hard = [limit for limit in (resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                                resource.getrlimit(resource.RLIMIT_NPROC)[1]) if limit > 0]
    value = min([*hard, 1048576])
    path.write_text(f'[containers]\ndefault_ulimits = ["nofile={value}:{value}", "nproc={value}:{value}"]\n\n'
                    f'[engine]\nevents_logger = "file"\n{extra}')
    return path


def registries_conf(path: Path, registry: LocalRegistry | None) -> Path:
    text = "unqualified-search-registries = []\n"
    if registry is not None:
        text += f'\n[[registry]]\nlocation = "{registry.url}"\ninsecure = true\n'
    path.write_text(text)
    return path


def wait_for_socket(service: subprocess.Popen[bytes], socket: Path, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            break
        if socket.exists():
            with contextlib.suppress(docker.errors.DockerException):
                probe = docker.DockerClient(base_url=f"unix://{socket}", timeout=5)
                try:
                    probe.ping()
                    return
                finally:
                    probe.close()
        time.sleep(0.1)
    service.kill()
    output = log.read_text(errors="replace")
    raise RuntimeError(f"podman system service did not answer on {socket}:\n{output}")


def start_rootful(root: Path, registry: LocalRegistry | None) -> PodmanService:
    env = {**os.environ,
           "CONTAINERS_CONF": str(containers_conf(root / "containers.conf", f'tmp_dir = "{root}/tmp"\n')),
           "CONTAINERS_REGISTRIES_CONF": str(registries_conf(root / "registries.conf", registry))}
    log = root / "service.log"
    command = ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"), "system", "service",
               "--time=0", f"unix://{root / 'podman.sock'}"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                   start_new_session=True)  # cwd: conmon 2.1 drops its `oom` marker there
    wait_for_socket(process, root / "podman.sock", log)
    client = docker.DockerClient(base_url=f"unix://{root / 'podman.sock'}", timeout=120)
    return PodmanService("rootful", root, process, client)


def ensure_rootless_user(name: str = ROOTLESS_USER) -> str | None:
    """The rootless user with subordinate uid/gid ranges, created when missing; None, or why it cannot be."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0 or shutil.which("useradd") is None:
            return f"user {name} is missing and cannot be created (needs root and useradd)"
        subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                       capture_output=True)
    for table in (Path("/etc/subuid"), Path("/etc/subgid")):
        entries = table.read_text().splitlines() if table.exists() else []
        if not any(line.split(":")[0] == name for line in entries):
            if os.geteuid() != 0:
                return f"{table} has no range for {name}"
            with table.open("a") as out:
                out.write(f"{name}:{SUBIDS}\n")
    if shutil.which("newuidmap") is None:
        return "newuidmap is missing (apt-get install uidmap)"
    return None


def start_rootless(root: Path) -> PodmanService:
    user = pwd.getpwnam(ROOTLESS_USER)
    run, home = root / "run", root / "home"
    for path in (run, home):
        path.mkdir(mode=0o700)
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\nrootless_storage_path = "{root}/storage"\n')
    containers_conf(root / "containers.conf")
    for path in (root, run, home, root / "storage.conf", root / "containers.conf"):
        os.chown(path, user.pw_uid, user.pw_gid)
    root.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_RUNTIME_DIR": str(run),
           "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
           "CONTAINERS_CONF": str(root / "containers.conf")}
    log = root / "service.log"
    command = ["runuser", "-u", ROOTLESS_USER, "--", "env", *(f"{k}={v}" for k, v in env.items()),
               "podman", "system", "service", "--time=0", f"unix://{root / 'podman.sock'}"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                   start_new_session=True)
    wait_for_socket(process, root / "podman.sock", log)
    client = docker.DockerClient(base_url=f"unix://{root / 'podman.sock'}", timeout=120)
    return PodmanService("rootless", root, process, client)


@pytest.fixture(scope="session")
def podman_rootful(registry: LocalRegistry,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    """Rootful Podman's API service; the session's local registry is an insecure registry there."""
    reason = podman_missing()
    if reason is not None:
        docker_unavailable(reason)
    if os.geteuid() != 0:
        docker_unavailable("rootful Podman needs root")
    service = start_rootful(tmp_path_factory.mktemp("podman-rootful"), registry)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def podman_rootless() -> Iterator[PodmanService]:
    """Rootless Podman's API service, run by `lapodman` (its dirs: a temp dir that user can reach)."""
    reason = podman_missing() or ensure_rootless_user()
    if reason is None and shutil.which("runuser") is None:
        reason = "runuser is missing"
    if reason is not None:
        docker_unavailable(reason)
    root = Path(tempfile.mkdtemp(prefix="la-podman-rootless-"))
    service = start_rootless(root)
    yield service
    service.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a Podman service are marked `podman` (also when tests/conftest.py does not yet)."""
    for item in items:
        if PODMAN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.podman)
