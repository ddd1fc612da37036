"""The wallet service's Redis state (prefix `wal:`); only this service reads or writes it.
Every key of a person carries the hash tag {p:<person_id>}: one step, one slot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from redis.asyncio import Redis

from services.wallet.domain import AccountSnapshot, GrantLimits
from shared.clock import rfc3339, shanghai_day
from shared.policy import Policy
from shared.redis_functions import Call, Library, Step, call_step, execute, run_steps

LIBRARY = Library("gongji_wallet", Path(__file__).with_name("wallet.lua"))
PREFIX = "wal:"


def _key(person_id: str, part: str) -> str:
    return f"{PREFIX}{{p:{person_id}}}:{part}"


@dataclass(frozen=True)
class DrawPlan:
    """Step 1 of a draw: the stored answer of an earlier draw, or the plan fixed at the first try."""

    answer: dict | None
    recipient_frozen: bool
    providers: list[str]


class WalletStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def load(self) -> None:
        await LIBRARY.load(self.redis)

    async def ready(self) -> None:
        await LIBRARY.require_loaded(self.redis)

    async def credit(self, input_id: str, fingerprint: str, person_id: str, amount_fen: int, now: str) -> Step:
        keys = [_key(person_id, "seen:credits"), _key(person_id, "account")]
        return await call_step(self.redis, LIBRARY.function("wallet_credit"), keys,
                               [input_id, fingerprint, amount_fen, now])

    async def spend(self, input_id: str, fingerprint: str, person_id: str, amount_fen: int, now: str) -> Step:
        keys = [_key(person_id, "seen:spends"), _key(person_id, "account")]
        return await call_step(self.redis, LIBRARY.function("wallet_spend"), keys,
                               [input_id, fingerprint, amount_fen, now])

    async def grant(
        self, input_id: str, fingerprint: str, actor_id: str, provider_id: str, recipient_id: str,
        recipient_region: str, amount_fen: int, refusal: str, limits: GrantLimits, policy: Policy, now: datetime,
    ) -> Step:
        keys = [_key(provider_id, part) for part in ("seen:commands", "account", "grants", "relationships",
                                                      "grants-by-day")]
        return await call_step(self.redis, LIBRARY.function("wallet_grant"), keys, [
            input_id, fingerprint, recipient_id, recipient_region, amount_fen, refusal, limits.max_per_day,
            shanghai_day(now), shanghai_day(now - limits.counters_kept), " ".join(sorted(policy.closed_regions)),
            "1" if policy.cross_province_in_force(now) else "0", rfc3339(now), actor_id, provider_id,
            limits.max_amount_fen,
        ])

    async def index_provider(self, recipient_id: str, provider_id: str, first_grant_ms: int) -> None:
        await self.redis.fcall(LIBRARY.function("wallet_index_provider"), 1, _key(recipient_id, "providers"),
                               provider_id, first_grant_ms)

    async def relationship_changed(
        self, input_id: str, fingerprint: str, event_type: str, provider_id: str, recipient_id: str,
        recipient_region: str, version: int | None, now: str,
    ) -> Step:
        keys = [_key(provider_id, part) for part in ("seen:relationship-events", "account", "grants",
                                                      "relationships", "rel-versions", "rel-since")]
        return await call_step(self.redis, LIBRARY.function("wallet_relationship_changed"), keys, [
            input_id, fingerprint, event_type, recipient_id, recipient_region, "" if version is None else version, now])

    async def record_enrollment(
        self, input_id: str, fingerprint: str, person_id: str, insurance_type: str, region: str, status: str
    ) -> Step:
        return await call_step(self.redis, LIBRARY.function("wallet_record_enrollment"),
                               [_key(person_id, "seen:enrollment"), _key(person_id, "account")],
                               [input_id, fingerprint, insurance_type, region, status])

    async def supervise(self, input_id: str, fingerprint: str, person_id: str, action: str, lifts: str | None,
                        now: str) -> Step:
        keys = [_key(person_id, part) for part in ("seen:supervision", "account", "freezes")]
        return await call_step(self.redis, LIBRARY.function("wallet_supervise"), keys,
                               [input_id, fingerprint, action, lifts or "", now])

    async def draw_begin(self, requests: Sequence[tuple[str, str]]) -> list[DrawPlan]:
        """Step 1 for each (claim, recipient), in one pipeline."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for claim_id, recipient_id in requests:
                keys = [_key(recipient_id, part) for part in ("plans", "answers", "providers", "account")]
                pipe.fcall(LIBRARY.function("wallet_draw_begin"), len(keys), *keys, claim_id)
            replies = await execute(pipe)
        plans = []
        for outcome, encoded in replies:
            stored = json.loads(encoded)
            if outcome == b"answered":
                plans.append(DrawPlan(stored, False, []))
            else:
                plans.append(DrawPlan(None, stored["frozen"], stored.get("providers") or []))
        return plans

    def draw_from_grant(self, claim_id: str, provider_id: str, recipient_id: str, needed_fen: int, now: str) -> Call:
        """Step 2: take up to `needed_fen` from the provider's grant to the recipient, once per claim."""
        keys = [_key(provider_id, part) for part in ("account", "grants", "takes", "rel-since")]
        return Call(LIBRARY.function("wallet_draw_from_grant"), keys, [claim_id, recipient_id, needed_fen, now])

    def draw_finish(self, claim_id: str, recipient_id: str, answer: dict) -> Call:
        """Step 3: store the answer; the first one stored stands."""
        keys = [_key(recipient_id, "plans"), _key(recipient_id, "answers")]
        return Call(LIBRARY.function("wallet_draw_finish"), keys, [claim_id, json.dumps(answer)])

    async def run(self, calls: Sequence[Call]) -> list[Step]:
        return await run_steps(self.redis, calls)

    async def refund(self, refund_id: str, original_claim_id: str, provider_id: str, recipient_id: str,
                     now: str) -> Step:
        keys = [_key(provider_id, part)
                for part in ("account", "grants", "relationships", "takes", "refunds", "rel-since")]
        return await call_step(self.redis, LIBRARY.function("wallet_refund"), keys,
                               [refund_id, original_claim_id, recipient_id, now])

    async def snapshot(self, person_id: str) -> AccountSnapshot:
        """The account, its grants, and its grant counts of the days still kept (YYYYMMDD)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(_key(person_id, "account"))
            pipe.hgetall(_key(person_id, "grants"))
            pipe.hgetall(_key(person_id, "grants-by-day"))
            account_raw, grants_raw, days_raw = await execute(pipe)
        account = {k.decode(): v.decode() for k, v in account_raw.items()}
        grants = {k.decode(): int(v) for k, v in grants_raw.items()}
        by_day = {day.decode(): int(count) for day, count in days_raw.items()}
        return AccountSnapshot(
            person_id=person_id,
            **{f"{name}_fen": int(account.get(name, 0)) for name in
               ("balance", "frozen", "credited", "spent", "paid", "refunded")},
            grants_fen=grants,
            grants_by_day=by_day,
        )

    async def account_holders(self):
        """Every person with a wallet account (for the audit)."""
        async for key in self.redis.scan_iter(match=f"{PREFIX}*:account", count=1000):
            yield key.decode()[len(PREFIX) + 3:].split("}", 1)[0]

