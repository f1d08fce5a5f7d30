"""The four Prefect 1.4.1 clocks and the candidate times each emits after a moment, as Prefect emits them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from croniter import croniter
from dateutil import rrule

from server.errors import ApiError
from server.schedules.wallclock import (
    UTC,
    add_absolute,
    elapsed_seconds,
    localize,
    pendulum_add,
    standard_localize,
)

# Prefect's IntervalClock counts from here when the clock has no start date.
DEFAULT_INTERVAL_START = datetime(2019, 1, 1, tzinfo=UTC)
# Prefect's CronClock gives up after this many events per call (its "escape hatch").
CRON_MAX_EVENTS = 1000
# An RRuleClock walks its rule from DTSTART: how many past occurrences one call may step over.
RRULE_MAX_SKIPPED = 200_000


@dataclass(frozen=True)
class ClockOptions:
    """What every clock carries besides its rule."""

    start_date: datetime | None = None
    end_date: datetime | None = None
    parameter_defaults: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None


@dataclass(frozen=True)
class IntervalClock:
    interval: timedelta
    options: ClockOptions = ClockOptions()

    def times(self, after: datetime) -> Iterator[datetime]:
        """Start plus whole intervals; a sum with a day part is wall-clock arithmetic (keeps the local hour
        across DST), a sum under a day is elapsed time: pendulum's rule, which Prefect relies on."""
        start = self.options.start_date or DEFAULT_INTERVAL_START
        step = self.interval
        skip: float = elapsed_seconds(after, start) / step.total_seconds()
        if skip < 0:
            skip = 0
        elif int(skip) == skip:
            skip += 1
        else:
            skip = int(skip + 1)
        total = step * skip
        end = self.options.end_date
        while True:
            days = total.days
            candidate = pendulum_add(start, days, total.total_seconds() - days * 86400)
            total += step
            if candidate < after:
                continue
            if end is not None and candidate > end:
                return
            yield candidate


@dataclass(frozen=True)
class CronClock:
    cron: str
    day_or: bool = True
    options: ClockOptions = ClockOptions()

    @property
    def zone(self) -> tzinfo:
        start = self.options.start_date
        return start.tzinfo if start is not None and start.tzinfo is not None else UTC

    def times(self, after: datetime) -> Iterator[datetime]:
        """croniter in the start date's zone; a wall time that repeats fires once (see `_next`)."""
        zone = self.zone
        after = after.astimezone(zone)
        if self.options.start_date is not None:
            after = max(after, add_absolute(self.options.start_date, timedelta(seconds=-1)))
        begin = standard_localize(after.replace(tzinfo=None), zone)
        if begin.microsecond:
            begin = add_absolute(begin, timedelta(seconds=1))
        yield from self._walk(after, begin)

    def _walk(self, after: datetime, begin: datetime) -> Iterator[datetime]:
        cron = croniter(self.cron, begin, day_or=self.day_or)
        seen: set[datetime] = set()
        end = self.options.end_date
        for _ in range(CRON_MAX_EVENTS):
            candidate = self._next(cron)
            stuck, last = 0, False
            while candidate.astimezone(UTC) == after.astimezone(UTC) or candidate in seen:
                candidate = self._next(cron)
                stuck += 1
                if stuck > CRON_MAX_EVENTS:  # never spin forever (Prefect itself can, here)
                    return
                if stuck == 3:  # croniter can loop at odd DST boundaries: restart past the loop
                    after = candidate
                    cron = croniter(self.cron, candidate, day_or=self.day_or)
                    candidate = self._next(cron)
                    last = candidate in seen  # still looping: this event is the clock's last
            if end is not None and candidate > end:
                return
            seen.add(candidate)
            yield candidate
            if last:
                return

    @staticmethod
    def _next(cron: croniter) -> datetime:
        value = cron.get_next(datetime)
        assert isinstance(value, datetime) and value.tzinfo is not None
        # Prefect rebuilds croniter's result from its wall time (pendulum.instance), which takes the later
        # offset of a repeated wall time: so a repeated hour fires once, at its second occurrence.
        return localize(value, value.tzinfo, 1)


@dataclass(frozen=True)
class DatesClock:
    dates: tuple[datetime, ...]
    options: ClockOptions = ClockOptions()

    def times(self, after: datetime) -> Iterator[datetime]:
        yield from (date for date in sorted(self.dates) if date > after)


@dataclass(frozen=True)
class RRuleClock:
    """An iCal recurrence rule (dateutil `rrule` or `rruleset`), rebuilt from Prefect's serialized form."""

    rule: rrule.rrulebase
    options: ClockOptions = ClockOptions()

    def times(self, after: datetime) -> Iterator[datetime]:
        include = False
        start = self.options.start_date
        if start is not None and after < start:
            after, include = start, True
        first = next(iter(self.rule), after)
        if after.tzinfo is not None and first.tzinfo is None:
            after = after.replace(tzinfo=None)
        elif after.tzinfo is None and first.tzinfo is not None:
            after = after.replace(tzinfo=first.tzinfo)
        end = self.options.end_date
        for value in _occurrences_after(self.rule, after, include):
            if end is not None and value > end:
                return
            yield _as_pendulum_instance(value)


def _occurrences_after(rule: rrule.rrulebase, after: datetime, include: bool) -> Iterator[datetime]:
    """dateutil's `xafter`, which walks every occurrence from the rule's start: past a budget we refuse, so
    a frequent rule with an old start (by default 2018-06-20) can not stall each call for minutes."""
    skipped = 0
    occurrences = iter(rule)
    for value in occurrences:
        if value > after or (include and value == after):
            yield value
            yield from occurrences
            return
        skipped += 1
        if skipped > RRULE_MAX_SKIPPED:
            raise ApiError(
                f"Schedule: the RRuleClock rule has too many occurrences between its start and now (over "
                f"{RRULE_MAX_SKIPPED:,}); give it a later DTSTART or a lower frequency.",
                "BAD_USER_INPUT",
            )


def _as_pendulum_instance(value: datetime) -> datetime:
    """pendulum.instance: a naive time is UTC, an aware one keeps its zone (a fixed offset, from JSON)."""
    if value.tzinfo is None:
        return localize(value, UTC, 0)
    if value.tzinfo.tzname(None) == "UTC":
        return value.replace(tzinfo=UTC)
    return value


Clock = IntervalClock | CronClock | DatesClock | RRuleClock
