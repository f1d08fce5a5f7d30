"""Image references, pull-stream handling (progress summaries, errors, single-flight) and the raw pull call.

Kept apart from `agent.runtime.docker` so the rules that decide *which* registry an image comes from and
*what* a pull stream said can be unit-tested with recorded events and no daemon.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import docker.auth
import requests
from loguru import logger

T = TypeVar("T")

DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
DEADLINE = "deadline"  # follow_pull's answer when the pull ran out of time
_MB = 1_000_000  # Docker's CLI shows decimal megabytes; so do we, so the numbers match `docker pull`

# Registry answers that retrying cannot fix: the reference, the repository or the credentials are wrong.
_PERMANENT_PULL_ERRORS = (
    "manifest unknown",
    "not found",
    "does not exist",
    "unauthorized",
    "denied",
    "authentication required",
    "no basic auth credentials",
    "invalid reference format",
    "repository name must be",
    "no matching manifest",
)


def names_registry(image: str) -> bool:
    """True when the reference's first path component is a registry host, by Docker's own rule.

    `distribution/reference.splitDockerDomain`: the part before the first `/` is a host when it contains a
    `.` or a `:`, is `localhost`, or has upper-case letters (repository names never do). `busybox` and
    `prefecthq/prefect` therefore come from Docker Hub, `registry:5000/x` and `ghcr.io/x` do not.
    """
    head, sep, _ = image.partition("/")
    if not sep:
        return False
    return "." in head or ":" in head or head == "localhost" or head.lower() != head


def split_image(image: str) -> tuple[str, str]:
    """Split a reference into `(repository, tag_or_digest)`, the two values the pull endpoint takes.

    `host:5000/repo:tag` -> `("host:5000/repo", "tag")`; `repo@sha256:ab..` -> `("repo", "sha256:ab..")`
    (a digest wins over a tag, as in Docker: `repo:tag@sha256:..` pulls the digest); `repo` -> `("repo",
    "latest")`. The colon of a registry port is never taken for a tag because tags cannot contain `/`.
    """
    image = image.strip()
    if not image:
        raise ValueError("empty image reference")
    name, at, digest = image.partition("@")
    if at:
        repository, _ = _split_tag(name)
        return repository, digest
    repository, tag = _split_tag(name)
    return repository, tag or DEFAULT_TAG


def _split_tag(name: str) -> tuple[str, str | None]:
    repository, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        return name, None
    return repository, tag


def join_image(repository: str, tag_or_digest: str) -> str:
    """Inverse of `split_image`: digests join with `@`, tags with `:`."""
    separator = "@" if re.match(r"^[a-z0-9]+:[0-9a-fA-F]{32,}$", tag_or_digest) else ":"
    return f"{repository}{separator}{tag_or_digest}"


def pull_error_is_permanent(message: str) -> bool:
    """Classify a registry error: permanent (bad reference, missing tag, denied) or worth retrying later.

    The daemon hands registry failures over as free text (HTTP 404/500 before the stream starts, an
    `error` event after), so text is all there is. Unknown messages count as transient: a registry
    that is down or slow must not fail a run that would succeed a minute later.
    """
    lowered = message.lower()
    return any(marker in lowered for marker in _PERMANENT_PULL_ERRORS)


def stream_error(event: Mapping[str, Any]) -> str | None:
    """The registry's message when a pull-stream event reports an error (the HTTP status was 200)."""
    if "error" not in event and "errorDetail" not in event:
        return None
    detail = event.get("errorDetail") or {}
    message = event.get("error") or (detail.get("message") if isinstance(detail, Mapping) else None)
    return str(message or "unknown error in the pull stream")


@dataclass
class _Layer:
    current: int = 0
    total: int = 0
    done: bool = False
    cached: bool = False  # "Already exists": nothing to download


