"""The idempotency windows. Claims': settlement takes a claim only within it, and the wallet keeps a
claim's draw records as long as the claim's own are kept. The other inputs' (enrollment, credits,
spends, kinship, supervision, commands): a service applies one only within it, and keeps its id
(seen ids, two generations per person and topic) at least as long."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Self

from shared.clock import Clock, day_start
from shared.contracts import ReasonCode
from shared.settings import Settings


def _milliseconds(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)


@dataclass(frozen=True)
class Window:
    """An input is taken only while its time (`occurred_at`, a command's `requested_at`) lies within
    `length` before the platform's clock and at most `skew` after it; what recognises it again is
    kept `grace` longer than it can come. A copy after that is too old, whether or not its record is
    left: nothing is applied twice."""

    length: timedelta = timedelta(days=30)
    skew: timedelta = timedelta(minutes=5)
    grace: timedelta = timedelta(days=2)

    too_old: ClassVar[ReasonCode]
    length_setting: ClassVar[str]  # the setting of its length; the skew and the grace are shared

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            timedelta(seconds=getattr(settings, cls.length_setting)),
            timedelta(seconds=settings.claim_clock_skew_seconds),
            timedelta(seconds=settings.claim_record_grace_seconds),
        )

    def __post_init__(self) -> None:
        if self.grace <= self.skew:
            raise ValueError("records must be kept longer past the window than the clock skew")

    def opens(self, now: datetime) -> datetime:
        """The oldest time taken now."""
        return now - self.length

    def refusal(self, occurred_at: datetime, now: datetime) -> ReasonCode | None:
        if occurred_at < self.opens(now):
            return self.too_old
        if occurred_at > now + self.skew:
            return ReasonCode.INVALID_MESSAGE  # not yet: sent again with its true time, it is taken
        return None

    def refused(self, occurred_at: datetime, now: datetime) -> tuple[ReasonCode, str] | None:
        """The refusal of an input at `occurred_at`, with why in words; None if it is within."""
        if (reason := self.refusal(occurred_at, now)) is None:
            return None
        if reason == self.too_old:
            return reason, f"{occurred_at.isoformat()} is older than the idempotency window ({self.length})"
        return reason, f"{occurred_at.isoformat()} is more than {self.skew} ahead of the platform's clock"


@dataclass(frozen=True)
class InputWindow(Window):
    """The window of every input topic but claims (docs/contract.md). Its ids are kept in two
    generations per person and topic (shared/prelude.lua: `remember`): the current one becomes the
    earlier one once a generation old, and the earlier one is dropped then, so an id is recognised
    for at least a generation after it is applied, longer than any copy the window lets in."""

    too_old: ClassVar[ReasonCode] = ReasonCode.INPUT_TOO_OLD
    length_setting: ClassVar[str] = "input_window_seconds"

    @property
    def generation(self) -> timedelta:
        return self.length + self.grace

    def seen_ids(self, clock: Clock, refused: tuple[ReasonCode, str] | None = None) -> SeenIds:
        """How an input's id is kept now; `refused`: why the input is outside its window, if it is
        (it is then refused in the step, unless its id is remembered: an input applied and
        delivered again late gets its stored answer)."""
        return SeenIds(
            seen_generation_ms=_milliseconds(self.generation),
            now_ms=_milliseconds(clock.now() - EPOCH),
            seen_kept_ms=clock.redis_ms(self.generation),
            outside_window=refused[0] if refused else "",
        )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SEEN_KEYS = ("seen_key", "earlier_seen_key")
SEEN_ARGS = ("seen_generation_ms", "now_ms", "seen_kept_ms", "outside_window")


@dataclass(frozen=True)
class SeenIds:
    """How an input's id is looked up and kept now (the keys and arguments SEEN_KEYS and SEEN_ARGS
    of every function that applies an input): `seen_generation_ms` on the services' clock, `now_ms` that
    clock's time, `seen_kept_ms` a generation in Redis's own time (each key's expiry)."""

    seen_generation_ms: int
    now_ms: int
    seen_kept_ms: int
    outside_window: str = ""  # the reason an input outside its window is refused for, if it is

    @staticmethod
    def keys_of(seen_key: str) -> tuple[str, str]:
        """The current generation's key and the earlier one's."""
        return seen_key, f"{seen_key}:earlier"

    def of(self, seen_key: str) -> dict[str, str | int]:
        """The keys and arguments for the seen ids under `seen_key` (`…:seen:<topic>`)."""
        return {**dict(zip(SEEN_KEYS, self.keys_of(seen_key), strict=True)), **asdict(self)}


@dataclass(frozen=True)
class ClaimWindow(Window):
    """The claims' window. What recognises a claim again is kept by the Asia/Shanghai day its claim
    occurred: a claim of day D can come until D's end + `length`, and the day's records are kept
    `grace` longer."""

    too_old: ClassVar[ReasonCode] = ReasonCode.CLAIM_TOO_OLD
    length_setting: ClassVar[str] = "claim_window_seconds"

    def kept_until(self, day: str) -> datetime:
        """When the records of claims that occurred on `day` (YYYYMMDD, Asia/Shanghai) may go."""
        return day_start(day) + timedelta(days=1) + self.length + self.grace

    def kept_ms(self, day: str, clock: Clock) -> int:
        """How long from now, in Redis's own time, the records of `day`'s claims are kept (at least a
        millisecond: a day written to is one whose claims can still come)."""
        return max(1, clock.redis_ms(self.kept_until(day) - clock.now()))

    def answers_kept_until(self, day: str) -> datetime:
        """Until when a result of `day` (YYYY-MM-DD) may be published again: only while its claim is
        held (at most until its day's records go), or for a draw answered again late, up to the
        clock skew after. The statistics keep the ids they counted at least that long."""
        return self.kept_until(day.replace("-", "")) + self.skew

    def held(self, day: str, now: datetime) -> bool:
        """Whether the records of `day`'s claims are surely still in Redis: half the grace is left
        before they may go (a margin for the clocks of the services and of Redis)."""
        return now < self.kept_until(day) - self.grace / 2
