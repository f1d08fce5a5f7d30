"""`--show-flow-logs`: container output reaches stdout line by line, prefixed, masked and rate-limited."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

from agent.flow_logs import FlowLogStreamer, RateLimit

TOKEN = "s3cr3t-token-value"


class FakeRuntime:
    """`follow_logs` yields the chunks it was given (split mid-line, as Docker's stream does)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def follow_logs(self, container_id: str, since: int | None = None) -> Iterator[bytes]:
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
