"""Pull-stream time limits against a fake daemon on 127.0.0.1 that stalls or trickles.

A real registry cannot be made to stall on demand, and docker-py reads pull streams with no timeout at all,
so this is the one place a stand-in daemon earns its keep: it answers `/version` and then serves
`POST /images/create` as a chunked stream that goes silent (stall) or never ends (trickle).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.runtime.docker import DockerRuntime, ImagePullError

EVENT = {"status": "Downloading", "progressDetail": {"current": 1, "total": 10}, "id": "abc"}


class FakeDaemon(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "stall"
    stop = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"ApiVersion": "1.41", "Version": "20.10-fake"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while not self.stop.is_set():
            chunk = json.dumps(EVENT).encode() + b"\r\n"
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            except OSError:
                return  # the client gave up and closed the stream
            self.stop.wait(0.05 if self.mode == "trickle" else 30)


@pytest.fixture
def fake_daemon() -> Iterator[type[FakeDaemon]]:
    handler = type("Handler", (FakeDaemon,), {"stop": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"tcp://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    handler.stop.set()
    server.shutdown()
    server.server_close()


def test_a_stalled_pull_fails_after_the_stall_timeout(fake_daemon: type[FakeDaemon]) -> None:
    runtime = DockerRuntime(fake_daemon.url, timeout=5)  # type: ignore[attr-defined]
    started = time.monotonic()
    with pytest.raises(ImagePullError) as caught:
        runtime.pull("registry.example/flow:1", stall_timeout=0.5)
    assert 0.4 < time.monotonic() - started < 4
    assert "no progress for 0.5s" in str(caught.value) and caught.value.transient
    runtime.close()


def test_a_pull_that_never_ends_fails_at_its_deadline(fake_daemon: type[FakeDaemon]) -> None:
    fake_daemon.mode = "trickle"
    runtime = DockerRuntime(fake_daemon.url, timeout=5)  # type: ignore[attr-defined]
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(ImagePullError, match="did not finish within 0.6s") as caught:
        runtime.pull("registry.example/flow:1", timeout=0.6, on_progress=lines.append, progress_interval=0.2)
    assert 0.5 < time.monotonic() - started < 4 and caught.value.transient
    assert 1 <= len(lines) <= 4 and lines[0] == "pulling registry.example/flow:1: 0/1 layers done, 0.0/0.0 MB"
    runtime.close()
