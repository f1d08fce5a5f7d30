"""Our schedule events equal Prefect 1.4.1's own, for a table of schedules (DST changes included).

Each schedule is built with Prefect's objects, serialized with its schema (the form a flow registers), loaded
back as Prefect Server loads it, and asked for its next events; the serialized form then goes through
`parse_schedule` / `next_events` here. One subprocess computes the whole table.

Prefect 1.4.1 asks for `pendulum>=2.0.4` without an upper bound, but its CronClock fails outright on
pendulum 3 (`pendulum.tz._Timezone` is gone): the Prefect virtualenv pins `pendulum<3`, as Prefect 1.x and
Prefect Server 1.x ran (tests.support.images.PREFECT_REQUIREMENTS).
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from typing import Any

import pytest

from server.schedules import next_events, parse_schedule
from tests.support.prefect_fixtures import PrefectVenv

N = 10

# (id, Python expression building a prefect Schedule, `after` as ISO 8601)
CASES: list[tuple[str, str, str]] = [
    ("interval-1min-utc", "S(C.IntervalClock(td(minutes=1), start_date=dt(2021, 1, 1)))",
     "2021-06-01T12:00:30+00:00"),
    ("interval-150s-utc-no-start", "S(C.IntervalClock(td(seconds=150)))", "2021-06-01T12:00:00+00:00"),
    ("interval-1h-berlin-march-far-start",
     "S(C.IntervalClock(td(hours=1), start_date=dt(2021, 3, 1, 0, 30, tz=BER)))",
     "2021-03-27T22:00:00+00:00"),
    ("interval-1h-berlin-october-far-start",
     "S(C.IntervalClock(td(hours=1), start_date=dt(2021, 3, 1, tz=BER)))", "2021-10-30T22:00:00+00:00"),
    ("interval-1h-newyork-november-near-start",
     "S(C.IntervalClock(td(hours=1), start_date=dt(2021, 11, 6, 22, tz=NY)))", "2021-11-07T03:00:00+00:00"),
    ("interval-20min-newyork-november-near-start",
     "S(C.IntervalClock(td(minutes=20), start_date=dt(2021, 11, 7, 0, 10, tz=NY)))",
     "2021-11-07T05:00:00+00:00"),
    ("interval-3h-newyork-march",
     "S(C.IntervalClock(td(hours=3), start_date=dt(2021, 3, 1, tz=NY)))", "2021-03-13T20:00:00+00:00"),
    ("interval-1d-berlin-march",
     "S(C.IntervalClock(td(days=1), start_date=dt(2021, 1, 1, 9, tz=BER)))", "2021-03-25T00:00:00+00:00"),
    ("interval-1d-newyork-repeated-hour",
     "S(C.IntervalClock(td(days=1), start_date=dt(2021, 1, 1, 1, 30, tz=NY)))", "2021-11-03T00:00:00+00:00"),
    ("interval-1d-berlin-skipped-hour",
     "S(C.IntervalClock(td(days=1), start_date=dt(2021, 1, 1, 2, 30, tz=BER)))", "2021-03-24T00:00:00+00:00"),
    ("interval-36h-berlin",
     "S(C.IntervalClock(td(hours=36), start_date=dt(2021, 3, 1, tz=BER)))", "2021-03-20T00:00:00+00:00"),
    ("interval-1w-newyork",
     "S(C.IntervalClock(td(weeks=1), start_date=dt(2021, 1, 4, 9, tz=NY)))", "2021-02-20T00:00:00+00:00"),
    ("interval-end-date-params-labels",
     "S(C.IntervalClock(td(hours=1), start_date=dt(2021, 1, 1), end_date=dt(2021, 1, 1, 5),"
     " parameter_defaults={'x': 1, 'y': [1, 'a']}, labels=['gpu', 'eu']))", "2021-01-01T00:30:00+00:00"),
    ("cron-hourly-berlin-march",
     "S(C.CronClock('0 * * * *', start_date=dt(2021, 1, 1, tz=BER)))", "2021-03-27T20:00:00+00:00"),
    ("cron-30min-newyork-november",
     "S(C.CronClock('*/30 * * * *', start_date=dt(2021, 1, 1, tz=NY)))", "2021-11-07T03:00:00+00:00"),
    ("cron-berlin-skipped-hour",
     "S(C.CronClock('30 2 * * *', start_date=dt(2021, 1, 1, tz=BER)))", "2021-03-24T00:00:00+00:00"),
    ("cron-newyork-repeated-hour",
     "S(C.CronClock('30 1 * * *', start_date=dt(2021, 1, 1, tz=NY)))", "2021-11-03T00:00:00+00:00"),
    ("cron-berlin-repeated-hour",
     "S(C.CronClock('30 2 * * *', start_date=dt(2021, 1, 1, tz=BER)))", "2021-10-27T00:00:00+00:00"),
    ("cron-day-or-true", "S(C.CronClock('0 12 13 * 5', start_date=dt(2021, 1, 1)))",
     "2021-08-01T00:00:00+00:00"),
    ("cron-day-or-false",
     "S(C.CronClock('0 12 13 * 5', start_date=dt(2021, 1, 1), day_or=False))", "2021-08-01T00:00:00+00:00"),
    ("cron-no-start-weekdays", "S(C.CronClock('15 3 * * 1-5'))", "2021-06-01T00:00:00+00:00"),
    ("cron-future-start-included",
     "S(C.CronClock('0 8 * * *', start_date=dt(2021, 7, 1, 8, tz=BER)))", "2021-06-01T00:00:00+00:00"),
    ("cron-start-with-microseconds",
     "S(C.CronClock('0 * * * *', start_date=dt(2021, 1, 1, 0, 0, 0, 1)))", "2020-12-01T00:00:00+00:00"),
    ("cron-end-date-labels",
     "S(C.CronClock('0 9 * * *', start_date=dt(2021, 1, 1, tz=NY), end_date=dt(2021, 3, 16, tz=NY),"
     " labels=['nightly'], parameter_defaults={'p': 'v'}))", "2021-03-10T00:00:00+00:00"),
    ("dates-clock",
     "S(C.DatesClock([dt(2021, 3, 28, 1, 30, tz=BER), dt(2021, 11, 7, 1, 30, tz=NY), dt(2021, 1, 1),"
     " dt(2021, 5, 5, 5, 5)], parameter_defaults={'d': True}, labels=['once']))",
     "2021-01-01T00:00:00+00:00"),
    ("rrule-daily-berlin",
     "S(C.RRuleClock(rrule.rrule(freq=rrule.DAILY, dtstart=dt(2021, 3, 20, 9, tz=BER), count=30)))",
     "2021-03-25T00:00:00+00:00"),
    ("rrule-naive-every-5h",
     "S(C.RRuleClock(rrule.rrule(freq=rrule.HOURLY, interval=5, dtstart=datetime(2021, 1, 1))))",
     "2021-02-01T00:00:00+00:00"),
    ("rruleset-exdate-rdate",
     "S(C.RRuleClock(rset([rrule.rrule(freq=rrule.WEEKLY, dtstart=dt(2021, 3, 1, 9, tz=BER),"
     " until=dt(2021, 12, 1, tz=BER))], [dt(2021, 3, 30, 9, tz=BER)], [dt(2021, 3, 29, 9, tz=BER)]),"
     " start_date=dt(2021, 3, 2)))", "2021-01-01T00:00:00+00:00"),
    ("several-clocks-duplicates",
     "S([C.IntervalClock(td(hours=1), start_date=dt(2021, 1, 1), parameter_defaults={'x': 1}),"
     " C.CronClock('0 */2 * * *', parameter_defaults={'x': 1}),"
     " C.CronClock('30 */3 * * *', parameter_defaults={'x': 2}, labels=['b'])])",
     "2021-06-01T00:00:00+00:00"),
    ("several-clocks-same-time-other-params",
     "S([C.IntervalClock(td(hours=2), start_date=dt(2021, 1, 1), parameter_defaults={'x': 1}),"
     " C.IntervalClock(td(hours=1), start_date=dt(2021, 1, 1), parameter_defaults={'x': 2}),"
     " C.CronClock('0 */2 * * *', parameter_defaults={'x': 1})])", "2021-06-01T00:00:00+00:00"),
    ("filters-weekday-9-and-17-berlin",
     "S(C.IntervalClock(td(hours=1), start_date=dt(2021, 1, 1, tz=BER)), filters=[F.is_weekday],"
     " or_filters=[F.between_times(time(9), time(9)), F.between_times(time(17), time(17))])",
     "2021-03-25T00:00:00+00:00"),
    ("not-filters-weekend-christmas-window",
     "S(C.IntervalClock(td(days=1), start_date=dt(2021, 1, 1, 6, tz=NY)),"
     " not_filters=[F.is_weekend, F.on_date(12, 24), F.between_dates(12, 27, 1, 3)])",
     "2021-12-20T00:00:00+00:00"),
    ("filters-month-edges-and-weekday",
     "S(C.IntervalClock(td(days=1), start_date=dt(2021, 1, 1, 23, 30, tz=BER)),"
     " or_filters=[F.is_month_end, F.is_month_start, F.is_day_of_week(2)],"
     " filters=[F.between_datetimes(dt(2021, 2, 1), dt(2022, 1, 1))])", "2021-01-15T00:00:00+00:00"),
    ("filters-at-time-on-datetime",
     "S(C.CronClock('*/15 * * * *', start_date=dt(2021, 1, 1, tz=NY)),"
     " or_filters=[F.at_time(time(1, 15)), F.on_datetime(dt(2021, 11, 8, 12))],"
     " not_filters=[F.between_times(time(23), time(0, 30))])", "2021-11-08T00:00:00+00:00"),
    ("adjustments-add-and-next-weekday",
     "S(C.IntervalClock(td(days=1), start_date=dt(2021, 1, 1, 22, tz=BER)),"
     " adjustments=[A.add(td(hours=3)), A.next_weekday])", "2021-03-24T00:00:00+00:00"),
    ("adjustments-with-filters-newyork",
     "S(C.CronClock('0 0 * * *', start_date=dt(2021, 1, 1, tz=NY)), filters=[F.is_weekend],"
     " adjustments=[A.next_weekday, A.add(td(minutes=90))])", "2021-03-01T00:00:00+00:00"),
]

REFERENCE_SCRIPT = r'''
import json, sys
from datetime import datetime, time, timedelta as td
import pendulum
from dateutil import rrule
from prefect.schedules import Schedule, adjustments as A, clocks as C, filters as F
from prefect.serialization.schedule import ScheduleSchema

BER, NY = "Europe/Berlin", "America/New_York"


def dt(*args, tz="UTC"):
    return pendulum.datetime(*args, tz=tz)


def S(clocks, **kwargs):
    return Schedule(clocks=clocks if isinstance(clocks, list) else [clocks], **kwargs)


def rset(rules, rdates, exdates):
    result = rrule.rruleset()
    for rule in rules:
        result.rrule(rule)
    for value in rdates:
        result.rdate(value)
    for value in exdates:
        result.exdate(value)
    return result


def events(schedule, after, n):
    return [
        {"start": e.start_time.in_tz("UTC").isoformat(), "parameter_defaults": e.parameter_defaults,
         "labels": e.labels}
        for e in schedule.next(n, after=after, return_events=True)
    ]


out = {}
for name, code, after, n in json.load(open(sys.argv[1])):
    built = eval(code)
    serialized = json.loads(json.dumps(ScheduleSchema().dump(built)))
    loaded = ScheduleSchema().load(serialized)  # what Prefect Server computes from
    after_dt = pendulum.parse(after)
    out[name] = {"serialized": serialized, "events": events(loaded, after_dt, n),
                 "direct": events(built, after_dt, n)}
out["pendulum"] = pendulum.__version__
print(json.dumps(out))
'''


def _run(args: list[str], timeout: float = 300) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{args!r} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="module")
def reference(prefect_venv: PrefectVenv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Prefect's serialized form and next events for every case, from one subprocess."""
    folder = tmp_path_factory.mktemp("schedules")
    script, cases = folder / "reference.py", folder / "cases.json"
    script.write_text(REFERENCE_SCRIPT)
    cases.write_text(json.dumps([[name, code, after, N] for name, code, after in CASES]))
    result: dict[str, Any] = json.loads(_run([str(prefect_venv.python), str(script), str(cases)]))
    assert result.pop("pendulum").startswith("2.")
    return result


def _ours(serialized: dict[str, Any], after: str) -> list[dict[str, Any]]:
    schedule = parse_schedule(serialized)
    assert schedule is not None
    return [
        {"start": e.start_time, "parameter_defaults": e.parameter_defaults, "labels": e.labels}
        for e in next_events(schedule, datetime.fromisoformat(after), N)
    ]


def _theirs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "start": datetime.fromisoformat(e["start"])} for e in events]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 24 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "after"), [(name, after) for name, _, after in CASES],
                         ids=[c[0] for c in CASES])
def test_next_events_equal_prefect(reference: dict[str, Any], name: str, after: str) -> None:
    case = reference[name]
    expected = _theirs(case["events"])
    assert expected, "the reference schedule must yield events, else the comparison proves nothing"
    got = _ours(case["serialized"], after)
    assert [e["start"].isoformat() for e in got] == [e["start"].isoformat() for e in expected]
    assert got == expected
    assert all(e["start"].utcoffset() is not None and not e["start"].utcoffset() for e in got)
