"""A unix-socket forwarder to the real Docker daemon that a test can cut, restore and slow down.

The agent under test gets `--base-url unix://<proxy.path>`; everything it asks Docker goes through here:

* `cut()` closes the listening socket, removes the socket file and drops every open connection, exactly what
  an agent sees when its daemon restarts or its socket mount goes stale; `restore()` listens again.
* `delay` seconds are added before each chunk a client sends, so every Docker call of the agent is slower
  (launches stay "in flight" long enough to signal or kill the agent in the middle of them);
* `observe`, when given, makes one watcher per connection that sees every chunk the client sends before it is
  forwarded (unchanged): tests/support/api_surface.py records the agent's API calls this way.

`docker_proxy()` forwards to the API-surface recorder when the session runs one, so calls made through a
test's proxy are recorded too; cutting the proxy still cuts the agent off exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DOCKER_SOCKET = "/var/run/docker.sock"

Watcher = Callable[[bytes], None]  # sees each client chunk; must never raise


class DockerSocketProxy:
    def __init__(self, upstream: str = DOCKER_SOCKET, delay: float = 0.0,
                 observe: Callable[[], Watcher] | None = None) -> None:
        self.upstream, self.delay, self.observe = upstream, delay, observe
        self._dir = Path(tempfile.mkdtemp(prefix="lat-proxy-"))
        self.path = str(self._dir / "docker.sock")
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="proxy-accept").start()

    restore = start

    def cut(self) -> None:
        """The daemon is gone: no socket file, every open connection reset."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self.cut()
        with contextlib.suppress(OSError):
            self._dir.rmdir()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            watch = self.observe() if self.observe is not None else None
            threading.Thread(target=self._pump, args=(client, upstream, self.delay, watch),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, delay: float,
              watch: Watcher | None = None) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if watch is not None:
                    watch(data)
                if delay:
                    time.sleep(delay)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._conns.discard(source)
                self._conns.discard(target)


@contextlib.contextmanager
def docker_proxy(delay: float = 0.0) -> Iterator[DockerSocketProxy]:
    """A proxy for an agent on the docker engine, in front of the recorder when the session runs one."""
    from tests.support.api_surface import agent_upstream  # imports this module: resolved at call time

    proxy = DockerSocketProxy(agent_upstream(), delay=delay)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
