"""The settlement service's Redis state (prefix `stl:`); only this service reads or writes it."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from services.settlement.domain import Enrolled
from shared.contracts import Claim
from shared.redis_functions import Call, Library, Step, execute, run_steps
from shared.settings import Settings

LIBRARY = Library("gongji_settlement", Path(__file__).with_name("settlement.lua"))
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
class ClaimFacts:
    """What a claim's step needs to know first, read for a whole batch in one round trip."""

    owner: str  # the recipient its claim id is registered to: the first to use the id
    recipient: Enrolled | None = None  # a settle claim's recipient, None if never enrolled
    reverses_owner: str = ""  # a reversal: the recipient the reversed id is registered to, "" if never seen


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

    def _owners_key(self, claim_id: str) -> str:
        """The registry of claim ids is sharded by the claim id: ids are national, not per recipient."""
        return f"{PREFIX}{{c{zlib.crc32(claim_id.encode()) % self.shards}}}:owners"

    async def claim_facts(self, claims: Sequence[Claim]) -> list[ClaimFacts]:
        """In one pipeline, in batch order: registers each claim id to its recipient unless another
        owns it already, reads a settle claim's recipient (this service's enrollment copy) and a
        reversal's original owner. Each step touches one hash slot."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for claim in claims:
                pipe.fcall(LIBRARY.function("settlement_register_claim"), 1, self._owners_key(claim.claim_id),
                           claim.claim_id, claim.recipient_id)
                if claim.kind == "settle":
                    pipe.hmget(_person_key(claim.recipient_id, "enrollment"), "insurance_type", "region", "status")
                else:
                    pipe.hget(self._owners_key(claim.reverses), claim.reverses)
            replies = await execute(pipe)
        facts = []
        for claim, owner, read in zip(claims, replies[::2], replies[1::2], strict=True):
            if claim.kind == "settle":
                enrolled = Enrolled(*(field.decode() for field in read)) if read[1] else None
                facts.append(ClaimFacts(owner.decode(), recipient=enrolled))
            else:
                facts.append(ClaimFacts(owner.decode(), reverses_owner=read.decode() if read else ""))
        return facts

    def accept(self, recipient_id: str, claim_id: str, record: dict, limits: ClaimLimits, day: str, minute: str,
               refusal: dict) -> Call:
        """Records a new claim (pending, or final if refused: `refusal` is its result when its province
        is beyond `limits` on this `day` or in this `minute`), or answers a redelivery or a conflict."""
        prefix = self.shard_prefix(recipient_id)
        return Call(LIBRARY.function("settlement_accept"),
                    [f"{prefix}:claims", *self._count_keys(prefix, record["province"], day, minute)],
                    [claim_id, json.dumps(record), *self._bounds(limits), json.dumps(refusal)])

    @staticmethod
    def _count_keys(prefix: str, province: str, day: str, minute: str) -> list[str]:
        """Where a province's claims are counted in one shard: per recipient for the day, per minute."""
        return [f"{prefix}:limits:{day}:{province}", f"{prefix}:limits:{minute}"]

    def _bounds(self, limits: ClaimLimits) -> list[int]:
        """The bounds as one shard applies them: a province's minute is shared by the shards."""
        return [limits.per_recipient_per_day, -(-limits.province_per_minute // self.shards)]  # rounded up

    def finish(self, recipient_id: str, claim_id: str, asked_fen: int, result: dict, month: str) -> Call:
        """Completes a pending claim with the wallet's answer and adds its clearing amounts, once;
        refuses an answer for no claim, or not for this recipient and amount asked."""
        prefix = self.shard_prefix(recipient_id)
        return Call(LIBRARY.function("settlement_finish"), [f"{prefix}:claims", f"{prefix}:closed"],
                    [claim_id, json.dumps(result), month, prefix, recipient_id, asked_fen])

    def reverse(self, recipient_id: str, reversal_id: str, record: dict, original_claim_id: str, month: str,
                now: str, original_owner: str, province: str | None, limits: ClaimLimits, day: str,
                minute: str) -> Call:
        """Cancels a whole settled claim of the recipient, once, taking its clearing amounts back.
        `original_owner`: whom the registry says the original id belongs to ("" if never seen);
        `province`: the province whose topic the reversal came on (it may reverse only its own care,
        and its reversals count against `limits` as its claims do)."""
        prefix = self.shard_prefix(recipient_id)
        return Call(LIBRARY.function("settlement_reverse"),
                    [f"{prefix}:claims", f"{prefix}:closed", *self._count_keys(prefix, province or "", day, minute)],
                    [reversal_id, json.dumps(record), original_claim_id, month, prefix, now, original_owner,
                     province or "", *self._bounds(limits)])

    async def run(self, calls: Sequence[Call]) -> list[Step]:
        return await run_steps(self.redis, calls)

    async def close_month(self, shard_prefix: str, month: str, now: str) -> tuple[str, dict[str, int]]:
        """Closes the month in one shard (once: later calls return the same totals): when it was
        closed, and its exact totals."""
        encoded = await self.redis.fcall(
            LIBRARY.function("settlement_close_month"), 2, f"{shard_prefix}:closed", f"{shard_prefix}:clearing:{month}",
            month, now,
        )
        totals = json.loads(encoded)
        closed_at = totals.pop("_closed_at")
        return closed_at, {field: int(value) for field, value in totals.items()}

    def record_enrollment(self, input_id: str, fingerprint: str, person_id: str, insurance_type: str,
                          region: str, status: str) -> Call:
        """The enrollment copy, once per input id of gongji.enrollment.v1 (its ids are its own)."""
        return Call(LIBRARY.function("settlement_record_enrollment"),
                    [_person_key(person_id, "seen:enrollment"), _person_key(person_id, "enrollment")],
                    [input_id, fingerprint, insurance_type, region, status])

    async def claim(self, recipient_id: str | None, claim_id: str) -> dict | None:
        prefixes = [self.shard_prefix(recipient_id)] if recipient_id else self.all_shard_prefixes()
        for prefix in prefixes:
            raw = await self.redis.hget(f"{prefix}:claims", claim_id)
            if raw:
                return json.loads(raw)
        return None

    async def all_claims(self):
        for prefix in self.all_shard_prefixes():
            async for claim_id, raw in self.redis.hscan_iter(f"{prefix}:claims", count=1000):
                yield claim_id.decode(), json.loads(raw)

    async def accumulators(self, month: str) -> dict[str, int]:
        """The month's clearing totals summed over all shards, as they stand (closed or not)."""
        totals: dict[str, int] = {}
        for prefix in self.all_shard_prefixes():
            for field, value in (await self.redis.hgetall(f"{prefix}:clearing:{month}")).items():
                totals[field.decode()] = totals.get(field.decode(), 0) + int(value)
        return totals
