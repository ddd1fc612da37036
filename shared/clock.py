"""The injectable clock. Business days and months are Asia/Shanghai, whatever the host's zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Clock(Protocol):
    def now(self) -> datetime: ...

    def redis_ms(self, duration: timedelta) -> int:
        """How many milliseconds of Redis's own clock `duration` of this clock lasts: what an expiry
        written now is given."""
        ...


def _milliseconds(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(SHANGHAI)

    def redis_ms(self, duration: timedelta) -> int:
        return _milliseconds(duration)


@dataclass
class FixedClock:
    """A clock that stands still until moved: for tests and for replaying a given moment."""

    at: datetime

    def now(self) -> datetime:
        return self.at.astimezone(SHANGHAI)

    def set(self, at: datetime) -> None:
        self.at = at

    def redis_ms(self, duration: timedelta) -> int:
        """Real time: a record expires that long after it is written, however the clock is moved
        (moved forward, a record outlives the window it was kept for, never the reverse)."""
        return _milliseconds(duration)


def clock_from_setting(clock_fixed_at: str) -> Clock:
    return FixedClock(datetime.fromisoformat(clock_fixed_at)) if clock_fixed_at else SystemClock()


def shanghai_day(moment: datetime) -> str:
    """The calendar day in China Standard Time, as YYYYMMDD (the daily-limit counter key)."""
    return moment.astimezone(SHANGHAI).strftime("%Y%m%d")


def shanghai_minute(moment: datetime) -> str:
    """The minute in China Standard Time, as YYYY-MM-DDTHH:MM (statistics, a province's claim counts)."""
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M")


def shanghai_month(moment: datetime) -> str:
    """The clearing month in China Standard Time, as YYYY-MM."""
    return moment.astimezone(SHANGHAI).strftime("%Y-%m")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).isoformat(timespec="milliseconds")
