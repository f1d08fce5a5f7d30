"""A second, private Docker daemon for the chaos tests, so restarting "the daemon" harms nobody else.

Restarting the machine's shared daemon kills every container on it, those of other test sessions included,
and ends a process the test did not start. The chaos tests therefore start their own real `dockerd` (same
binary, same start path as ensure-docker.sh) with its own socket, data root, exec root (and so its own
containerd), pid file and bridge, and restart that one. It leaves the host's iptables alone
(`--iptables=false`): containers only need the host itself (`host.docker.internal` is the bridge's address).

Set `LOCAL_AGENT_CHAOS_DOCKERD=shared` to restart the shared daemon instead (a CI machine that runs nothing
else). The data root is kept between sessions as a cache of the images loaded into it. One chaos session at
a time: the daemon is shared by name, and the session that finishes stops it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from tests.support.dockerd import (
    DEFAULT_LOG,
    DEFAULT_SOCKET,
    DockerdError,
    DockerdProcess,
    docker_answers,
    find_dockerd,
    start_dockerd,
    stop_dockerd,
    wait_until_docker_answers,
)

RUN_DIR = Path("/run/local-agent-chaos")
DATA_ROOT = Path("/var/lib/local-agent-chaos/docker")
PRIVATE_SOCKET = f"unix://{RUN_DIR}/docker.sock"
PRIVATE_LOG = Path("/var/log/dockerd-local-agent-chaos.log")
BRIDGE = "la-chaos0"
BRIDGE_ADDRESS = "10.213.77.1/24"


@dataclass(frozen=True)
class ChaosDaemon:
    """The daemon a chaos test restarts: where it listens, its log, and how it was started."""

    host: str
    log: Path
    process: DockerdProcess
    private: bool

    def client(self, timeout: float = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=timeout)  # type: ignore[arg-type]


def private_argv() -> tuple[str, ...]:
    return (
        "dockerd", "--host", PRIVATE_SOCKET, "--pidfile", str(RUN_DIR / "docker.pid"),
        "--data-root", str(DATA_ROOT), "--exec-root", str(RUN_DIR / "exec"), "--bridge", BRIDGE,
        "--iptables=false", "--ip-masq=false", "--ip-forward=false", "--cgroup-parent", "/local-agent-chaos",
    )


def ensure_bridge() -> None:
    """The private daemon's bridge (dockerd's `--bridge` needs an existing interface with an address)."""
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)


def start_private_daemon(timeout: float = 60) -> ChaosDaemon:
    """Start (or reuse) the private daemon and wait until `docker info` answers on its socket."""
    if os.geteuid() != 0:
        raise DockerdError("the private chaos daemon needs root (bridge interface, dockerd)")
    if not docker_answers(PRIVATE_SOCKET):
        ensure_bridge()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        start_dockerd(private_argv(), env, "/", PRIVATE_LOG, RUN_DIR / "docker.pid")
        wait_until_docker_answers(PRIVATE_SOCKET, timeout, started_here=True, log=PRIVATE_LOG)
    return ChaosDaemon(PRIVATE_SOCKET, PRIVATE_LOG, find_dockerd(PRIVATE_SOCKET), private=True)


def shared_daemon() -> ChaosDaemon:
    return ChaosDaemon(DEFAULT_SOCKET, DEFAULT_LOG, find_dockerd(DEFAULT_SOCKET), private=False)


def stop_private_daemon() -> None:
    """Stop the private daemon (it stops its containers) and remove its bridge; the data root stays."""
    try:
        process = find_dockerd(PRIVATE_SOCKET)
    except DockerdError:
        process = None
    if process is not None:
        stop_dockerd(process.pid)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def copy_images(source: docker.DockerClient, daemon: ChaosDaemon, tags: list[str]) -> list[str]:
    """Give the private daemon the images the test needs (`docker save | docker load`, no registry here);
    an image already there with the same id is skipped. Returns the tags copied."""
    copied: list[str] = []
    if not daemon.private:
        return copied
    target, host = daemon.client(), daemon.host
    for tag in tags:
        wanted = source.images.get(tag).id
        try:
            if target.images.get(tag).id == wanted:
                continue
        except docker.errors.ImageNotFound:
            pass
        save = subprocess.Popen(["docker", "-H", DEFAULT_SOCKET, "save", tag], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", host, "load", "-q"], stdin=save.stdout, capture_output=True)
        save.wait()
        if save.returncode or load.returncode:
            raise DockerdError(f"copying {tag} to {host} failed: {load.stderr.decode(errors='replace')}")
        copied.append(tag)
    target.close()
    return copied
