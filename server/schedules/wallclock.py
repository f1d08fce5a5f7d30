"""Date arithmetic with the DST rules of pendulum 2 (what Prefect 1.4.1 computes with), on zoneinfo.

Event times stay in their clock's zone (a cached `ZoneInfo`, or a fixed offset) because Prefect's filters
look at local wall time, and because Python compares two datetimes of the same zone by wall time, exactly as
Prefect's pendulum objects do, so duplicate removal and ordering come out the same.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

UTC = ZoneInfo("UTC")


def localize(naive: datetime, zone: tzinfo, fold: int = 1) -> datetime:
    """Attach `zone` to a wall time like pendulum's `DateTime.create`: a skipped wall time moves by the gap
    (forward when fold=1, backward when fold=0); a repeated one keeps its fold."""
    naive = naive.replace(tzinfo=None, fold=fold)
    if not isinstance(zone, ZoneInfo):
        return naive.replace(tzinfo=zone, fold=0)
    before = zone.utcoffset(naive.replace(fold=0))
    after = zone.utcoffset(naive.replace(fold=1))
    if before is not None and after is not None and after > before:
        naive = naive + ((after - before) if fold else (before - after))
    return naive.replace(tzinfo=zone)


def add_wall(dt: datetime, delta: timedelta) -> datetime:
    """pendulum `add(days=..., seconds=...)` with a day part: wall-clock sum, localized with fold=1."""
    assert dt.tzinfo is not None
    return localize(dt.replace(tzinfo=None) + delta, dt.tzinfo, 1)


def add_absolute(dt: datetime, delta: timedelta) -> datetime:
    """pendulum `add(seconds=...)` or `dt + timedelta`: elapsed time, the result shown in dt's zone."""
    assert dt.tzinfo is not None
    return (dt.astimezone(UTC) + delta).astimezone(dt.tzinfo)


def pendulum_add(dt: datetime, days: int, seconds: float) -> datetime:
    """pendulum's `add(days=days, seconds=seconds)`: a day part makes the whole sum wall-clock time."""
    delta = timedelta(days=days, seconds=seconds)
    return add_wall(dt, delta) if days else add_absolute(dt, delta)


def elapsed_seconds(later: datetime, earlier: datetime) -> float:
    """Real elapsed time (pendulum's Interval), whatever the two zones are."""
    return (later.astimezone(UTC) - earlier.astimezone(UTC)).total_seconds()


def standard_localize(naive: datetime, zone: tzinfo) -> datetime:
    """pytz `localize(is_dst=False)`, which Prefect feeds croniter with: ambiguous or skipped wall times take
    the standard-time offset."""
    if not isinstance(zone, ZoneInfo):
        return naive.replace(tzinfo=zone)
    candidates = [naive.replace(tzinfo=zone, fold=fold) for fold in (0, 1)]
    if candidates[0].utcoffset() == candidates[1].utcoffset():
        return candidates[0]
    standard = [c for c in candidates if not c.dst()]
    chosen = standard[0] if len(standard) == 1 else candidates[1]
    return chosen.astimezone(UTC).astimezone(zone)
