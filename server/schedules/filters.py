"""Prefect 1.4.1's schedule filters and adjustments, rebuilt from their serialized function references.

The client serializes each one as `{"fn": "<qualified name>", "kwargs": {...}}`; datetimes, times and
timedeltas in kwargs are strings with a `//datetime:`, `//time:` or `//timedelta:` prefix. Each filter here
looks at the event's wall time in its clock's zone, as Prefect's do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, time, timedelta
from typing import Any

from server.errors import ApiError
from server.schedules.wallclock import UTC, add_absolute, add_wall

Filter = Callable[[datetime], bool]
Adjustment = Callable[[datetime], datetime]

_FILTERS = "prefect.schedules.filters."
_ADJUSTMENTS = "prefect.schedules.adjustments."


def _on_datetime(dt: datetime) -> Filter:
    return lambda value: value == dt


def _between_datetimes(start: datetime, end: datetime) -> Filter:
    return lambda value: start <= value <= end


def _on_date(month: int, day: int) -> Filter:
    return lambda value: (value.month, value.day) == (month, day)


def _between_dates(start_month: int, start_day: int, end_month: int, end_day: int) -> Filter:
    first, last = (start_month, start_day), (end_month, end_day)
    if start_month <= end_month:
        return lambda value: first <= (value.month, value.day) <= last
    return lambda value: (value.month, value.day) >= first or (value.month, value.day) <= last


def _at_time(t: time) -> Filter:
    return lambda value: value.time() == t


def _between_times(start: time, end: time) -> Filter:
    if start <= end:
        return lambda value: start <= value.time() <= end
    return lambda value: value.time() >= start or value.time() <= end


def _is_day_of_week(day_of_week: int) -> Filter:
    """Python's weekday numbering (Monday is 0), which is what Prefect's code compares with."""
    return lambda value: value.weekday() == day_of_week


def _is_weekday(value: datetime) -> bool:
    return value.weekday() < 5


def _is_weekend(value: datetime) -> bool:
    return value.weekday() > 4


def _is_month_end(value: datetime) -> bool:
    return add_wall(value, timedelta(days=1)).month != value.month


def _is_month_start(value: datetime) -> bool:
    return value.day == 1


def _add(interval: timedelta) -> Adjustment:
    """Elapsed time: Prefect adds a plain timedelta, which pendulum counts in seconds."""
    return lambda value: add_absolute(value, interval)


def _next_weekday(value: datetime) -> datetime:
    while not _is_weekday(value):
        value = add_wall(value, timedelta(days=1))
    return value


# name -> (the function when kwargs are empty, or a factory taking the kwargs)
FILTER_FACTORIES: dict[str, Callable[..., Filter]] = {
    "on_datetime": _on_datetime,
    "on_date": _on_date,
    "at_time": _at_time,
    "between_datetimes": _between_datetimes,
    "between_dates": _between_dates,
    "between_times": _between_times,
    "is_day_of_week": _is_day_of_week,
}
PLAIN_FILTERS: dict[str, Filter] = {
    "is_weekday": _is_weekday,
    "is_weekend": _is_weekend,
    "is_month_end": _is_month_end,
    "is_month_start": _is_month_start,
}
ADJUSTMENT_FACTORIES: dict[str, Callable[..., Adjustment]] = {"add": _add}
PLAIN_ADJUSTMENTS: dict[str, Adjustment] = {"next_weekday": _next_weekday}


def _decode(value: Any) -> Any:
    """Undo the client's string encoding of datetimes, times and timedeltas in kwargs."""
    if not isinstance(value, str):
        return value
    if value.startswith("//datetime:"):
        parsed = datetime.fromisoformat(value.removeprefix("//datetime:"))
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if value.startswith("//time:"):
        return time.fromisoformat(value.removeprefix("//time:")).replace(tzinfo=None)
    if value.startswith("//timedelta:"):
        return timedelta(seconds=float(value.removeprefix("//timedelta:")))
    return value


def build_function(
    ref: Any,
    where: str,
    prefix: str,
    plain: Mapping[str, Callable[..., Any]],
    factories: Mapping[str, Callable[..., Any]],
) -> Callable[..., Any]:
    """One serialized reference -> the callable; anything Prefect itself could not rebuild is refused."""
    if not isinstance(ref, Mapping) or not isinstance(ref.get("fn"), str):
        raise ApiError(f"Schedule {where}: expected a function reference, got {ref!r}.", "BAD_USER_INPUT")
    name, kwargs = ref["fn"], ref.get("kwargs") or {}
    short = name.removeprefix(prefix) if name.startswith(prefix) else None
    if short is None or (short not in plain and short not in factories):
        raise ApiError(f"Schedule {where}: unsupported function {name!r}.", "BAD_USER_INPUT")
    if not isinstance(kwargs, Mapping):
        raise ApiError(f"Schedule {where}: kwargs of {name!r} must be an object.", "BAD_USER_INPUT")
    if short in plain and not kwargs:
        return plain[short]
    if short not in factories:
        raise ApiError(f"Schedule {where}: {name!r} takes no arguments.", "BAD_USER_INPUT")
    if not kwargs:
        raise ApiError(f"Schedule {where}: {name!r} needs its arguments.", "BAD_USER_INPUT")
    try:
        decoded = {key: _decode(value) for key, value in kwargs.items()}
    except ValueError as exc:
        raise ApiError(f"Schedule {where}: bad arguments for {name!r}: {exc}.", "BAD_USER_INPUT") from None
    except OverflowError:
        message = f"Schedule {where}: bad arguments for {name!r}: a value is out of range."
        raise ApiError(message, "BAD_USER_INPUT") from None
    factory = factories[short]
    _check_types(factory, decoded, f"Schedule {where}: bad arguments for {name!r}")
    built: Callable[..., Any] = factory(**decoded)
    return built


_TYPES: dict[str, type] = {"int": int, "datetime": datetime, "time": time, "timedelta": timedelta}


def _check_types(factory: Callable[..., Any], kwargs: Mapping[str, Any], message: str) -> None:
    """The kwargs must be exactly the factory's parameters, each of its type (so no filter fails later)."""
    wanted = {key: hint for key, hint in factory.__annotations__.items() if key != "return"}
    if set(kwargs) != set(wanted):
        raise ApiError(f"{message}: expected {sorted(wanted)}, got {sorted(kwargs)}.", "BAD_USER_INPUT")
    for key, value in kwargs.items():
        expected = _TYPES[wanted[key]]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ApiError(f"{message}: {key} must be a {wanted[key]}.", "BAD_USER_INPUT")


def build_filter(ref: Any, where: str) -> Filter:
    return build_function(ref, where, _FILTERS, PLAIN_FILTERS, FILTER_FACTORIES)


def build_adjustment(ref: Any, where: str) -> Adjustment:
    return build_function(ref, where, _ADJUSTMENTS, PLAIN_ADJUSTMENTS, ADJUSTMENT_FACTORIES)
