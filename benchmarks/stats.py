"""Percentiles the same way for every figure (linear interpolation, like numpy's default), and figures
written the same way in every report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


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


def fixed(value: Any, decimals: int) -> str:
    """A figure in a results table: `n/a` when not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}" if isinstance(value, float) else str(value)


def number(value: Any, decimals: int = 2) -> str:
    """A figure in a growth/cost/soak report: thousands separated, `–` when absent."""
    if value is None:
        return "–"
    return f"{value:,.{decimals}f}" if isinstance(value, float) else f"{value:,}"


def times(ratio: Any) -> str:
    """` (xN.NN)`: a figure's ratio to the same run's baseline, nothing when there is none."""
    return "" if ratio is None else f" (x{ratio:.2f})"
