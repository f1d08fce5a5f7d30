"""The next events of a schedule: clocks merged in time order, duplicates dropped, filtered, adjusted."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC as datetime_utc
from datetime import datetime
from typing import Any

from croniter import CroniterBadDateError

from server.errors import ApiError
from server.schedules.clocks import Clock
from server.schedules.model import Schedule, ScheduledEvent
from server.schedules.wallclock import UTC

# Prefect stops looking after this many candidates, however few passed the filters.
MAX_CANDIDATES = 10_000


@dataclass(frozen=True)
class _Candidate:
    """Ordered by time only and equal when time, parameters and labels are: Prefect's ClockEvent."""

    start_time: datetime
    parameter_defaults: dict[str, Any]
    labels: list[str] | None

    def __lt__(self, other: _Candidate) -> bool:
        return self.start_time < other.start_time

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Candidate)
            and self.start_time == other.start_time
            and self.parameter_defaults == other.parameter_defaults
            and self.labels == other.labels
        )

    __hash__ = None  # type: ignore[assignment]


def _clock_candidates(clock: Clock, after: datetime) -> Iterator[_Candidate]:
    options = clock.options
    for moment in clock.times(after):
        yield _Candidate(moment, options.parameter_defaults, options.labels)


def _unique(schedule: Schedule, after: datetime) -> Iterator[_Candidate]:
    """Merged in time order; an event equal to the one just before it is dropped (Prefect's groupby)."""
    merged = heapq.merge(*(_clock_candidates(clock, after) for clock in schedule.clocks))
    for _, group in itertools.groupby(merged):
        yield next(group)


def next_events(
    schedule: Schedule, after: datetime, n: int, until: datetime | None = None
) -> list[ScheduledEvent]:
    """At most n events after `after` (aware; naive means UTC), none later than `until`.

    A schedule that cannot be computed (a cron day no month has, a time outside the years datetime holds)
    raises a BAD_USER_INPUT `ApiError` saying so, never another exception."""
    if n <= 0:
        return []
    try:
        return _next_events(schedule, _as_utc(after), n, None if until is None else _as_utc(until))
    except CroniterBadDateError:
        raise _bad("a cron clock matches no date (for example a day that its month never has)") from None
    except OverflowError:
        raise _bad("its next event falls outside the years 1 to 9999") from None
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _next_events(
    schedule: Schedule, after: datetime, n: int, until: datetime | None
) -> list[ScheduledEvent]:
    # Without adjustments an event is its candidate's time, and candidates come in time order: once one is
    # past `until`, no later one can qualify (adjustments may move a time back, so then we walk on).
    stop_early = until is not None and not schedule.adjustments
    events: list[ScheduledEvent] = []
    for counter, candidate in enumerate(_unique(schedule, after), start=1):
        if stop_early and until is not None and candidate.start_time > until:
            break
        if schedule.accepts(candidate.start_time):
            start = schedule.adjust(candidate.start_time).astimezone(datetime_utc)
            if until is not None and start > until:
                break
            events.append(ScheduledEvent(start, dict(candidate.parameter_defaults), _copy(candidate.labels)))
        if len(events) == n or counter >= MAX_CANDIDATES:
            break
    return events


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _bad(problem: str) -> ApiError:
    return ApiError(f"Schedule: cannot compute its next events: {problem}.", "BAD_USER_INPUT")


def _copy(labels: list[str] | None) -> list[str] | None:
    return None if labels is None else list(labels)
