"""Prefect 1.x schedules as the 1.4.1 client serializes them, and their event times (like Prefect's own)."""

from __future__ import annotations

from server.schedules.check import check_schedule
from server.schedules.events import next_events
from server.schedules.model import Schedule, ScheduledEvent
from server.schedules.parse import parse_schedule

__all__ = ["Schedule", "ScheduledEvent", "check_schedule", "next_events", "parse_schedule"]
