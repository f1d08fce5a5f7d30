"""Review fixes: host marker in claims, one registry of secrets, flow logs after a restart, `check` exit
codes, cancelled containers kept, requeue metric counted only once the run is back in the queue."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from agent import cleanup
from agent.cli import main
from agent.cloud import ApiError
from agent.docker_types import ContainerInfo, DockerUnavailable
from agent.flow_logs import FlowLogStreamer
from agent.launcher import Identity, container_labels
from agent.logs import SECRETS, configure_logging, settings_secrets
from agent.metrics import METRICS
from agent.models import AGENT_HOST_KEY, FlowRun, claimed_on, submitted_state
from agent.pipeline import Deployer
from agent.registry_auth import credentials_for
from agent.settings import Settings
from agent.watcher import Watcher, _watched

TOKEN = "tok-review-0123456789"
PASSWORD = "registry-pass-4f2a"
ROTATED = "rotated-pass-77e1"


def make_run(name: str | None = "brave-otter") -> FlowRun:
    return FlowRun.model_validate({
        "id": "run-1", "version": 3, "state": "Scheduled", "name": name,
        "serialized_state": {"type": "Scheduled", "start_time": "2024-01-01T00:00:00+00:00"},
        "flow": {"id": "flow-1", "name": "my flow", "core_version": "1.4.1"},
    })


# ---------------------------------------------------------------- 1. claims carry the claiming host
def test_submitted_state_records_the_host_in_the_prefect_context_field() -> None:
    plain = submitted_state({"type": "Scheduled"})
    marked = submitted_state({"type": "Scheduled"}, agent_host="HOST:A")
    assert list(marked) == list(plain)  # the §4.8 shape is unchanged: same keys, same order
    assert plain["context"] == {} and claimed_on(plain) is None
    assert marked["context"] == {AGENT_HOST_KEY: "HOST:A"} and claimed_on(marked) == "HOST:A"
    assert claimed_on(None) is None and claimed_on({"context": None}) is None


class RecordingClaims:
    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []

    async def set_state(self, run_id: str, state: dict[str, Any], version: int | None) -> None:
        self.states.append(state)


class FakeCloud:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.states = fail, []

    async def set_flow_run_state(self, run_id: str, state: dict[str, Any], version: int | None) -> None:
        if self.fail:
            raise ApiError("backend down")
        self.states.append(state)


def deployer(cloud: Any, host: str = "HOST:A") -> Deployer:
    identity = Identity("agent-x", [], "tenant", "http://api", [], host_id=host)

    async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return Deployer(Settings(), cloud, None, identity, call, asyncio.Event(), lambda exc: None)  # type: ignore[arg-type]


def test_the_pipeline_claims_with_this_hosts_marker() -> None:
    pipeline = deployer(FakeCloud())
    claims = RecordingClaims()
    pipeline.claims = claims  # type: ignore[assignment]
    assert asyncio.run(pipeline.claim(make_run()))
    assert [claimed_on(s) for s in claims.states] == ["HOST:A"]
    assert claims.states[0]["type"] == "Submitted"


# ---------------------------------------------------------------- 7. requeue metric
def test_requeue_is_counted_only_once_the_run_is_back_in_the_queue() -> None:
    def requeued() -> float:
        return METRICS.value("local_agent_runs_requeued_total", reason="docker_unavailable")

    before, gone = requeued(), DockerUnavailable("unix:///x.sock", "gone")
    asyncio.run(deployer(FakeCloud(fail=True)).requeue(make_run(), gone))
    assert requeued() == before
    cloud = FakeCloud()
    asyncio.run(deployer(cloud).requeue(make_run(), gone))
    assert requeued() == before + 1 and cloud.states[0]["type"] == "Scheduled"


# ---------------------------------------------------------------- 2. one registry of secrets
@pytest.fixture
def registry_settings(tmp_path: Path) -> Settings:
    secret_file = tmp_path / "ghcr"
    secret_file.write_text(PASSWORD + "-file\n")
    credentials = {"reg.example.com": {"username": "ci", "password": PASSWORD},
                   "ghcr.io": {"username": "me", "password_file": str(secret_file)}}
    return Settings(api_token=TOKEN, registry_credentials=json.dumps(credentials))


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    logger.remove()
    logger.configure(patcher=lambda record: None)
    logging.basicConfig(handlers=[], force=True)
    SECRETS.reset()


def test_settings_secrets_are_the_token_and_every_registry_password(registry_settings: Settings) -> None:
    assert sorted(settings_secrets(registry_settings)) == sorted([TOKEN, PASSWORD, PASSWORD + "-file"])


def test_registry_passwords_are_masked_in_the_agents_log(registry_settings: Settings,
                                                          log_stream: io.StringIO) -> None:
    configure_logging("DEBUG", secrets=settings_secrets(registry_settings), stream=log_stream)
    logger.info(f"auth {PASSWORD} and {PASSWORD}-file and {TOKEN}")
    logging.getLogger("docker.auth").warning("sending %s", PASSWORD)
    text = log_stream.getvalue()
    assert PASSWORD not in text and TOKEN not in text, text
    assert "auth *** and *** and ***" in text


def test_a_rotated_password_file_is_masked_once_a_pull_reads_it(registry_settings: Settings,
                                                                  log_stream: io.StringIO) -> None:
    configure_logging("DEBUG", secrets=settings_secrets(registry_settings), stream=log_stream)
    secret_file = Path(json.loads(registry_settings.registry_credentials.get_secret_value())  # type: ignore[union-attr]
                       ["ghcr.io"]["password_file"])
    secret_file.write_text(ROTATED)
    raw = registry_settings.registry_credentials.get_secret_value()  # type: ignore[union-attr]
    assert credentials_for("ghcr.io/me/flow:1", raw).auth_config["password"] == ROTATED  # type: ignore[index]
    logger.warning(f"pull refused for {ROTATED}")
    out = io.StringIO()
    streamer = FlowLogStreamer(FakeLogs([f"env PW={ROTATED}\n".encode()]), [], stream=out)
    streamer.follow("c1", "run")
    wait_for(lambda: "PW=" in out.getvalue())
    streamer.stop()
    assert ROTATED not in log_stream.getvalue() + out.getvalue()
    assert "pull refused for ***" in log_stream.getvalue() and out.getvalue() == "run | env PW=***\n"


# ---------------------------------------------------------------- 3. --show-flow-logs after a restart
class FakeLogs:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.since: list[float | None] = []

    def follow_logs(self, container_id: str, since: float | None = None) -> Iterator[bytes]:
        self.since.append(since)
        return iter(self.chunks)


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def container(labels: dict[str, str]) -> ContainerInfo:
    return ContainerInfo(id="c" * 64, name="prefect-run-1", status="running", labels=labels, exit_code=None,
                         oom_killed=False, created="", finished_at=None)


def test_the_run_name_travels_in_a_container_label_for_adopted_containers() -> None:
    labels = container_labels(make_run("brave-otter"), "agent-x")
    assert labels["io.local-agent.flow-run-name"] == "brave-otter"
    assert "io.local-agent.flow-run-name" not in container_labels(make_run(None), "agent-x")
    assert _watched(container(labels)).run_name == "brave-otter"
    old = {k: v for k, v in labels.items() if k != "io.local-agent.flow-run-name"}
    assert _watched(container(old)).run_name == "my flow"  # an older agent's container: the flow name


def test_adopted_containers_are_followed_from_the_watchers_start_launched_ones_from_theirs() -> None:
    runtime = FakeLogs([b"line\n"])
    watcher = Watcher(Settings(show_flow_logs=True), None, runtime, None, agent_name="agent-x",  # type: ignore[arg-type]
                      agent_id="a", on_docker_down=lambda exc: None, busy=set)
    assert watcher.flow_logs is not None
    watcher.flow_logs._out = io.StringIO()
    before = time.time()
    adopted = container(container_labels(make_run("adopted-run"), "agent-x"))
    watcher._add(_watched(adopted))
    launched = container_labels(FlowRun.model_validate({**make_run().model_dump(), "id": "run-2"}), "agent-x")
    watcher._add(_watched(ContainerInfo(id="d" * 64, name="prefect-run-2", status="running", labels=launched,
                                         exit_code=None, oom_killed=False, created="", finished_at=None)),
                 launched=True)
    wait_for(lambda: len(runtime.since) == 2)
    watcher.flow_logs.stop()
    adopted_since = [s for s in runtime.since if s is not None]
    assert len(adopted_since) == 1 and None in runtime.since, runtime.since
    assert before - 5 <= adopted_since[0] <= time.time()


# ---------------------------------------------------------------- 4. `check` exits 0 or 1 only
def test_check_never_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--health-address", "8080"]) == 1  # invalid configuration
    assert "invalid configuration" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["check", "--no-such-flag"])
    assert exc.value.code == 1
    with pytest.raises(SystemExit) as exc:
        main(["config", "--no-such-flag"])
    assert exc.value.code == 2  # other subcommands keep argparse's usage error code
    assert main(["config", "--health-address", "8080"]) == 2


# ---------------------------------------------------------------- 5. cancelled containers are kept
def test_a_cancelled_runs_container_is_kept_like_a_failed_ones_even_after_exit_0() -> None:
    now = time.time()
    finished = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(now - 600))
    info = ContainerInfo(id="c" * 64, name="prefect-x", status="exited", labels={}, exit_code=0,
                         oom_killed=False, created="", finished_at=finished)
    assert not cleanup.succeeded(info, "Cancelled")
    assert cleanup.removal_reason(info, "Cancelled", keep_hours=24, min_age_s=60) is None
    assert cleanup.removal_reason(info, "Cancelled", keep_hours=0.1, min_age_s=60) == "expired"
    assert cleanup.removal_reason(info, "Success", keep_hours=24, min_age_s=60) == "succeeded"
