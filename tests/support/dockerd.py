"""Restart a real Docker daemon the way it was started, for the chaos tests.

A daemon restart is the fault the agent must survive without failing runs: without live-restore, dockerd stops
every container on SIGTERM (SIGTERM, then SIGKILL after its shutdown timeout) and does not start them again.
`restart_dockerd` reproduces exactly that: `systemctl restart docker` where systemd manages the daemon, else
the running `dockerd` is found in /proc (no procps), sent SIGTERM, and started again with its own command line
and environment the way `shared/env/ensure-docker.sh` starts it (`nohup setsid dockerd ... &`).

Needs root or passwordless sudo; `restart_privilege_problem()` says why not, for a skip (or a failure in CI).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import docker

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
DEFAULT_LOG = Path("/var/log/dockerd.log")
STOP_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0


class DockerdError(RuntimeError):
    """The daemon could not be found, stopped or started; the message says what happened."""


@dataclass(frozen=True)
class DockerdProcess:
    """A running dockerd as /proc shows it: enough to start an identical one after it is gone."""

    pid: int
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str

    def serves(self, host: str) -> bool:
        """Whether this daemon listens on `host` (a daemon without -H listens on the default socket)."""
        hosts = _option_values(self.argv, ("-H", "--host"))
        return host in hosts if hosts else host in (DEFAULT_SOCKET, "unix:///run/docker.sock")


@dataclass(frozen=True)
class RestartFacts:
    """Wall-clock facts of one restart (Unix seconds), printed by the tests; no test asserts on durations."""

    method: str
    old_pid: int | None
    new_pid: int | None
    stop_sent_at: float
    down_at: float
    up_at: float
    daemon_started_at: datetime

    @property
    def stop_seconds(self) -> float:
        return self.down_at - self.stop_sent_at

    @property
    def start_seconds(self) -> float:
        return self.up_at - self.down_at

    def summary(self) -> str:
        sent = datetime.fromtimestamp(self.stop_sent_at, UTC).strftime("%H:%M:%S.%f")[:-3]
        return (f"dockerd restart ({self.method}, pid {self.old_pid} -> {self.new_pid}) at {sent} UTC: down "
                f"after {self.stop_seconds:.1f} s, answering {self.start_seconds:.1f} s later; bridge "
                f"network created {self.daemon_started_at.isoformat()}")


# ------------------------------------------------------------------------------------------ privileges


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def restart_privilege_problem() -> str | None:
    """Why this process may not restart the daemon (None: it may): root, or passwordless sudo."""
    if os.geteuid() == 0:
        return None
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return None
    return "restarting dockerd needs root or passwordless sudo"


# ---------------------------------------------------------------------------------------- /proc reading


def _option_values(argv: Sequence[str], names: tuple[str, ...]) -> list[str]:
    """Values of a repeatable option given as `-H x`, `--host x` or `--host=x`."""
    values: list[str] = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
    return values


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a reparented dockerd may wait for a PID 1 that does not reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def dockerd_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "dockerd" and _alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return sorted(pids)


def read_dockerd(pid: int) -> DockerdProcess:
    proc = Path(f"/proc/{pid}")
    argv = tuple(a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a)
    env = dict(
        item.decode(errors="replace").split("=", 1)
        for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item
    )
    return DockerdProcess(pid=pid, argv=argv, env=env, cwd=os.readlink(proc / "cwd"))


def find_dockerd(host: str = DEFAULT_SOCKET) -> DockerdProcess:
    """The dockerd serving `host`; an error names what runs instead."""
    found = [read_dockerd(pid) for pid in dockerd_pids()]
    for process in found:
        if process.serves(host):
            return process
    seen = "; ".join(" ".join(p.argv) for p in found) or "none"
    raise DockerdError(f"no dockerd process serves {host} (running dockerd: {seen})")


# --------------------------------------------------------------------------------------- daemon checks


def docker_answers(host: str = DEFAULT_SOCKET, timeout: float = 15) -> bool:
    """`docker info` succeeds against `host`: what ensure-docker.sh waits for."""
    env = {**os.environ, "DOCKER_HOST": host}
    try:
        return subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wait_until_docker_answers(host: str, timeout: float, *, started_here: bool = False,
                              log: Path | None = None) -> float:
    """Wall time when `docker info` first answered; a dead daemon or the timeout raise with the log tail."""
    begin = time.monotonic()
    deadline = begin + timeout
    while not docker_answers(host):
        # a just-spawned daemon may still be `setsid` or `nohup` in /proc for a moment
        dead = started_here and time.monotonic() - begin > 2 and not dockerd_serving(host)
        if dead or time.monotonic() > deadline:
            lines = log.read_text(errors="replace").splitlines()[-25:] if log and log.exists() else []
            why = "dockerd exited during start-up" if dead else f"no answer within {timeout:.0f} s"
            tail = "\n".join(lines)
            raise DockerdError(f"{why} ({host}); last lines of {log}:\n{tail}")
        time.sleep(0.2)
    return time.time()


def dockerd_serving(host: str) -> bool:
    return any(read_dockerd(pid).serves(host) for pid in dockerd_pids())


def daemon_started_at(client: docker.DockerClient) -> datetime:
    """When the daemon started: dockerd deletes and recreates its default `bridge` network at every start
    (unless live-restore kept containers running), so that network's `Created` is the start time."""
    return parse_docker_time(client.networks.get("bridge").attrs["Created"])


