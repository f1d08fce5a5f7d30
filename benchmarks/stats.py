"""Percentiles the same way for every figure (linear interpolation, like numpy's default)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of `values`; None for no values."""
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def summary(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    """`{prefix}.p50_s`, `.p95_s`, `.max_s`: the lateness figures the report shows."""
    return {
        f"{prefix}.p50_s": percentile(values, 50),
        f"{prefix}.p95_s": percentile(values, 95),
        f"{prefix}.max_s": max(values) if values else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator  # type: ignore[operator]
