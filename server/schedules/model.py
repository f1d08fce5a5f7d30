"""The parsed schedule: immutable values, so computing events needs no Prefect."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.schedules.clocks import Clock
from server.schedules.filters import Adjustment, Filter


@dataclass(frozen=True)
class ScheduledEvent:
    """One run a schedule asks for: when (aware UTC), with which parameter defaults and labels."""

    start_time: datetime
    parameter_defaults: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None


@dataclass(frozen=True)
class Schedule:
    """Clocks emit candidates; all `filters`, one of `or_filters` (if any) and none of `not_filters` must
    hold; then `adjustments` move the time, in order (Prefect's own pipeline)."""

    clocks: tuple[Clock, ...]
    filters: tuple[Filter, ...] = ()
    or_filters: tuple[Filter, ...] = ()
    not_filters: tuple[Filter, ...] = ()
    adjustments: tuple[Adjustment, ...] = ()

    def accepts(self, moment: datetime) -> bool:
        return (
            all(check(moment) for check in self.filters)
            and (not self.or_filters or any(check(moment) for check in self.or_filters))
            and not any(check(moment) for check in self.not_filters)
        )

    def adjust(self, moment: datetime) -> datetime:
        for adjustment in self.adjustments:
            moment = adjustment(moment)
        return moment
