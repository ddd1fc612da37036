"""Days and months are Asia/Shanghai whatever the host's zone; the clocks a process may run on."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.clock import (
    SHANGHAI,
    FixedClock,
    ScaledClock,
    SystemClock,
    clock_from_settings,
    day_start,
    minute_start,
    shanghai_day,
    shanghai_minute,
    shanghai_month,
)
from shared.settings import Settings


def test_a_shanghai_day_starts_at_16_00_utc() -> None:
    assert shanghai_day(datetime(2026, 3, 1, 15, 59, 59, tzinfo=UTC)) == "20260301"
    assert shanghai_day(datetime(2026, 3, 1, 16, 0, 0, tzinfo=UTC)) == "20260302"


def test_the_month_turns_at_shanghai_midnight() -> None:
    assert shanghai_month(datetime(2026, 3, 31, 15, 59, 59, tzinfo=UTC)) == "2026-03"
    assert shanghai_month(datetime(2026, 3, 31, 16, 0, 0, tzinfo=UTC)) == "2026-04"


def test_days_minutes_and_months_read_as_strftime_writes_them_and_parse_back() -> None:
    moment = datetime(1999, 12, 31, 15, 59, tzinfo=UTC)
    for _ in range(2_000):  # about 2,000 minutes a step apart: days, months, a year and a leap day turn
        local = moment.astimezone(SHANGHAI)
        assert shanghai_day(moment) == local.strftime("%Y%m%d")
        assert shanghai_minute(moment) == local.strftime("%Y-%m-%dT%H:%M")
        assert shanghai_month(moment) == local.strftime("%Y-%m")
        assert minute_start(shanghai_minute(moment)) == local.replace(second=0, microsecond=0)
        assert day_start(shanghai_day(moment)) == day_start(local.strftime("%Y-%m-%d"))
        assert day_start(shanghai_day(moment)) == local.replace(hour=0, minute=0, second=0, microsecond=0)
        moment += timedelta(minutes=1_999)


def test_fixed_clock_moves_only_when_told() -> None:
    clock = FixedClock(datetime.fromisoformat("2026-03-02T10:00:00+08:00"))
    assert clock.now() == clock.now()
    clock.set(clock.now() + timedelta(days=1))
    assert shanghai_day(clock.now()) == "20260303"


ORIGIN = "2026-03-01T00:00:00+08:00"


def test_a_scaled_clock_runs_its_speed_and_its_expiries_last_its_span(monkeypatch) -> None:
    monkeypatch.setattr("time.time", lambda: 1_000_010.0)
    clock = clock_from_settings(Settings(clock_speed=8_640, clock_origin=ORIGIN, clock_real_origin=1_000_000.0))
    assert isinstance(clock, ScaledClock)
    assert clock.now() == datetime.fromisoformat(ORIGIN) + timedelta(days=1)  # ten real seconds: a day
    assert clock.redis_ms(timedelta(days=32)) == 320_000  # a 32-day keep lasts 320 s of Redis's clock


def test_a_scaled_clock_is_refused_incomplete_or_beside_a_fixed_one() -> None:
    for incomplete in (
        {"clock_speed": 2.0},
        {"clock_speed": 2.0, "clock_origin": ORIGIN},
        {"clock_speed": 2.0, "clock_origin": ORIGIN, "clock_real_origin": 1.0, "clock_fixed_at": ORIGIN},
    ):
        with pytest.raises(ValidationError, match="GONGJI_CLOCK_SPEED needs"):
            Settings(**incomplete)


def test_the_default_clock_is_the_systems_and_a_fixed_one_stands_still() -> None:
    assert isinstance(clock_from_settings(Settings()), SystemClock)
    fixed = clock_from_settings(Settings(clock_fixed_at=ORIGIN))
    assert isinstance(fixed, FixedClock) and fixed.now() == datetime.fromisoformat(ORIGIN)
