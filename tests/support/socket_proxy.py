"""The Docker API socket proxy (deploy/socket-proxy) for tests: its image, and the real haproxy binary run on
the committed config in front of any unix socket."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import docker
import pytest

from tests.support.images import LOCAL_BASE_IMAGE, REPO_ROOT, build_image, offline_mode
from tests.support.server_fixtures import free_port

PROXY_DIR = REPO_ROOT / "deploy" / "socket-proxy"
PROXY_CONFIG = PROXY_DIR / "haproxy.cfg"
#: Reused across sessions while deploy/socket-proxy is unchanged (content-hash label), like the flow image.
PROXY_IMAGE = "local-agent-test-socket-proxy:e2e"


def build_socket_proxy_image(client: docker.DockerClient) -> str:
    """deploy/socket-proxy/Dockerfile as is; offline on the local bookworm image (apt works inside)."""
    args = {"BASE_IMAGE": LOCAL_BASE_IMAGE} if offline_mode(client) else {}
    return build_image(context=PROXY_DIR, dockerfile=None, tag=PROXY_IMAGE, buildargs=args,
                       include=["haproxy.cfg"], labels={"io.local-agent.image": "socket-proxy"},
                       client=client)


@dataclass
class RunningProxy:
    """haproxy on 127.0.0.1:`port` with the committed config; its log lines collect in `log_path`."""

    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        if os.environ.get("LOCAL_AGENT_REQUIRE_DOCKER") == "1":
            pytest.fail("haproxy is not installed (apt-get install haproxy)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return found


@contextmanager
def running_haproxy(
    upstream_socket: Path, workdir: Path, stream_timeout: str = "1h"
) -> Iterator[RunningProxy]:
    """The real haproxy binary on deploy/socket-proxy/haproxy.cfg, upstream `upstream_socket`."""
    port = free_port()
    env = {**os.environ, "SOCKET_PROXY_BIND": f"127.0.0.1:{port}", "DOCKER_SOCKET": str(upstream_socket),
           "SOCKET_PROXY_STREAM_TIMEOUT": stream_timeout}
    log_path = workdir / "haproxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(PROXY_CONFIG)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, log_path)
        yield RunningProxy(port, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_listening(port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"haproxy did not listen on {port}:\n{log_path.read_text()}")


# ------------------------------------------------------------------------------------------------ upstream


@dataclass(frozen=True)
class Received:
    """One request as it reached the upstream: method, request target (raw), version, body."""

    method: str
    target: str
    version: str
    body: bytes


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"


class RecordingUpstream:
    """A tiny HTTP/1.1 server on a unix socket that answers every request 200 "OK" and records it, parsing
    like a real server (keep-alive, Content-Length and chunked bodies), so a request smuggled in a body shows
    up as a request of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._server = socketserver.ThreadingUnixStreamServer(str(path), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self) -> list[Received]:
        """What arrived since the last call."""
        with self._lock:
            taken, self._received = self._received, []
        return taken

    def _record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)

    def _handler(self) -> type[socketserver.StreamRequestHandler]:
        upstream = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    received = read_request(self.rfile)
                    if received is None:
                        return
                    upstream._record(received)
                    self.wfile.write(OK_ANSWER)
                    self.wfile.flush()

        return Handler


def read_request(rfile: io.BufferedIOBase) -> Received | None:
    """One request from the stream, or None at its end (or on garbage, which ends the connection)."""
    line = rfile.readline(65536)
    if not line.strip():
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3:
        return Received(parts[0], " ".join(parts[1:]), "?", b"")
    headers: dict[str, str] = {}
    while (header := rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while (size := int(rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
            body += rfile.read(size)
            rfile.readline()
        while rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
    else:
        body = rfile.read(int(headers.get("content-length", "0") or 0))
    return Received(parts[0], parts[1], parts[2], body)


def exchange(port: int, raw: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes to the proxy and read until it closes the connection (requests say `close`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------------ the list


def load_generator() -> ModuleType:
    """deploy/socket-proxy/generate.py as a module (its directory name is not importable)."""
    spec = importlib.util.spec_from_file_location("socket_proxy_generate", PROXY_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def listed_endpoints() -> list[tuple[str, str]]:
    """(method, path template) of the API list the committed config was generated from."""
    generator = load_generator()
    source = generator.committed_source(PROXY_CONFIG.read_text())
    return [(e.method, e.path) for e in generator.parse_api(source.read_text())]
