"""Schedules as Prefect 1.4.1 serializes them -> event times (fast; the Prefect comparison is in
tests/integration/test_schedule_events_prefect.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.errors import ApiError
from server.schedules import Schedule, ScheduledEvent, check_schedule, next_events, parse_schedule

BER, NY = "Europe/Berlin", "America/New_York"


def zoned(text: str, tz: str = "UTC") -> dict[str, str]:
    return {"dt": text, "tz": tz}


def interval(seconds: float, start: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "IntervalClock", "interval": int(seconds * 1_000_000), "start_date": start, **extra}


def cron(expr: str, start: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "CronClock", "cron": expr, "start_date": start, **extra}


def ref(name: str, **kwargs: Any) -> dict[str, Any]:
    kind = "adjustments" if name in {"add", "next_weekday"} else "filters"
    return {"fn": f"prefect.schedules.{kind}.{name}", "kwargs": kwargs}


def schedule(*clocks: dict[str, Any], **parts: Any) -> Schedule:
    parsed = parse_schedule({"clocks": list(clocks), **parts, "__version__": "1.4.1"})
    assert parsed is not None
    return parsed


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def times(sched: Schedule, after: datetime, n: int = 5, until: datetime | None = None) -> list[str]:
    return [e.start_time.strftime("%m-%dT%H:%M") for e in next_events(sched, after, n, until)]


def test_no_schedule_is_none() -> None:
    assert parse_schedule(None) is None


def test_events_are_aware_utc_and_strictly_after() -> None:
    sched = schedule(interval(60, zoned("2021-01-01T00:00:00")))
    events = next_events(sched, utc(2021, 6, 1, 12, 0), 3)
    assert [e.start_time for e in events] == [utc(2021, 6, 1, 12, m) for m in (1, 2, 3)]
    assert all(e.start_time.tzinfo is UTC for e in events)  # datetime.UTC is timezone.utc
    assert events[0] == ScheduledEvent(utc(2021, 6, 1, 12, 1), {}, None)


def test_until_and_n_bound_the_result() -> None:
    sched = schedule(interval(3600, zoned("2021-01-01T00:00:00")))
    assert len(next_events(sched, utc(2021, 1, 1), 100, until=utc(2021, 1, 1, 5))) == 5
    assert next_events(sched, utc(2021, 1, 1), 0) == []


def test_daily_interval_keeps_the_local_hour_across_dst() -> None:
    sched = schedule(interval(86400, zoned("2021-01-01T09:00:00", BER)))
    assert times(sched, utc(2021, 3, 26), 4) == ["03-26T08:00", "03-27T08:00", "03-28T07:00", "03-29T07:00"]


def test_hourly_interval_drops_the_wall_clock_repeat_like_prefect() -> None:
    """Prefect compares same-zone times by wall clock, so 01:00 EST equals 01:00 EDT and is dropped."""
    sched = schedule(interval(3600, zoned("2021-11-06T22:00:00", NY)))
    expected = ["11-07T04:00", "11-07T05:00", "11-07T07:00", "11-07T08:00"]
    assert times(sched, utc(2021, 11, 7, 3), 4) == expected


def test_cron_skipped_and_repeated_hours() -> None:
    skipped = schedule(cron("30 2 * * *", zoned("2021-01-01T00:00:00", BER)))
    assert times(skipped, utc(2021, 3, 26), 3) == ["03-26T01:30", "03-27T01:30", "03-28T01:00"]
    repeated = schedule(cron("30 1 * * *", zoned("2021-01-01T00:00:00", NY)))
    assert times(repeated, utc(2021, 11, 6), 2) == ["11-06T05:30", "11-07T06:30"]


def test_sub_hourly_cron_across_fall_back_terminates() -> None:
    """Prefect 1.4.1 on pendulum 2 spins forever here; we go on past the repeated hour."""
    sched = schedule(cron("*/15 * * * *", zoned("2021-01-01T00:00:00", NY)))
    got = times(sched, utc(2021, 11, 7, 4), 12)
    assert got[:4] == ["11-07T04:15", "11-07T04:30", "11-07T04:45", "11-07T06:00"] and len(got) == 12


def test_cron_day_or() -> None:
    either = schedule(cron("0 12 13 * 5", zoned("2021-01-01T00:00:00")))
    both = schedule(cron("0 12 13 * 5", zoned("2021-01-01T00:00:00"), day_or=False))
    assert times(either, utc(2021, 8, 1), 3) == ["08-06T12:00", "08-13T12:00", "08-20T12:00"]
    assert times(both, utc(2021, 1, 1), 2) == ["08-13T12:00", "05-13T12:00"]


def test_parameter_defaults_labels_and_merging_of_clocks() -> None:
    sched = schedule(
        interval(3600, zoned("2021-01-01T00:00:00"), parameter_defaults={"x": 1}, labels=["a"]),
        cron("0 */2 * * *", parameter_defaults={"x": 1}, labels=["a"]),
        cron("0 */2 * * *", parameter_defaults={"x": 2}),
    )
    events = next_events(sched, utc(2021, 6, 1, 0, 30), 4)
    # Equal times with other parameters are distinct events; equal ones collapse when adjacent. Their order
    # at one instant is heapq's (events are not totally ordered), exactly as in Prefect.
    assert [(e.start_time.hour, e.parameter_defaults, e.labels) for e in events] == [
        (1, {"x": 1}, ["a"]), (2, {"x": 2}, None), (2, {"x": 1}, ["a"]), (3, {"x": 1}, ["a"])
    ]


def test_dates_clock_and_end_date() -> None:
    dates = {"type": "DatesClock", "dates": [zoned("2021-05-01T12:00:00", BER), zoned("2021-01-01T00:00:00")]}
    assert times(schedule(dates), utc(2021, 1, 1)) == ["05-01T10:00"]
    ending = interval(3600, zoned("2021-01-01T00:00:00"), end_date=zoned("2021-01-01T02:00:00"))
    assert times(schedule(ending), utc(2021, 1, 1)) == ["01-01T01:00", "01-01T02:00"]


def test_rrule_clock() -> None:
    rule = {"type": "rrule", "rr": "DTSTART:20210101T090000\nRRULE:FREQ=DAILY;COUNT=3",
            "_dtstart": "2021-01-01T09:00:00+01:00", "_until": None}
    clock = {"type": "RRuleClock", "rrule_obj": rule, "start_date": None, "end_date": None}
    assert times(schedule(clock), utc(2020, 1, 1)) == ["01-01T08:00", "01-02T08:00", "01-03T08:00"]


def test_filters_or_filters_not_filters_and_adjustments() -> None:
    sched = schedule(
        interval(3600, zoned("2021-01-01T00:00:00", BER)),
        filters=[ref("is_weekday")],
        or_filters=[ref("at_time", t="//time:09:00:00"), ref("at_time", t="//time:17:00:00")],
        not_filters=[ref("on_date", month=3, day=30)],
        adjustments=[ref("add", interval="//timedelta:300.0")],
    )
    assert times(sched, utc(2021, 3, 26), 4) == ["03-26T08:05", "03-26T16:05", "03-29T07:05", "03-29T15:05"]


def test_next_weekday_adjustment() -> None:
    sched = schedule(interval(86400, zoned("2021-01-01T10:00:00")), adjustments=[ref("next_weekday")])
    assert times(sched, utc(2021, 1, 1, 12), 3) == ["01-04T10:00", "01-04T10:00", "01-04T10:00"]


@pytest.mark.parametrize(
    ("serialized", "names"),
    [
        ({"clocks": []}, "clocks"),
        ({"clocks": [{"type": "MonthlyClock"}]}, "MonthlyClock"),
        ({"clocks": [interval(30)]}, "one minute"),
        ({"clocks": [cron("61 * * * *")]}, "61 * * * *"),
        ({"clocks": [interval(60, zoned("2021-01-01T00:00:00", "Mars/Base"))]}, "Mars/Base"),
        ({"clocks": [interval(60)], "filters": [{"fn": "mymodule.my_filter", "kwargs": {}}]}, "my_filter"),
        ({"clocks": [interval(60)], "filters": [ref("on_date", month="3", day=1)]}, "month"),
        ({"clocks": [interval(60)], "filters": [ref("between_times")]}, "between_times"),
        ({"clocks": [interval(60)], "adjustments": [ref("is_weekday")]}, "is_weekday"),
        ({"clocks": [{"type": "RRuleClock", "rrule_obj": {"type": "rrule", "rr": "FREQ=SOMETIMES"}}]},
         "FREQ=SOMETIMES"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(serialized: dict[str, Any], names: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_schedule(serialized)
    assert info.value.code == "BAD_USER_INPUT" and names in info.value.message


@settings(max_examples=60, deadline=None)
@given(
    seconds=st.integers(min_value=60, max_value=40 * 86400),
    offset=st.integers(min_value=-10**8, max_value=10**8),
)
def test_utc_interval_events_are_evenly_spaced_after_the_moment(seconds: int, offset: int) -> None:
    start = utc(2021, 1, 1)
    after = start + timedelta(seconds=offset)
    sched = schedule(interval(seconds, zoned("2021-01-01T00:00:00")))
    events = [e.start_time for e in next_events(sched, after, 4)]
    assert len(events) == 4 and events[0] > after and events[0] >= start
    assert {b - a for a, b in zip(events, events[1:], strict=False)} == {timedelta(seconds=seconds)}
    assert (events[0] - start) % timedelta(seconds=seconds) == timedelta(0)


def rrule_clock(text: str, dtstart: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"type": "rrule", "rr": text}
    if dtstart is not None:
        rule["_dtstart"] = dtstart
    return {"type": "RRuleClock", "rrule_obj": rule}


@pytest.mark.parametrize(
    ("serialized", "names"),
    [
        ({"clocks": [{"type": "IntervalClock", "interval": float("nan")}]}, "finite"),
        ({"clocks": [{"type": "IntervalClock", "interval": float("inf")}]}, "finite"),
        ({"clocks": [{"type": "IntervalClock", "interval": 1e300}]}, "100 years"),
        ({"clocks": [interval(101 * 365 * 86400)]}, "100 years"),
        ({"clocks": [interval(60)], "adjustments": [ref("add", interval="//timedelta:1e300")]},
         "out of range"),
        ({"clocks": [{"type": "DatesClock", "dates": [zoned("9999-12-31T23:00:00", NY)]}]}, "out of range"),
        ({"clocks": [interval(60, zoned("0001-01-01T00:00:00", "Asia/Tokyo"))]}, "out of range"),
        ({"clocks": [rrule_clock("RRULE:FREQ=SECONDLY;INTERVAL=60")]}, "SECONDLY"),
        # dateutil would walk minute by minute to the year 9999 looking for a 30th of February.
        ({"clocks": [rrule_clock("RRULE:FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=30")]}, "never fires"),
    ],
)
def test_bad_values_are_refused_when_parsed(serialized: dict[str, Any], names: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_schedule(serialized)
    assert info.value.code == "BAD_USER_INPUT" and names in info.value.message


@pytest.mark.parametrize(
    ("serialized", "names"),
    [
        ({"clocks": [cron("0 0 31 2 *")]}, "matches no date"),
        ({"clocks": [interval(60)], "adjustments": [ref("add", interval="//timedelta:1e12")]}, "9999"),
        ({"clocks": [rrule_clock("RRULE:FREQ=MINUTELY")]}, "too many occurrences between its start and now"),
    ],
)
def test_schedules_that_cannot_be_computed_are_refused_at_registration(
    serialized: dict[str, Any], names: str
) -> None:
    sched = parse_schedule(serialized)  # each parses: only computing shows the problem
    assert sched is not None
    for attempt in (lambda: check_schedule(serialized), lambda: next_events(sched, utc(2021, 1, 1), 3)):
        with pytest.raises(ApiError) as info:
            attempt()
        assert info.value.code == "BAD_USER_INPUT" and names in info.value.message


def test_check_schedule_returns_the_parsed_schedule() -> None:
    assert check_schedule(None) is None
    sched = check_schedule({"clocks": [interval(3600, zoned("2021-01-01T00:00:00"))]})
    assert sched is not None and times(sched, utc(2021, 1, 1), 1) == ["01-01T01:00"]
    # No events left is not an error: Prefect registers such schedules too.
    ended = check_schedule({"clocks": [interval(3600, end_date=zoned("2021-01-01T00:00:00"))]})
    assert ended is not None and next_events(ended, utc(2022, 1, 1), 1) == []


def test_minutely_rrule_with_a_recent_start_is_computed() -> None:
    sched = schedule(rrule_clock("DTSTART:20210101T000000\nRRULE:FREQ=MINUTELY;INTERVAL=5",
                                 "2021-01-01T00:00:00+00:00"))
    assert times(sched, utc(2021, 3, 1, 12, 2), 2) == ["03-01T12:05", "03-01T12:10"]


def test_until_stops_the_walk_when_no_event_passes_the_filters() -> None:
    """Without adjustments, candidates past `until` can not yield an event: the walk stops at the first."""
    looked_at: list[datetime] = []

    def reject(moment: datetime) -> bool:
        looked_at.append(moment)
        return False

    base = schedule(interval(3600, zoned("2021-01-01T00:00:00")))
    rejecting = Schedule(clocks=base.clocks, filters=(reject,))
    assert next_events(rejecting, utc(2021, 1, 1), 10, until=utc(2021, 1, 1, 5)) == []
    assert len(looked_at) == 5
