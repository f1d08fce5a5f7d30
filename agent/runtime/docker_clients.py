"""Where the Docker daemon is, and one docker-py client per thread to reach it.

docker-py's thread safety is undocumented (docker/docker-py#3229: requests sessions are shared), so each
thread gets its own client, created on first use and kept (the engine's threads are long-lived). The API
version is negotiated once and reused for later clients.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import docker
import docker.utils
from loguru import logger
from urllib3._collections import RecentlyUsedContainer

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
# docker-py keys a unix socket's connection pools by the request's whole URL and keeps 25 of them, each with
# its socket open: every container's own paths (`/containers/<id>/json`, ...) left an idle connection behind,
# ~3 fds per watched container up to 25 per thread. Four pools keep the repeated calls (the list, `/info`)
# on warm connections; a connection to a local socket costs well under a millisecond to open again.
# Set on the adapter: docker-py 7 ignores its own `num_pools` argument except for ssh:// (an operator
# precedence slip in `APIClient.__init__`).
POOLS_PER_CLIENT = 4


def client_params(base_url: str | None) -> dict[str, Any]:
    """Where to connect, resolved like `docker.from_env` (DOCKER_HOST + TLS variables, then CLI context)."""
    if base_url:
        return {"base_url": base_url}
    params: dict[str, Any] = dict(docker.utils.kwargs_from_env())
    from_context = getattr(docker.ContextAPI, "kwargs_from_context", None)  # docker-py >= 7.2
    if "base_url" not in params and from_context is not None:
        try:
            for key, value in from_context().items():
                params.setdefault(key, value)
        except Exception as exc:  # a broken ~/.docker/config.json must not hide the default socket
            logger.debug("ignoring docker CLI context: {error}", error=exc)
    return params


def display_address(base_url: str | None) -> str:
    if not base_url:
        return DEFAULT_ADDRESS
    return base_url.replace("http+unix://", "unix://", 1)


def label_filters(labels: Mapping[str, str | None]) -> list[str]:
    """Docker's `label` filter: `key` (any value) or `key=value`."""
    return [key if value is None else f"{key}={value}" for key, value in labels.items()]


def _close(pool: Any) -> None:
    pool.close()


def _limit_pools(api: docker.APIClient) -> None:
    """Keep at most `POOLS_PER_CLIENT` per-URL pools on a unix or ssh adapter (an evicted pool closes its
    idle connections; one in use finishes first). TCP adapters pool by host already."""
    for adapter in api.adapters.values():
        if isinstance(getattr(adapter, "pools", None), RecentlyUsedContainer):
            fewer: RecentlyUsedContainer[str, Any] = RecentlyUsedContainer(POOLS_PER_CLIENT,
                                                                           dispose_func=_close)
            setattr(adapter, "pools", fewer)  # noqa: B010 - typed as requests' BaseAdapter, which has none


class ClientPool:
    """One `docker.DockerClient` per thread for one daemon address."""

    def __init__(self, base_url: str | None, timeout: float) -> None:
        self.timeout = timeout
        self.params = client_params(base_url)
        self.address = display_address(self.params.get("base_url"))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[docker.DockerClient] = []
        self._api_version: str | None = None

    def get(self) -> docker.DockerClient:
        """This thread's client (connecting raises what docker-py raises; the caller maps it)."""
        client: docker.DockerClient | None = getattr(self._local, "client", None)
        if client is None:
            client = docker.DockerClient(timeout=self.timeout,  # type: ignore[arg-type]  # floats work
                                         version=self._api_version, **self.params)
            _limit_pools(client.api)
            self._api_version = client.api.api_version
            with self._lock:
                self._clients.append(client)
            self._local.client = client
        return client

    @contextmanager
    def fresh(self) -> Iterator[docker.APIClient]:
        """A low-level client of its own on a new connection, closed after use. A daemon that begins to stop
        closes its socket but still answers on the connections it has (with its old facts): only a new
        connection tells. The API version is negotiated once, as for the pooled clients."""
        client = docker.APIClient(timeout=self.timeout,  # type: ignore[arg-type]  # floats work
                                  version=self._api_version, **self.params)
        self._api_version = client.api_version
        try:
            yield client
        finally:
            client.close()

    def release(self) -> None:
        """Close this thread's client, if it has one (a short-lived thread must not leave it behind)."""
        client: docker.DockerClient | None = getattr(self._local, "client", None)
        if client is None:
            return
        self._local.client = None
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        try:
            client.close()
        except Exception as exc:
            logger.debug("closing a docker client failed: {error}", error=exc)

    def close(self) -> None:
        """Close every per-thread client; they are created again on next use."""
        with self._lock:
            clients, self._clients = self._clients, []
        self._local = threading.local()
        for client in clients:
            try:
                client.close()
            except Exception as exc:
                logger.debug("closing a docker client failed: {error}", error=exc)
