"""The idempotency window of claims, shared by settlement (which takes a claim only within it) and
the wallet (which keeps a claim's draw records as long as the claim's own are kept)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.clock import SHANGHAI, Clock
from shared.contracts import ReasonCode
from shared.settings import Settings


@dataclass(frozen=True)
class ClaimWindow:
    """The idempotency window: a claim or reversal is taken only while `occurred_at` lies within
    `length` before the platform's clock and at most `skew` after it. What recognises a claim again
    is kept by the Asia/Shanghai day its claim occurred: a claim of day D can come until D's end +
    `length`, and the day's records are kept `grace` longer. A copy after that is too old, whether
    or not its record is left: no claim is paid twice."""

    length: timedelta = timedelta(days=30)
    skew: timedelta = timedelta(minutes=5)
    grace: timedelta = timedelta(days=2)

    def __post_init__(self) -> None:
        if self.grace <= self.skew:
            raise ValueError("records must be kept longer past the window than the clock skew")

    @classmethod
    def from_settings(cls, settings: Settings) -> ClaimWindow:
        return cls(
            timedelta(seconds=settings.claim_window_seconds),
            timedelta(seconds=settings.claim_clock_skew_seconds),
            timedelta(seconds=settings.claim_record_grace_seconds),
        )

    def kept_until(self, day: str) -> datetime:
        """When the records of claims that occurred on `day` (YYYYMMDD, Asia/Shanghai) may go."""
        day_start = datetime.strptime(day, "%Y%m%d").replace(tzinfo=SHANGHAI)
        return day_start + timedelta(days=1) + self.length + self.grace

    def kept_ms(self, day: str, clock: Clock) -> int:
        """How long from now, in Redis's own time, the records of `day`'s claims are kept (at least a
        millisecond: a day written to is one whose claims can still come)."""
        return max(1, clock.redis_ms(self.kept_until(day) - clock.now()))

    def held(self, day: str, now: datetime) -> bool:
        """Whether the records of `day`'s claims are surely still in Redis: half the grace is left
        before they may go (a margin for the clocks of the services and of Redis)."""
        return now < self.kept_until(day) - self.grace / 2

    def opens(self, now: datetime) -> datetime:
        """The oldest `occurred_at` taken now."""
        return now - self.length

    def refusal(self, occurred_at: datetime, now: datetime) -> ReasonCode | None:
        if occurred_at < self.opens(now):
            return ReasonCode.CLAIM_TOO_OLD
        if occurred_at > now + self.skew:
            return ReasonCode.INVALID_MESSAGE  # not yet: sent again with its true time, it is taken
        return None
