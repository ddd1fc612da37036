"""The idempotency window as the audit reads it: its own reading of the settings, and its own
arithmetic (docs/contract.md states the window). The audit judges with it which claims could be
taken, which refused as too old, and which records may have left Redis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from shared.settings import Settings

SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Window:
    length: timedelta
    skew: timedelta  # how far ahead of the clock a claim's occurred_at may be
    kept: timedelta  # how long past the end of its claim's day a claim's records stay in Redis
    now: datetime  # the audit's moment, on the services' clock
    inputs: timedelta = timedelta(days=30)  # every other input topic's window

    @classmethod
    def from_settings(cls, settings: Settings, now: datetime) -> Window:
        length = timedelta(seconds=settings.claim_window_seconds)
        return cls(
            length,
            timedelta(seconds=settings.claim_clock_skew_seconds),
            length + timedelta(seconds=settings.claim_record_grace_seconds),
            now,
            timedelta(seconds=settings.input_window_seconds),
        )

    @property
    def horizon(self) -> timedelta:
        """How far back a record may name an earlier one, or Redis hold what one did: a seen id is
        kept at most two generations (the window and the grace) after it is applied (shared/prelude.lua:
        `remember`), a claim's records to its day's end and `kept` more (a reversal comes within the
        window); a day more for a consumer's lag. A checkpointed audit reads this far before its cut."""
        grace = self.kept - self.length
        return max(2 * (self.inputs + grace), timedelta(days=1) + self.kept + self.skew) + timedelta(days=1)

    @property
    def today(self) -> str:
        """The audit's day in Asia/Shanghai (YYYYMMDD): claim records are kept by day."""
        return self.now.astimezone(SHANGHAI).strftime("%Y%m%d")

    def left_redis(self, occurred_at: datetime) -> bool:
        """Whether the records of a claim that occurred then have left Redis by now: they are kept by
        the claim's day, until the day's claims can no longer come, and `kept - length` longer."""
        midnight = occurred_at.astimezone(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight + timedelta(days=1) + self.kept <= self.now
