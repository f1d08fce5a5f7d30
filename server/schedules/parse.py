"""The `schedule` of a flow's serialized form (Prefect 1.4.1's ScheduleSchema) -> a `Schedule`.

Anything Prefect Server could not load or honour is refused with a BAD_USER_INPUT error naming the part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from server.errors import ApiError
from server.schedules.clocks import Clock, ClockOptions, CronClock, DatesClock, IntervalClock, RRuleClock
from server.schedules.filters import build_adjustment, build_filter
from server.schedules.model import Schedule
from server.schedules.rrules import build_rrule
from server.schedules.wallclock import UTC, localize

MIN_INTERVAL = timedelta(minutes=1)  # Prefect's schema refuses shorter intervals for a server
# Longer intervals make no sense and soon leave the years datetime can hold.
MAX_INTERVAL = timedelta(days=100 * 365)


def bad(message: str) -> ApiError:
    return ApiError(message, "BAD_USER_INPUT")


def parse_schedule(serialized: Mapping[str, Any] | None) -> Schedule | None:
    """None (no schedule) stays None; a schedule without clocks is refused like Prefect's schema does."""
    if serialized is None:
        return None
    if not isinstance(serialized, Mapping):
        raise bad("Schedule: expected an object.")
    clocks = serialized.get("clocks")
    if not isinstance(clocks, list) or not clocks:
        raise bad("Schedule: `clocks` must be a non-empty list.")
    return Schedule(
        clocks=tuple(_clock(raw, index) for index, raw in enumerate(clocks)),
        filters=_functions(serialized, "filters", build_filter),
        or_filters=_functions(serialized, "or_filters", build_filter),
        not_filters=_functions(serialized, "not_filters", build_filter),
        adjustments=_functions(serialized, "adjustments", build_adjustment),
    )


def _functions(serialized: Mapping[str, Any], key: str, build: Callable[[Any, str], Any]) -> tuple[Any, ...]:
    refs = serialized.get(key) or []
    if not isinstance(refs, list):
        raise bad(f"Schedule: `{key}` must be a list.")
    return tuple(build(ref, f"{key}[{index}]") for index, ref in enumerate(refs) if ref is not None)


def _clock(raw: Any, index: int) -> Clock:
    where = f"clocks[{index}]"
    if not isinstance(raw, Mapping):
        raise bad(f"Schedule {where}: expected an object.")
    kind = raw.get("type")
    if kind == "IntervalClock":
        return IntervalClock(_interval(raw, where), _options(raw, where))
    if kind == "CronClock":
        return _cron(raw, where)
    if kind == "DatesClock":
        dates = raw.get("dates")
        if not isinstance(dates, list) or not dates:
            raise bad(f"Schedule {where}: DatesClock needs a non-empty `dates` list.")
        names = [f"{where}.dates[{i}]" for i in range(len(dates))]
        parsed = tuple(_required(_zoned(value, name), name) for value, name in zip(dates, names, strict=True))
        return DatesClock(parsed, _options(raw, where, with_dates=False))
    if kind == "RRuleClock":
        return RRuleClock(build_rrule(raw.get("rrule_obj"), where), _options(raw, where))
    raise bad(f"Schedule {where}: unsupported clock type {kind!r}.")


def _interval(raw: Mapping[str, Any], where: str) -> timedelta:
    """Checked as a number before timedelta sees it: JSON may carry NaN, Infinity or 1e300 here."""
    micros = raw.get("interval")
    if not isinstance(micros, int | float) or isinstance(micros, bool):
        raise bad(f"Schedule {where}: IntervalClock needs `interval` in microseconds.")
    if not math.isfinite(micros):
        raise bad(f"Schedule {where}: interval must be a finite number, got {micros!r}.")
    if micros < MIN_INTERVAL / timedelta(microseconds=1):
        raise bad(f"Schedule {where}: interval can not be less than one minute.")
    if micros > MAX_INTERVAL / timedelta(microseconds=1):
        raise bad(f"Schedule {where}: interval can not be more than 100 years.")
    return timedelta(microseconds=micros)


def _cron(raw: Mapping[str, Any], where: str) -> CronClock:
    cron = raw.get("cron")
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise bad(f"Schedule {where}: invalid cron string {cron!r}.")
    day_or = raw.get("day_or")
    if day_or is not None and not isinstance(day_or, bool):
        raise bad(f"Schedule {where}: `day_or` must be a boolean.")
    return CronClock(cron, True if day_or is None else day_or, _options(raw, where))


def _options(raw: Mapping[str, Any], where: str, with_dates: bool = True) -> ClockOptions:
    defaults = raw.get("parameter_defaults") or {}
    if not isinstance(defaults, Mapping) or not all(isinstance(key, str) for key in defaults):
        raise bad(f"Schedule {where}: `parameter_defaults` must be an object.")
    labels = raw.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise bad(f"Schedule {where}: `labels` must be a list of strings.")
    start = _zoned(raw.get("start_date"), f"{where}.start_date") if with_dates else None
    end = _zoned(raw.get("end_date"), f"{where}.end_date") if with_dates else None
    return ClockOptions(start, end, dict(defaults), None if labels is None else list(labels))


def _required(value: datetime | None, where: str) -> datetime:
    if value is None:
        raise bad(f"Schedule {where}: a date is required.")
    return value


def _zoned(value: Any, where: str) -> datetime | None:
    """Prefect's DateTimeTZ: `{"dt": naive ISO time, "tz": IANA zone}`, read as pendulum.parse does."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("dt"), str):
        raise bad(f"Schedule {where}: expected {{'dt': ..., 'tz': ...}}.")
    try:
        zone = ZoneInfo(str(value.get("tz") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise bad(f"Schedule {where}: unknown time zone {value.get('tz')!r}.") from None
    try:
        parsed = datetime.fromisoformat(value["dt"])
    except ValueError:
        raise bad(f"Schedule {where}: invalid date {value['dt']!r}.") from None
    try:
        zoned = parsed.astimezone(zone) if parsed.tzinfo is not None else localize(parsed, zone, 1)
        zoned.astimezone(UTC)  # computations go through UTC: the time must lie in years 1 to 9999 there too
    except OverflowError:
        raise bad(f"Schedule {where}: date {value['dt']!r} in {zone.key} is out of range.") from None
    return zoned
