"""Poll-loop delays: Prefect's idle backoff and a capped, jittered backoff for consecutive failures."""

from __future__ import annotations

import random

IDLE_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0)  # Prefect 1.x `Agent._loop_intervals` (§3.3)


class IdleBackoff:
    """0.25 → 0.5 → 1 → 2 → 4 → 8 → 10 s while there is nothing to do; `reset()` when work appears."""

    def __init__(self, delays: tuple[float, ...] = IDLE_DELAYS) -> None:
        self._delays = delays
        self._index = 0

    def next(self) -> float:
        delay = self._delays[min(self._index, len(self._delays) - 1)]
        self._index += 1
        return delay

    def reset(self) -> None:
        self._index = 0


class FailureBackoff:
    """Counts consecutive failures; delay = min(base·2ⁿ⁻¹, cap) ±20 % jitter, so agents desynchronise."""

    def __init__(self, base: float = 1.0, cap: float = 30.0, jitter: float = 0.2) -> None:
        self.base, self.cap, self.jitter = base, cap, jitter
        self.failures = 0

    def failed(self) -> float:
        self.failures += 1
        return self.delay()

    def delay(self) -> float:
        if not self.failures:
            return 0.0
        raw = min(self.base * 2 ** (self.failures - 1), self.cap)
        return float(raw * random.uniform(1 - self.jitter, 1 + self.jitter))

    def succeeded(self) -> None:
        self.failures = 0