def parse_docker_time(text: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds (and a zone) that `fromisoformat` cannot always read."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):] or "+00:00"
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------ stop / start


def systemd_manages_docker() -> bool:
    """systemd is PID 1 and docker.service is active: then `systemctl restart docker` is how to restart."""
    if not Path("/run/systemd/system").is_dir() or not shutil.which("systemctl"):
        return False
    return subprocess.run(["systemctl", "is-active", "--quiet", "docker.service"]).returncode == 0


def start_dockerd(argv: Sequence[str], env: Mapping[str, str], cwd: str = "/",
                  log: Path = DEFAULT_LOG, pidfile: Path | None = None) -> None:
    """Start dockerd detached as ensure-docker.sh does: `nohup setsid dockerd ... >>log 2>&1 </dev/null &`."""
    if pidfile is not None and pidfile.exists():  # a stale pid file from a dead daemon blocks a new one
        try:
            stale = not _alive(int(pidfile.read_text().strip() or 0))
        except ValueError:
            stale = True
        if stale:
            subprocess.run([*_sudo(), "rm", "-f", str(pidfile)], check=True)
    subprocess.run([*_sudo(), "mkdir", "-p", str(log.parent)], check=True)
    script = f"nohup setsid {shlex.join(argv)} >>{shlex.quote(str(log))} 2>&1 </dev/null &"
    command = [*_sudo(), "env", "-i", *(f"{k}={v}" for k, v in env.items()), "sh", "-c", script]
    subprocess.run(command, cwd=cwd, check=True, stdin=subprocess.DEVNULL)


def stop_dockerd(pid: int, timeout: float = STOP_TIMEOUT_S) -> float:
    """SIGTERM `pid` and wait until it is gone (it stops its containers first); returns that wall time."""
    if os.geteuid() == 0:
        os.kill(pid, signal.SIGTERM)
    else:
        subprocess.run([*_sudo(), "kill", "-TERM", str(pid)], check=True)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise DockerdError(f"dockerd {pid} still running {timeout:.0f} s after SIGTERM")
        time.sleep(0.05)
    return time.time()


def pidfile_of(process: DockerdProcess) -> Path:
    values = _option_values(process.argv, ("-p", "--pidfile"))
    return Path(values[-1] if values else "/var/run/docker.pid")


def restart_dockerd(host: str = DEFAULT_SOCKET, *, log: Path = DEFAULT_LOG,
                    start_timeout: float = START_TIMEOUT_S) -> RestartFacts:
    """Restart the daemon serving `host` the way it was started; returns when `docker info` answers again.

    Long-lived docker-py clients need nothing: a pooled connection the old daemon closed is replaced on
    next use (tests/chaos/test_daemon_restart.py checks it with a client and a `DockerRuntime`)."""
    if host == DEFAULT_SOCKET and systemd_manages_docker():
        sent = time.time()
        subprocess.run([*_sudo(), "systemctl", "restart", "docker.service"], check=True)
        down = up = wait_until_docker_answers(host, start_timeout)
        old_pid = new_pid = None
        method = "systemd"
    else:
        process = find_dockerd(host)
        old_pid, method, sent = process.pid, "nohup", time.time()
        down = stop_dockerd(process.pid)
        start_dockerd(process.argv, process.env, process.cwd, log, pidfile_of(process))
        up = wait_until_docker_answers(host, start_timeout, started_here=True, log=log)
        new_pid = find_dockerd(host).pid
    client = docker.DockerClient(base_url=host, timeout=30)
    try:
        started = daemon_started_at(client)
    finally:
        client.close()
    return RestartFacts(method, old_pid, new_pid, sent, down, up, started)


def ensure_dockerd(process: DockerdProcess, host: str, log: Path = DEFAULT_LOG,
                   timeout: float = START_TIMEOUT_S) -> bool:
    """Start `process` again if nothing serves `host` (a test's finally); True when it had to be started."""
    if docker_answers(host):
        return False
    if not dockerd_serving(host):
        start_dockerd(process.argv, process.env, process.cwd, log, pidfile_of(process))
    wait_until_docker_answers(host, timeout, started_here=True, log=log)
    return True
