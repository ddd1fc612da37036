"""The injectable clock. Business days and months are Asia/Shanghai, whatever the host's zone."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from shared.settings import Settings

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


@dataclass(frozen=True)
class ScaledClock:
    """A clock that runs `speed` times faster than real time from `origin` (then) on: `gongji soak`
    lives through weeks in minutes. Every process given the same three values tells the same time,
    and Redis's expiries, on Redis's real clock, last the same span of this clock."""

    origin: datetime
    real_origin: float  # Unix time at which this clock read `origin`
    speed: float

    def now(self) -> datetime:
        return (self.origin + timedelta(seconds=(time.time() - self.real_origin) * self.speed)).astimezone(SHANGHAI)

    def redis_ms(self, duration: timedelta) -> int:
        return max(1, int(_milliseconds(duration) / self.speed))


def clock_from_settings(settings: Settings) -> Clock:
    """A fixed clock (`GONGJI_CLOCK_FIXED_AT`), a scaled one (`GONGJI_CLOCK_SPEED` with
    `GONGJI_CLOCK_ORIGIN` and `GONGJI_CLOCK_REAL_ORIGIN`), else the system's."""
    if settings.clock_fixed_at:
        return FixedClock(datetime.fromisoformat(settings.clock_fixed_at))
    if settings.clock_speed != 1.0:
        return ScaledClock(
            datetime.fromisoformat(settings.clock_origin), settings.clock_real_origin, settings.clock_speed
        )
    return SystemClock()


# The days, minutes and months below run several times for every claim: they are formatted with
# f-strings (strftime costs twice as much) and parsed once per distinct value (strptime, 12 µs).


def shanghai_day(moment: datetime) -> str:
    """The calendar day in China Standard Time, as YYYYMMDD (the daily-limit counter key)."""
    local = moment.astimezone(SHANGHAI)
    return f"{local.year:04d}{local.month:02d}{local.day:02d}"


def shanghai_minute(moment: datetime) -> str:
    """The minute in China Standard Time, as YYYY-MM-DDTHH:MM (statistics, a province's claim counts)."""
    local = moment.astimezone(SHANGHAI)
    return f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:{local.minute:02d}"


@functools.lru_cache(maxsize=1024)
def minute_start(minute: str) -> datetime:
    """When a minute (YYYY-MM-DDTHH:MM, China Standard Time) begins."""
    return datetime.strptime(minute, "%Y-%m-%dT%H:%M").replace(tzinfo=SHANGHAI)


@functools.lru_cache(maxsize=1024)
def day_start(day: str) -> datetime:
    """When a day (YYYY-MM-DD, or YYYYMMDD as counter keys name it; China Standard Time) begins."""
    return datetime.strptime(day, "%Y-%m-%d" if "-" in day else "%Y%m%d").replace(tzinfo=SHANGHAI)


def shanghai_month(moment: datetime) -> str:
    """The clearing month in China Standard Time, as YYYY-MM."""
    local = moment.astimezone(SHANGHAI)
    return f"{local.year:04d}-{local.month:02d}"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).isoformat(timespec="milliseconds")
