"""Docker facts shared by the launches of a burst, and the work done before a prefetched run is due.

The Docker ceiling is create + start per container. Our pipeline also pinged the daemon and inspected the
image for every run: two more round trips per container on a daemon that is the bottleneck of a burst.

* `DockerProbe`: one `/_ping` answers for every launch within `ttl` (1 s). Concurrent callers share one
  in-flight ping; failures are never cached. A stale "up" is harmless: a launch that then finds the daemon
  gone gets `DockerUnavailable` and its run is put back in the queue, never failed.
* `ImagePresence`: "image X is on this host" is remembered for `ttl` (15 s, longer than the prefetch
  horizon, so a check made before a run is due still counts at its due time). Absence is never cached (a
  pull follows it). If the image vanished meanwhile, `create` reports `ImageNotFound`; the pipeline then
  `forget()`s it and applies the pull policy again, so the cache cannot fail a run.
"""

from __future__ import annotations

import asyncio
import time

from agent.runtime.port import ContainerRuntime

PING_TTL_S = 1.0
IMAGE_TTL_S = 15.0
PREPARE_LEAD_S = 0.5  # how long before a prefetched run's start time its Docker facts are refreshed

class DockerProbe:
    """`await probe.ping()` raises what `runtime.ping` raises, at most one real ping per `ttl`."""

    def __init__(self, runtime: ContainerRuntime, ttl: float = PING_TTL_S) -> None:
        self.runtime, self.ttl = runtime, ttl
        self._ok_until = 0.0
        self._inflight: asyncio.Future[None] | None = None

    async def ping(self) -> None:
        if time.monotonic() < self._ok_until:
            return
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._ping())
        await asyncio.shield(self._inflight)

    async def _ping(self) -> None:
        await self.runtime.ping()
        self._ok_until = time.monotonic() + self.ttl


class ImagePresence:
    """`await images.present(name)`: `runtime.image_present`, with "present" remembered for `ttl`."""

    def __init__(self, runtime: ContainerRuntime, ttl: float = IMAGE_TTL_S) -> None:
        self.runtime, self.ttl = runtime, ttl
        self._present_until: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self.checks = 0

    def forget(self, image: str) -> None:
        self._present_until.pop(image, None)

    def cached(self, image: str) -> bool:
        return time.monotonic() < self._present_until.get(image, 0.0)

    async def present(self, image: str) -> bool:
        if self.cached(image):
            return True
        future = self._inflight.get(image)
        if future is None or future.done():
            future = asyncio.ensure_future(self._check(image))
            self._inflight[image] = future
        return await asyncio.shield(future)

    async def _check(self, image: str) -> bool:
        self.checks += 1
        try:
            present = await self.runtime.image_present(image)
        finally:
            self._inflight.pop(image, None)
        now = time.monotonic()
        self._present_until = {k: v for k, v in self._present_until.items() if v > now}  # stays small
        if present:
            self._present_until[image] = now + self.ttl
        return present
