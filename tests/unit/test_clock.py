"""Days and months are Asia/Shanghai whatever the host's zone."""

from datetime import UTC, datetime, timedelta

from shared.clock import FixedClock, shanghai_day, shanghai_month


def test_a_shanghai_day_starts_at_16_00_utc() -> None:
    assert shanghai_day(datetime(2026, 3, 1, 15, 59, 59, tzinfo=UTC)) == "20260301"
    assert shanghai_day(datetime(2026, 3, 1, 16, 0, 0, tzinfo=UTC)) == "20260302"


def test_the_month_turns_at_shanghai_midnight() -> None:
    assert shanghai_month(datetime(2026, 3, 31, 15, 59, 59, tzinfo=UTC)) == "2026-03"
    assert shanghai_month(datetime(2026, 3, 31, 16, 0, 0, tzinfo=UTC)) == "2026-04"


def test_fixed_clock_moves_only_when_told() -> None:
    clock = FixedClock(datetime.fromisoformat("2026-03-02T10:00:00+08:00"))
    assert clock.now() == clock.now()
    clock.set(clock.now() + timedelta(days=1))
    assert shanghai_day(clock.now()) == "20260303"
