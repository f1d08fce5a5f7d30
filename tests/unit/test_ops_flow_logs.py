"""`--show-flow-logs`: container output reaches stdout line by line, prefixed, masked and rate-limited; the
run's name travels in a label, and adopted containers are followed from the watcher's start."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

from agent.api.models import FlowRun
from agent.launch.admission import Admission
from agent.launch.plan import Identity, container_labels
from agent.runtime.docker_types import ContainerInfo
from agent.session import Session
from agent.settings import Settings
from agent.supervise.flow_logs import FlowLogStreamer, RateLimit
from agent.supervise.watcher import Watcher, _watched

TOKEN = "s3cr3t-token-value"


class FakeRuntime:
    """`follow_logs` yields the chunks it was given (split mid-line, as Docker's stream does)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.since: list[float | None] = []

    def follow_logs(self, container_id: str, since: float | None = None) -> Iterator[bytes]:
        self.since.append(since)
        return iter(self.chunks)


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_lines_are_prefixed_and_masked() -> None:
    out = io.StringIO()
    chunks = [b"hello wo", b"rld\nkey=" + TOKEN.encode() + b"\nAuthorization: Bearer abc.def\n", b"tail"]
    streamer = FlowLogStreamer(FakeRuntime(chunks), [TOKEN], stream=out)
    streamer.follow("c1", "brave-otter")
    wait_for(lambda: "tail" in out.getvalue())
    assert out.getvalue().splitlines() == [
        "brave-otter | hello world", "brave-otter | key=***", "brave-otter | Authorization: Bearer ***",
        "brave-otter | tail",
    ]
    streamer.stop()


def test_rate_limit_drops_and_reports() -> None:
    limit = RateLimit(rate=1.0, burst=3)
    assert [limit.allow() for _ in range(5)] == [True, True, True, False, False]
    assert limit.dropped == 2
    out = io.StringIO()
    streamer = FlowLogStreamer(FakeRuntime([]), [], stream=out)
    limit.tokens = 1
    streamer._emit("run", b"after the flood", limit)
    assert out.getvalue().splitlines() == [
        "run | ... 2 line(s) dropped (rate limit)", "run | after the flood"]


# ------------------------------------------------------------------------------------- after a restart
def make_run(name: str | None = "brave-otter", run_id: str = "run-1") -> FlowRun:
    return FlowRun.model_validate({
        "id": run_id, "version": 3, "state": "Scheduled", "name": name,
        "serialized_state": {"type": "Scheduled", "start_time": "2024-01-01T00:00:00+00:00"},
        "flow": {"id": "flow-1", "name": "my flow", "core_version": "1.4.1"},
    })


def container(labels: dict[str, str], container_id: str = "c" * 64,
              name: str = "prefect-run-1") -> ContainerInfo:
    return ContainerInfo(id=container_id, name=name, status="running", labels=labels, exit_code=None,
                         oom_killed=False, created="", finished_at=None)


def test_the_run_name_travels_in_a_container_label_for_adopted_containers() -> None:
    labels = container_labels(make_run("brave-otter"), "agent-x")
    assert labels["io.local-agent.flow-run-name"] == "brave-otter"
    assert "io.local-agent.flow-run-name" not in container_labels(make_run(None), "agent-x")
    assert _watched(container(labels)).run_name == "brave-otter"
    old = {k: v for k, v in labels.items() if k != "io.local-agent.flow-run-name"}
    assert _watched(container(old)).run_name == "my flow"  # an older agent's container: the flow name


def test_adopted_containers_are_followed_from_the_watchers_start_launched_ones_from_theirs() -> None:
    runtime = FakeRuntime([b"line\n"])
    settings = Settings(show_flow_logs=True, name="agent-x")
    session = Session(Identity("agent-x", [], "tenant", "http://api", []), "a", frozenset())
    admission = Admission(settings, runtime)  # type: ignore[arg-type]
    watcher = Watcher(settings, None, runtime, session, admission, busy=set)  # type: ignore[arg-type]
    assert watcher.flow_logs is not None
    watcher.flow_logs._out = io.StringIO()
    before = time.time()
    adopted = container(container_labels(make_run("adopted-run"), "agent-x"))
    watcher._add(_watched(adopted))
    launched = container_labels(make_run(run_id="run-2"), "agent-x")
    watcher._add(_watched(container(launched, container_id="d" * 64, name="prefect-run-2")), launched=True)
    wait_for(lambda: len(runtime.since) == 2)
    watcher.flow_logs.stop()
    adopted_since = [s for s in runtime.since if s is not None]
    assert len(adopted_since) == 1 and None in runtime.since, runtime.since
    assert before - 5 <= adopted_since[0] <= time.time()
