"""The settlement service's Redis state (prefix `stl:`); only this service reads or writes it."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from services.settlement.domain import Enrolled
from services.settlement.statistics import Counted
from shared.clock import Clock, shanghai_day, shanghai_minute
from shared.contracts import Claim
from shared.records import ClaimRecord, ClaimResult, Recorded
from shared.redis_functions import Call, Command, Library, Result, Step, execute, run_steps, send_all
from shared.settings import Settings
from shared.window import SEEN_ARGS, SEEN_KEYS, SeenIds

LIBRARY = Library("gongji_settlement", Path(__file__).with_name("settlement.lua"))

REGISTER_CLAIM = LIBRARY.declare("settlement_register_claim", keys=("owner_key",), args=("owner", "kept_ms"))
ACCEPT = LIBRARY.declare(
    "settlement_accept",
    keys=("claims_key", "day_counts_key", "minute_counts_key"),
    args=(
        "claim_id",
        "encoded",
        "per_recipient_day",
        "per_shard_minute",
        "day_counts_kept_ms",
        "minute_counts_kept_ms",
        "refusal",
        "kept_ms",
    ),
    result=ClaimRecord,
)
FINISH = LIBRARY.declare(
    "settlement_finish",
    keys=("claims_key", "closed_key"),
    args=("claim_id", "result", "month", "shard_prefix", "recipient", "asked", "kept_ms"),
    result=ClaimRecord,
)
REVERSE = LIBRARY.declare(
    "settlement_reverse",
    keys=("claims_key", "original_claims_key", "closed_key", "day_counts_key", "minute_counts_key"),
    args=(
        "reversal_id",
        "encoded",
        "original_id",
        "month",
        "shard_prefix",
        "now",
        "owner",
        "province",
        "per_recipient_day",
        "per_shard_minute",
        "day_counts_kept_ms",
        "minute_counts_kept_ms",
        "window_opens",
        "kept_ms",
        "original_kept_ms",
    ),
    result=ClaimRecord,
)
CLOSE_MONTH = LIBRARY.declare("settlement_close_month", keys=("closed_key", "clearing_key"), args=("month", "now"))
RECORD_ENROLLMENT = LIBRARY.declare(
    "settlement_record_enrollment",
    keys=(*SEEN_KEYS, "enrollment_key"),
    args=("input_id", "fingerprint", *SEEN_ARGS, "insurance_type", "region", "status"),
    result=Recorded,
)
COUNT = LIBRARY.declare(
    "settlement_count",
    keys=("counted_key", "minute_key", "day_key", "dirty_key"),
    args=("event_id", "minute", "day", "counted_kept_ms", "minute_kept_ms", "day_kept_ms", "added"),
    result=Recorded,
)
# A dirty hash's field that holds its sequence of marks (settlement.lua: MARKS), not a mark.
MARKS = "#"
PUBLISHED = LIBRARY.declare("settlement_published", keys=("dirty_key",), args=("name", "mark"))
PREFIX = "stl:"


def _person_key(person_id: str, part: str) -> str:
    return f"{PREFIX}{{p:{person_id}}}:{part}"


@dataclass(frozen=True)
class ClaimLimits:
    """What one province may send on its own topic (shared/settings.py says why these figures)."""

    per_recipient_per_day: int
    province_per_minute: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ClaimLimits:
        return cls(settings.claims_per_recipient_per_day, settings.province_claims_per_minute)


@dataclass(frozen=True)
class Counting:
    """Where a province's claims are counted now (its Asia/Shanghai day and minute), and how long,
    in Redis's time, each count is kept: two of its days, two of its minutes."""

    day: str
    minute: str
    day_kept_ms: int
    minute_kept_ms: int

    @classmethod
    def at(cls, now: datetime, clock: Clock) -> Counting:
        return cls(
            shanghai_day(now),
            shanghai_minute(now),
            clock.redis_ms(timedelta(days=2)),
            clock.redis_ms(timedelta(minutes=2)),
        )


@dataclass(frozen=True)
class ClaimFacts:
    """What a claim's step needs to know first, read for a whole batch in one round trip."""

    owner: ClaimOwner  # whom its claim id is registered to: the first claim to use the id
    recipient: Enrolled | None = None  # a settle claim's recipient, None if never enrolled
    reverses_owner: ClaimOwner | None = None  # a reversal: whom the reversed id is registered to (None: unknown)


