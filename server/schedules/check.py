"""Registration's gate: a schedule is accepted only if it parses and its next event can be computed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from server.schedules.events import next_events
from server.schedules.model import Schedule
from server.schedules.parse import parse_schedule


def check_schedule(serialized: Mapping[str, Any] | None) -> Schedule | None:
    """`parse_schedule`, then one event after now: what only shows when computing (a cron date that never
    comes, a time past year 9999, too many rule occurrences to skip) is refused now, with a BAD_USER_INPUT
    `ApiError`, instead of failing in the scheduler later. A schedule with no events left is accepted."""
    schedule = parse_schedule(serialized)
    if schedule is not None:
        next_events(schedule, datetime.now(UTC), 1)
    return schedule
