"""Prefect 1.4.1's serialized `rrule` / `rruleset` -> dateutil objects, rebuilt the way its schema does.

The rule text does not carry a zone, so Prefect stores `_dtstart` / `_until` as ISO times with an offset and
puts them back: after a round trip every occurrence has that fixed offset (no DST). We do the same, because
Prefect Server computes from the round-tripped rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dateutil import rrule

from server.errors import ApiError

_DEFAULT_DTSTART = datetime.fromisoformat("2018-06-20T00:00:00+00:00")  # the schema's load_default
# A rule whose days can never match (BYMONTH=2;BYMONTHDAY=30) makes dateutil walk to the year 9999 at its own
# frequency (seconds for MINUTELY, at every look-up): such a rule is refused, see `_days_ever_match`.


def _bad(where: str, message: str) -> ApiError:
    return ApiError(f"Schedule {where}: {message}", "BAD_USER_INPUT")


def _iso(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise _bad(where, f"expected an ISO date-time, got {value!r}.")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _bad(where, f"invalid ISO date-time {value!r}.") from None


def _single(raw: Any, where: str) -> rrule.rrule:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("rr"), str):
        raise _bad(where, "expected an rrule with its `rr` text.")
    params: dict[str, Any] = {"dtstart": _DEFAULT_DTSTART}
    if "_dtstart" in raw:
        params["dtstart"] = _iso(raw["_dtstart"], f"{where}._dtstart")
    if "_until" in raw:
        params["until"] = None if raw["_until"] is None else _iso(raw["_until"], f"{where}._until")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            parsed = rrule.rrulestr(raw["rr"])
            if not isinstance(parsed, rrule.rrule):
                raise _bad(where, "the rule text holds more than one rule.")
            if "FREQ=SECONDLY" in str(parsed).upper():
                raise _bad(where, "FREQ=SECONDLY is not supported: events must be at least a minute apart.")
            rule = parsed.replace(**params)
            if not _days_ever_match(rule):
                raise _bad(where, f"the rule {raw['rr']!r} never fires (no day matches all of its BY parts).")
            return rule
    except (ValueError, TypeError, Warning) as exc:
        raise _bad(where, f"invalid rrule {raw['rr']!r}: {exc}") from None


def _days_ever_match(rule: rrule.rrule) -> bool:
    """The same day-level parts walked a year at a time (thousands of steps, not millions): any match?"""
    yearly = rule.replace(freq=rrule.YEARLY, interval=1, count=None, until=None, bysetpos=None,
                          byhour=None, byminute=None, bysecond=None)
    return next(iter(yearly), None) is not None


def _dates(raw: Mapping[str, Any], key: str, where: str) -> list[datetime]:
    values = raw.get(key) or []
    if not isinstance(values, list):
        raise _bad(where, f"`{key}` must be a list.")
    return [_iso(value, f"{where}.{key}[{i}]") for i, value in enumerate(values)]


def _rules(raw: Mapping[str, Any], key: str, where: str) -> list[rrule.rrule]:
    values = raw.get(key) or []
    if not isinstance(values, list):
        raise _bad(where, f"`{key}` must be a list.")
    return [_single(value, f"{where}.{key}[{i}]") for i, value in enumerate(values)]


def build_rrule(raw: Any, where: str) -> rrule.rrulebase:
    """An `rrule` or `rruleset`; its occurrences must all be naive or all aware (else dateutil fails)."""
    where = f"{where}.rrule_obj"
    if not isinstance(raw, Mapping):
        raise _bad(where, "RRuleClock needs `rrule_obj`.")
    if raw.get("type") == "rrule":
        result: rrule.rrulebase = _single(raw, where)
    elif raw.get("type") == "rruleset":
        result = rrule.rruleset()
        for rule in _rules(raw, "_rrule", where):
            result.rrule(rule)
        for date in _dates(raw, "_rdate", where):
            result.rdate(date)
        for rule in _rules(raw, "_exrule", where):
            result.exrule(rule)
        for date in _dates(raw, "_exdate", where):
            result.exdate(date)
    else:
        raise _bad(where, f"unsupported rrule type {raw.get('type')!r}.")
    _check_awareness(result, where)
    return result


def _check_awareness(rule: rrule.rrulebase, where: str) -> None:
    """Mixing naive and aware times makes dateutil (and Prefect) fail at the first comparison."""
    try:
        first = next(iter(rule), None)
        if first is not None:
            rule.after(first)
    except TypeError as exc:
        raise _bad(where, f"mixes naive and timezone-aware times: {exc}") from None