@dataclass(frozen=True)
class ClaimOwner:
    """A claim id's registered owner: the recipient, and the day (YYYYMMDD, Asia/Shanghai) its claim
    occurred, which names the bucket its record is kept in."""

    recipient_id: str
    day: str

    def stored(self) -> str:
        return f"{self.recipient_id}|{self.day}"

    @classmethod
    def read(cls, stored: bytes | None) -> ClaimOwner | None:
        if stored is None:
            return None
        recipient_id, day = stored.decode().split("|")
        return cls(recipient_id, day)


class SettlementStore:
    def __init__(self, redis: Redis, shards: int) -> None:
        self.redis = redis
        self.shards = shards

    async def load(self) -> None:
        await LIBRARY.load(self.redis)

    async def ready(self) -> None:
        await LIBRARY.require_loaded(self.redis)

    def shard_prefix(self, recipient_id: str) -> str:
        """A recipient's claims, reversals and their clearing share one shard (one hash slot)."""
        return f"{PREFIX}{{s{zlib.crc32(recipient_id.encode()) % self.shards}}}"

    def all_shard_prefixes(self) -> list[str]:
        return [f"{PREFIX}{{s{shard}}}" for shard in range(self.shards)]

    def _owner_key(self, claim_id: str) -> str:
        """The registry of claim ids is sharded by the claim id: ids are national, not per recipient."""
        return f"{PREFIX}{{c{zlib.crc32(claim_id.encode()) % self.shards}}}:owner:{claim_id}"

    def claims_key(self, recipient_id: str, day: str) -> str:
        """The bucket of a recipient's claims that occurred on `day`: kept as long as they can come."""
        return f"{self.shard_prefix(recipient_id)}:claims:{day}"

    async def claim_facts(self, claims: Sequence[tuple[Claim, ClaimOwner, int]]) -> list[ClaimFacts]:
        """In one pipeline, in batch order: registers each claim id to its owner unless another owns
        it already (for the milliseconds given: as long as its bucket), reads a settle claim's
        recipient (this service's enrollment copy) and a reversal's original owner. Each step
        touches one hash slot."""
        commands: list[Command] = []
        for claim, owner, kept_ms in claims:
            commands.append(
                REGISTER_CLAIM.call(
                    owner_key=self._owner_key(claim.claim_id), owner=owner.stored(), kept_ms=kept_ms
                ).command
            )
            if claim.kind == "settle":
                enrollment = _person_key(claim.recipient_id, "enrollment")
                commands.append(("HMGET", enrollment, "insurance_type", "region", "status"))
            else:
                commands.append(("GET", self._owner_key(claim.reverses)))
        replies = await send_all(self.redis, commands)
        facts = []
        for (claim, _, _), stored, read in zip(claims, replies[::2], replies[1::2], strict=True):
            owner = ClaimOwner.read(stored)
            assert owner is not None  # registered in the same pipeline
            if claim.kind == "settle":
                enrolled = Enrolled(*(field.decode() for field in read)) if read[1] else None
                facts.append(ClaimFacts(owner, recipient=enrolled))
            else:
                facts.append(ClaimFacts(owner, reverses_owner=ClaimOwner.read(read)))
        return facts

    def accept(
        self,
        owner: ClaimOwner,
        claim_id: str,
        record: ClaimRecord,
        limits: ClaimLimits,
        counting: Counting,
        refusal: ClaimResult,
        kept_ms: int,
    ) -> Call[ClaimRecord]:
        """Records a new claim in its bucket, kept `kept_ms` (pending, or final if refused: `refusal` is
        its result when its province is beyond `limits` in the day or minute of `counting`), or
        answers a redelivery or a conflict."""
        prefix = self.shard_prefix(owner.recipient_id)
        return ACCEPT.call(
            claims_key=self.claims_key(owner.recipient_id, owner.day),
            **self._counts(prefix, record.province, counting, limits),
            claim_id=claim_id,
            encoded=json.dumps(record.stored()),
            refusal=json.dumps(_stored(refusal)),
            kept_ms=kept_ms,
        )

    def _counts(self, prefix: str, province: str, counting: Counting, limits: ClaimLimits) -> dict[str, Any]:
        """Where a province's claims are counted in one shard (per recipient for the day, per minute),
        and the bounds as one shard applies them: a province's minute is shared by the shards."""
        return {
            "day_counts_key": f"{prefix}:limits:{counting.day}:{province}",
            "minute_counts_key": f"{prefix}:limits:{counting.minute}",
            "per_recipient_day": limits.per_recipient_per_day,
            "per_shard_minute": -(-limits.province_per_minute // self.shards),  # rounded up
            "day_counts_kept_ms": counting.day_kept_ms,
            "minute_counts_kept_ms": counting.minute_kept_ms,
        }

    def finish(
        self, owner: ClaimOwner, claim_id: str, asked_fen: int, result: ClaimResult, month: str, kept_ms: int
    ) -> Call[ClaimRecord]:
        """Completes a pending claim with the wallet's answer and adds its clearing amounts, once;
        refuses an answer for no claim, or not for this recipient and amount asked."""
        recipient_id = owner.recipient_id
        prefix = self.shard_prefix(recipient_id)
        return FINISH.call(
            claims_key=self.claims_key(recipient_id, owner.day),
            closed_key=f"{prefix}:closed",
            claim_id=claim_id,
            result=json.dumps(_stored(result)),
            month=month,
            shard_prefix=prefix,
            recipient=recipient_id,
            asked=asked_fen,
            kept_ms=kept_ms,
        )

    def reverse(
        self,
        owner: ClaimOwner,
        reversal_id: str,
        record: ClaimRecord,
        original_claim_id: str,
        original_owner: ClaimOwner | None,
        month: str,
        now: str,
        province: str | None,
        limits: ClaimLimits,
        counting: Counting,
        window_opens: str,
        kept_ms: tuple[int, int],
    ) -> Call[ClaimRecord]:
        """Cancels a whole settled claim of the recipient, once, taking its clearing amounts back.
        `original_owner`: whom the registry says the original id belongs to (None if unknown: never
        seen, or gone with its day); `province`: the province whose topic the reversal came on (it
        may reverse only its own care, and its reversals count against `limits` as its claims do);
        `window_opens`: the oldest claim (occurred_at, rfc3339) that may still be reversed;
        `kept_ms`: how long the reversal's bucket and the original's are kept from now."""
        recipient_id = owner.recipient_id
        prefix = self.shard_prefix(recipient_id)
        # The original is looked for among the recipient's claims of the day its owner names.
        original_day = original_owner.day if original_owner else owner.day
        return REVERSE.call(
            claims_key=self.claims_key(recipient_id, owner.day),
            original_claims_key=self.claims_key(recipient_id, original_day),
            closed_key=f"{prefix}:closed",
            **self._counts(prefix, province or "", counting, limits),
            reversal_id=reversal_id,
            encoded=json.dumps(record.stored()),
            original_id=original_claim_id,
            month=month,
            shard_prefix=prefix,
            now=now,
            owner=original_owner.recipient_id if original_owner else "",
            province=province,
            window_opens=window_opens,
            kept_ms=kept_ms[0],
            original_kept_ms=kept_ms[1],
        )

    async def run(self, calls: Sequence[Call[Result]]) -> list[Step[Result]]:
        return await run_steps(self.redis, calls)

    async def close_month(self, shard_prefix: str, month: str, now: str) -> tuple[str, dict[str, int]]:
        """Closes the month in one shard (once: later calls return the same totals): when it was
        closed, and its exact totals."""
        encoded = await CLOSE_MONTH.call(
            closed_key=f"{shard_prefix}:closed", clearing_key=f"{shard_prefix}:clearing:{month}", month=month, now=now
        ).on(self.redis)
        totals = json.loads(encoded)
        closed_at = totals.pop("_closed_at")
        return closed_at, {field: int(value) for field, value in totals.items()}

    def record_enrollment(
        self,
        input_id: str,
        fingerprint: str,
        person_id: str,
        insurance_type: str,
        region: str,
        status: str,
        seen: SeenIds,
    ) -> Call:
        """The enrollment copy, once per input id of gongji.enrollment.v1 (its ids are its own)."""
        return RECORD_ENROLLMENT.call(
            **seen.of(_person_key(person_id, "seen:enrollment")),
            enrollment_key=_person_key(person_id, "enrollment"),
            input_id=input_id,
            fingerprint=fingerprint,
            insurance_type=insurance_type,
            region=region,
            status=status,
        )

    async def claim(self, claim_id: str) -> ClaimRecord | None:
        """A claim's record, found through the registry (None once its day has left Redis)."""
        owner = ClaimOwner.read(await self.redis.get(self._owner_key(claim_id)))
        raw = await self.redis.hget(self.claims_key(owner.recipient_id, owner.day), claim_id) if owner else None
        return ClaimRecord.model_validate_json(raw) if raw else None

    async def all_claims(self) -> AsyncIterator[tuple[str, ClaimRecord]]:
        """Every claim record Redis holds (the days whose claims can still come, and their grace)."""
        async for key in self.redis.scan_iter(match=f"{PREFIX}{{s*}}:claims:*", count=5000):
            async for claim_id, raw in self.redis.hscan_iter(key, count=1000):
                yield claim_id.decode(), ClaimRecord.model_validate_json(raw)

    async def accumulators(self, month: str) -> dict[str, int]:
        """The month's clearing totals summed over all shards, as they stand (closed or not)."""
        totals: dict[str, int] = {}
        for prefix in self.all_shard_prefixes():
            for field, value in (await self.redis.hgetall(f"{prefix}:clearing:{month}")).items():
                totals[field.decode()] = totals.get(field.decode(), 0) + int(value)
        return totals


@dataclass(frozen=True)
class Kept:
    """How long, from now in Redis's time, an event's counted id and the sums it adds to are kept."""

    counted: int
    minute: int
    day: int


class Tallies:
    """The exact statistics (per minute) and reconciliation (per day) in Redis, in `shards` slots
    by event id (`stl:{k<N>}:…`): the ids counted, the sums, and what changed since it was last
    published (`…:dirty`: `minute|<minute>` or `day|<day>` -> a mark, drawn from the shard's sequence)."""

    def __init__(self, redis: Redis, shards: int) -> None:
        self.redis = redis
        self.shards = shards

    def _prefix(self, shard: int) -> str:
        return f"{PREFIX}{{k{shard}}}"

    def count(self, event_id: str, counted: Counted, kept_ms: Kept) -> Call:
        """Counts one event once, however often it is published or read, in the day of its time."""
        prefix = self._prefix(zlib.crc32(event_id.encode()) % self.shards)
        return COUNT.call(
            counted_key=f"{prefix}:counted:{counted.day}",
            minute_key=f"{prefix}:minute:{counted.minute}",
            day_key=f"{prefix}:day:{counted.day}",
            dirty_key=f"{prefix}:dirty",
            event_id=event_id,
            minute=counted.minute,
            day=counted.day,
            counted_kept_ms=kept_ms.counted,
            minute_kept_ms=kept_ms.minute,
            day_kept_ms=kept_ms.day,
            added=json.dumps(
                {
                    "minute": {name: str(amount) for name, amount in counted.minute_fields.items()},
                    "day": {name: str(amount) for name, amount in counted.day_fields.items()},
                }
            ),
        )

    async def changed(self) -> dict[int, dict[str, str]]:
        """What changed since it was last published, by shard: `minute|…`/`day|…` -> its mark."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.shards):
                pipe.hgetall(f"{self._prefix(shard)}:dirty")
            replies = await execute(pipe)
        return {
            shard: {name.decode(): mark.decode() for name, mark in reply.items() if name.decode() != MARKS}
            for shard, reply in enumerate(replies)
            if reply
        }

    async def sums(self, what: str, when: str) -> dict[str, int]:
        """A minute's (`what` = "minute") or a day's ("day") fields summed over the shards."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.shards):
                pipe.hgetall(f"{self._prefix(shard)}:{what}:{when}")
            replies = await execute(pipe)
        totals: dict[str, int] = {}
        for reply in replies:
            for name, value in reply.items():
                totals[name.decode()] = totals.get(name.decode(), 0) + int(value)
        return totals

    async def published(self, marks: Sequence[tuple[int, str, str]]) -> None:
        """(shard, name, mark) published: each mark goes unless another was set since."""
        await send_all(
            self.redis,
            [
                PUBLISHED.call(dirty_key=f"{self._prefix(shard)}:dirty", name=name, mark=mark).command
                for shard, name, mark in marks
            ],
        )


def _stored(result: ClaimResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)
