"""The two agents under test, as processes: ours (`python -m agent start`) and Prefect 1.4.1's DockerAgent.

Both are started the way a user starts them, each pointed at its own counting proxy, with its own label so
every flow run is meant for exactly one of them, with image pulls off (the flow image is local; Prefect never
pulls a slash-less name anyway) and with a private Prefect home so no user config leaks in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.config import REPO_ROOT

PREFECT_VENV = REPO_ROOT / ".cache" / "prefect-1.4.1"
PREFECT_REQUIREMENTS = ("prefect==1.4.1", "marshmallow<4", "pendulum<3")  # pendulum 3 breaks its CronClock


@dataclass
class AgentProcess:
    """One agent system: how to start it, the options its ceiling must imitate, and its running process."""

    system: str  # "ours" | "prefect"
    label: str
    command: list[str]
    env: dict[str, str]
    concurrency: int
    auto_remove: bool
    log_path: Path
    init: bool = False  # Docker's init as PID 1 of the flow containers
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _log: object = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> float:
        """Start the process; returns the wall-clock launch time (the start-up figure counts from here)."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.time()
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self.started_at

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 40.0) -> float | None:
        """SIGINT (both agents stop gracefully on it), SIGKILL if it lingers; seconds to exit, if it ran."""
        took = None
        if self.process is not None and self.process.poll() is None:
            began = time.monotonic()
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
                took = time.monotonic() - began
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        return took


def _base_env(home: Path) -> dict[str, str]:
    """The caller's environment minus any PREFECT__* setting, with a private Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env["PREFECT__HOME_DIR"] = str(home)
    env["PREFECT__USER_CONFIG_PATH"] = str(home / "config.toml")
    return env


def ours_concurrency() -> int:
    """Our agent's default number of concurrent launches (the ceiling imitates it)."""
    try:
        from agent.settings import Settings

        return int(Settings.model_fields["max_concurrent_launches"].default)
    except Exception:  # noqa: BLE001 - the agent package is still being written; its documented default
        return 10


def our_agent(proxy_url: str, server_port: int, label: str, name: str, log_dir: Path) -> AgentProcess:
    home = Path(tempfile.mkdtemp(prefix="bench-ours-", dir=log_dir))
    env = _base_env(home) | {
        "PREFECT__CLOUD__API": proxy_url,
        "PREFECT__CLOUD__AGENT__NAME": name,
        "PREFECT__CLOUD__AGENT__LABELS": label,
        "PREFECT__CLOUD__AGENT__NO_PULL": "true",
        "PREFECT__CLOUD__AGENT__FLOW_API_URL": f"http://host.docker.internal:{server_port}",
        "PREFECT__CLOUD__AGENT__LEVEL": "INFO",
        "PREFECT__CLOUD__AGENT__SECRETS_DIR": str(home),
    }
    return AgentProcess(
        system="ours", label=label, command=[sys.executable, "-m", "agent", "start"], env=env,
        concurrency=ours_concurrency(), auto_remove=False, log_path=log_dir / "agent-ours.log", init=True,
    )


def ensure_prefect_venv() -> Path:
    """The throwaway Prefect 1.4.1 virtualenv (shared with the tests' when it exists; never vendored)."""
    try:
        from tests.support.prefect_fixtures import ensure_prefect_venv as ensure

        return ensure().root
    except ImportError:  # benchmarks must not depend on test support being importable
        pass
    python = PREFECT_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PREFECT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PREFECT_REQUIREMENTS], check=True)
    return PREFECT_VENV


def prefect_agent(proxy_url: str, server_port: int, label: str, name: str, log_dir: Path) -> AgentProcess:
    venv = ensure_prefect_venv()
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-", dir=log_dir))
    env = _base_env(home) | {
        "PREFECT__BACKEND": "server",
        "PREFECT__SERVER__ENDPOINT": proxy_url,
        "PREFECT__CLOUD__API": proxy_url,
        "PREFECT__SERVER__HOST": "http://127.0.0.1",
        "PREFECT__SERVER__PORT": str(server_port),
        "PREFECT__LOGGING__LEVEL": "INFO",
    }
    command = [str(venv / "bin" / "prefect"), "agent", "docker", "start", "--label", label, "--name", name,
               "--no-pull"]
    return AgentProcess(
        system="prefect", label=label, command=command, env=env,
        # Prefect's Agent sizes its deploy thread pool as min(32, cpu_count + 4) (agent/agent.py:271).
        concurrency=min(32, (os.cpu_count() or 1) + 4), auto_remove=True,
        log_path=log_dir / "agent-prefect.log",
    )
