"""`EngineStatus`: whether the container engine is reachable, as the agent last found it.

One owner decides on it (`agent.launch.admission.Admission`: no claim while the engine is away); the health
endpoint and `/metrics` only report it.
"""

from __future__ import annotations

import time

from agent.ops.metrics import METRICS


class EngineStatus:
    """Down since when, and why; monotonic clock."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.error: str | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def went_down(self, error: BaseException) -> bool:
        """Record an outage; True when this is its first report (the caller logs it once)."""
        first = self.down_since is None
        if first:
            self.down_since = time.monotonic()
        self.error = str(error)[:500]
        METRICS.docker_up.set(0)
        return first

    def came_back(self) -> None:
        self.down_since, self.error = None, None
        METRICS.docker_up.set(1)

    def outage_seconds(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since