@dataclass
class PullProgress:
    """Folds the daemon's per-layer pull events into one line a human (or a run log) can read.

    `docker pull` emits several events per layer per second; forwarding them would flood the run log.
    Callers feed every event and print `summary()` at most every few seconds.
    """

    image: str
    layers: dict[str, _Layer] = field(default_factory=dict)
    digest: str | None = None
    final_status: str | None = None

    def feed(self, event: Mapping[str, Any]) -> None:
        status = str(event.get("status") or "")
        if status.startswith("Digest:"):
            self.digest = status.partition(":")[2].strip()
            return
        if status.startswith("Status:"):
            self.final_status = status.partition(":")[2].strip()
            return
        layer_id = event.get("id")
        if not layer_id or not status or status.startswith(("Pulling from", "Pulling repo")):
            return
        self._update_layer(self.layers.setdefault(str(layer_id), _Layer()), status, event)

    @staticmethod
    def _update_layer(layer: _Layer, status: str, event: Mapping[str, Any]) -> None:
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail, Mapping):
            layer.current = int(detail.get("current") or layer.current)
            layer.total = int(detail.get("total") or layer.total)
        elif status in ("Download complete", "Verifying Checksum"):
            layer.current = max(layer.current, layer.total)
        elif status in ("Pull complete", "Already exists"):
            layer.done = True
            layer.cached = status == "Already exists"
            layer.current = max(layer.current, layer.total)

    @property
    def layers_done(self) -> int:
        return sum(1 for layer in self.layers.values() if layer.done)

    @property
    def downloaded_bytes(self) -> int:
        return sum(layer.current for layer in self.layers.values())

    @property
    def total_bytes(self) -> int:
        return sum(layer.total for layer in self.layers.values())

    def summary(self) -> str:
        """`pulling <image>: 3/7 layers done, 12.3/40.1 MB` (bytes only once the sizes are known)."""
        line = f"pulling {self.image}: {self.layers_done}/{len(self.layers)} layers done"
        if self.total_bytes:
            line += f", {self.downloaded_bytes / _MB:.1f}/{self.total_bytes / _MB:.1f} MB"
        return line

    def finished(self, elapsed: float) -> str:
        """The one line that closes a pull: what came down, how long it took, which digest it resolved to."""
        if self.final_status and "up to date" in self.final_status:
            line = f"pulled {self.image} in {elapsed:.1f}s: image is up to date"
        elif not self.layers:
            line = f"pulled {self.image} in {elapsed:.1f}s: all layers were already present"
        else:
            line = f"pulled {self.image} in {elapsed:.1f}s: {len(self.layers)} layers"
            cached = sum(1 for layer in self.layers.values() if layer.cached)
            if cached:
                line += f" ({cached} already present)"
            if self.total_bytes:
                line += f", {self.total_bytes / _MB:.1f} MB downloaded"
        if self.digest:
            line += f" ({self.digest})"
        return line


class SingleFlight:
    """Per-key single-flight: concurrent callers of `run(key, ...)` share one execution and its outcome.

    Ten runs of one image arriving together must cause one pull, not ten (peers point 11). Followers
    subscribe their progress callback to the leader's pull and get its result or its exception.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    def run(self, key: str, work: Callable[[Callable[[str], None]], T],
            listener: Callable[[str], None] | None = None) -> T:
        """Run `work(emit)` unless a call for `key` is in flight; `emit` reaches every caller's listener."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            if listener is not None:
                flight.listeners.append(listener)
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return cast(T, flight.result)
        try:
            result = work(flight.emit)
            flight.result = result
            return result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def in_flight(self, key: str) -> bool:
        with self._lock:
            return key in self._flights


@dataclass
class _Flight:
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def emit(self, line: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(line)
            except Exception as exc:  # one caller's logging bug must not abort a pull others wait for
                logger.warning("pull progress callback failed: {error}", error=exc)


def follow_pull(events: Iterable[Mapping[str, Any]], progress: PullProgress, emit: Callable[[str], None], *,
                interval: float, deadline: float | None = None,
                clock: Callable[[], float] = time.monotonic) -> str | None:
    """Consume a pull stream: summarise into `emit` at most every `interval` s, stop at the first error.

    Returns the registry's error message (errors arrive in-band with HTTP 200, docker/docker-py#2286), or
    `"deadline"` when `deadline` (a `clock()` value) passed, else None once the stream ends. The closing
    line (`progress.finished`) is emitted on success only.
    """
    started = last = clock()
    for event in events:
        message = stream_error(event)
        if message is not None:
            return message
        progress.feed(event)
        now = clock()
        if deadline is not None and now > deadline:
            return DEADLINE
        if now - last >= interval:
            emit(progress.summary())
            last = now
    emit(progress.finished(clock() - started))
    return None


def open_pull(api: Any, image: str, auth_config: Mapping[str, Any] | None, connect_timeout: float,
              stall_timeout: float) -> tuple[requests.Response, Iterator[dict[str, Any]]]:
    """POST /images/create and return the response and its decoded event stream.

    docker-py's `api.pull` hard-codes `timeout=None` on the stream, so a stalled registry would block the
    calling thread for ever. We issue the same request with a read timeout through docker-py's private
    `_post`/`_url`/`_raise_for_status`/`_stream_helper` (unchanged since docker-py 2.x; docker is pinned
    `<8`) and its auth helpers. Without `auth_config`, the Docker config (`DOCKER_CONFIG`, credHelpers) is
    re-read first, so credentials rotated by `docker login` or a helper cron since start-up are used.
    """
    repository, ref = split_image(image)
    if auth_config is None:
        api.reload_config()
        registry, _ = docker.auth.resolve_repository_name(repository)
        header = docker.auth.get_config_header(api, registry)
    else:
        header = docker.auth.encode_header(dict(auth_config))
    headers = {"X-Registry-Auth": header.decode() if isinstance(header, bytes) else header} if header else {}
    response = api._post(api._url("/images/create"), params={"fromImage": repository, "tag": ref},
                         headers=headers, stream=True, timeout=(connect_timeout, stall_timeout))
    api._raise_for_status(response)
    return response, api._stream_helper(response, decode=True)
