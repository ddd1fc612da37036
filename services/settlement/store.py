"""The settlement service's Redis state (prefix `stl:`); only this service reads or writes it."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from shared.redis_functions import Call, Step, load_library, run_steps

LIBRARY = Path(__file__).with_name("settlement.lua")
PREFIX = "stl:"


def _person_key(person_id: str, part: str) -> str:
    return f"{PREFIX}{{p:{person_id}}}:{part}"


class SettlementStore:
    def __init__(self, redis: Redis, shards: int) -> None:
        self.redis = redis
        self.shards = shards

    async def load(self) -> None:
        await load_library(self.redis, "gongji_settlement", LIBRARY)

    def shard_prefix(self, recipient_id: str) -> str:
        """A recipient's claims, reversals and their clearing share one shard (one hash slot)."""
        return f"{PREFIX}{{s{zlib.crc32(recipient_id.encode()) % self.shards}}}"

    def all_shard_prefixes(self) -> list[str]:
        return [f"{PREFIX}{{s{shard}}}" for shard in range(self.shards)]

    def accept(self, recipient_id: str, claim_id: str, record: dict) -> Call:
        """Records a new claim (pending, or final if refused), or answers a redelivery or a conflict."""
        return Call("settlement_accept", [f"{self.shard_prefix(recipient_id)}:claims"], [claim_id, json.dumps(record)])

    def finish(self, recipient_id: str, claim_id: str, result: dict, month: str) -> Call:
        """Completes a pending claim with the wallet's answer and adds its clearing amounts, once."""
        prefix = self.shard_prefix(recipient_id)
        return Call("settlement_finish", [f"{prefix}:claims", f"{prefix}:closed"],
                    [claim_id, json.dumps(result), month, prefix])

    def reverse(self, recipient_id: str, reversal_id: str, record: dict, original_claim_id: str, month: str,
                now: str) -> Call:
        """Cancels a whole settled claim, once, taking its clearing amounts back."""
        prefix = self.shard_prefix(recipient_id)
        return Call("settlement_reverse", [f"{prefix}:claims", f"{prefix}:closed"],
                    [reversal_id, json.dumps(record), original_claim_id, month, prefix, now])

    async def run(self, calls: Sequence[Call]) -> list[Step]:
        return await run_steps(self.redis, calls)

    async def close_month(self, shard_prefix: str, month: str, now: str) -> dict:
        """Closes the month in one shard (once: later calls return the same totals), with `_closed_at`."""
        encoded = await self.redis.fcall(
            "settlement_close_month", 2, f"{shard_prefix}:closed", f"{shard_prefix}:clearing:{month}", month, now
        )
        return json.loads(encoded)

    def record_enrollment(self, input_id: str, fingerprint: str, person_id: str, insurance_type: str,
                          region: str, status: str) -> Call:
        return Call("settlement_record_enrollment",
                    [_person_key(person_id, "seen"), _person_key(person_id, "enrollment")],
                    [input_id, fingerprint, insurance_type, region, status])

    async def recipients(self, person_ids: Sequence[str]) -> list[tuple[str, str] | None]:
        """(region, status) of each insured person, or None if never enrolled; one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for person_id in person_ids:
                pipe.hmget(_person_key(person_id, "enrollment"), "region", "status")
            replies = await pipe.execute()
        return [(region.decode(), status.decode()) if region else None for region, status in replies]

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
