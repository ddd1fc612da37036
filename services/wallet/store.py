"""The wallet service's Redis state (prefix `wal:`); only this service reads or writes it.
Every key of a person carries the hash tag {p:<person_id>}: one step, one slot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from redis.asyncio import Redis

from services.wallet.domain import AccountSnapshot, GrantLimits
from shared.clock import rfc3339, shanghai_day
from shared.policy import Policy
from shared.records import AccountStep, DrawAnswer, DrawPlan, Recorded, Refund, Take
from shared.redis_functions import Call, Library, Result, Step, call_step, execute, run_steps, send_all
from shared.window import SEEN_ARGS, SEEN_KEYS, SeenIds

LIBRARY = Library("gongji_wallet", Path(__file__).with_name("wallet.lua"))
PREFIX = "wal:"

CREDIT = LIBRARY.declare(
    "wallet_credit",
    keys=(*SEEN_KEYS, "account_key"),
    args=("input_id", "fingerprint", *SEEN_ARGS, "amount", "now"),
    result=AccountStep,
)
SPEND = LIBRARY.declare(
    "wallet_spend",
    keys=(*SEEN_KEYS, "account_key"),
    args=("input_id", "fingerprint", *SEEN_ARGS, "amount", "now"),
    result=AccountStep,
)
GRANT = LIBRARY.declare(
    "wallet_grant",
    keys=(*SEEN_KEYS, "account_key", "grants_key", "relationships_key", "by_day_key"),
    args=(
        "input_id",
        "fingerprint",
        *SEEN_ARGS,
        "recipient",
        "recipient_region",
        "amount",
        "refusal",
        "max_per_day",
        "today",
        "oldest_day_kept",
        "closed_regions",
        "cross_province_in_force",
        "now",
        "actor",
        "provider",
        "max_amount",
    ),
    result=AccountStep,
)
INDEX_PROVIDER = LIBRARY.declare("wallet_index_provider", keys=("providers_key",), args=("provider", "first_grant_ms"))
RELATIONSHIP_CHANGED = LIBRARY.declare(
    "wallet_relationship_changed",
    keys=(*SEEN_KEYS, "account_key", "grants_key", "relationships_key", "versions_key", "since_key"),
    args=("input_id", "fingerprint", *SEEN_ARGS, "event_type", "recipient", "recipient_region", "version", "now"),
    result=AccountStep,
)
RECORD_ENROLLMENT = LIBRARY.declare(
    "wallet_record_enrollment",
    keys=(*SEEN_KEYS, "enrollment_key"),
    args=("input_id", "fingerprint", *SEEN_ARGS, "insurance_type", "region", "status"),
    result=Recorded,
)
SUPERVISE = LIBRARY.declare(
    "wallet_supervise",
    keys=(*SEEN_KEYS, "account_key", "freezes_key"),
    args=("input_id", "fingerprint", *SEEN_ARGS, "action", "lifts", "now"),
    result=AccountStep,
)
DRAW_BEGIN = LIBRARY.declare(
    "wallet_draw_begin",
    keys=("plans_key", "answers_key", "providers_key", "account_key"),
    args=("claim_id", "kept_ms"),
)
DRAW_FROM_GRANT = LIBRARY.declare(
    "wallet_draw_from_grant",
    keys=("account_key", "grants_key", "takes_key", "since_key"),
    args=("claim_id", "recipient", "needed", "now", "kept_ms"),
    result=Take,
)
DRAW_FINISH = LIBRARY.declare(
    "wallet_draw_finish",
    keys=("plans_key", "answers_key"),
    args=("claim_id", "answer", "kept_ms"),
    result=DrawAnswer,
)
REFUND = LIBRARY.declare(
    "wallet_refund",
    keys=("account_key", "grants_key", "relationships_key", "takes_key", "refunds_key", "since_key"),
    args=("refund_id", "original_claim_id", "recipient", "now", "kept_ms"),
    result=Refund,
)


def _key(person_id: str, part: str) -> str:
    return f"{PREFIX}{{p:{person_id}}}:{part}"


@dataclass(frozen=True)
class Bucket:
    """Where a claim's draw records are kept: the day its claim occurred (YYYYMMDD), and how long
    from now (in Redis's time) that day's records are kept."""

    day: str
    kept_ms: int

    def key(self, person_id: str, part: str) -> str:
        return _key(person_id, f"{part}:{self.day}")


class WalletStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def load(self) -> None:
        await LIBRARY.load(self.redis)

    async def ready(self) -> None:
        await LIBRARY.require_loaded(self.redis)

    async def credit(
        self, input_id: str, fingerprint: str, person_id: str, amount_fen: int, now: str, seen: SeenIds
    ) -> Step[AccountStep]:
        return await call_step(
            self.redis,
            CREDIT.call(
                **seen.of(_key(person_id, "seen:credits")),
                account_key=_key(person_id, "account"),
                input_id=input_id,
                fingerprint=fingerprint,
                amount=amount_fen,
                now=now,
            ),
        )

    async def spend(
        self, input_id: str, fingerprint: str, person_id: str, amount_fen: int, now: str, seen: SeenIds
    ) -> Step[AccountStep]:
        return await call_step(
            self.redis,
            SPEND.call(
                **seen.of(_key(person_id, "seen:spends")),
                account_key=_key(person_id, "account"),
                input_id=input_id,
                fingerprint=fingerprint,
                amount=amount_fen,
                now=now,
            ),
        )

    async def grant(
        self,
        input_id: str,
        fingerprint: str,
        actor_id: str,
        provider_id: str,
        recipient_id: str,
        recipient_region: str,
        amount_fen: int,
        refusal: str,
        limits: GrantLimits,
        policy: Policy,
        now: datetime,
        seen: SeenIds,
    ) -> Step[AccountStep]:
        return await call_step(
            self.redis,
            GRANT.call(
                **seen.of(_key(provider_id, "seen:commands")),
                account_key=_key(provider_id, "account"),
                grants_key=_key(provider_id, "grants"),
                relationships_key=_key(provider_id, "relationships"),
                by_day_key=_key(provider_id, "grants-by-day"),
                input_id=input_id,
                fingerprint=fingerprint,
                recipient=recipient_id,
                recipient_region=recipient_region,
                amount=amount_fen,
                refusal=refusal,
                max_per_day=limits.max_per_day,
                today=shanghai_day(now),
                oldest_day_kept=shanghai_day(now - limits.counters_kept),
                closed_regions=" ".join(sorted(policy.closed_regions)),
                cross_province_in_force=policy.cross_province_in_force(now),
                now=rfc3339(now),
                actor=actor_id,
                provider=provider_id,
                max_amount=limits.max_amount_fen,
            ),
        )

    async def index_provider(self, recipient_id: str, provider_id: str, first_grant_ms: int) -> None:
        await INDEX_PROVIDER.call(
            providers_key=_key(recipient_id, "providers"), provider=provider_id, first_grant_ms=first_grant_ms
        ).on(self.redis)

    async def relationship_changed(
        self,
        input_id: str,
        fingerprint: str,
        event_type: str,
        provider_id: str,
        recipient_id: str,
        recipient_region: str,
        version: int | None,
        now: str,
        seen: SeenIds,
    ) -> Step[AccountStep]:
        return await call_step(
            self.redis,
            RELATIONSHIP_CHANGED.call(
                **seen.of(_key(provider_id, "seen:relationship-events")),
                account_key=_key(provider_id, "account"),
                grants_key=_key(provider_id, "grants"),
                relationships_key=_key(provider_id, "relationships"),
                versions_key=_key(provider_id, "rel-versions"),
                since_key=_key(provider_id, "rel-since"),
                input_id=input_id,
                fingerprint=fingerprint,
                event_type=event_type,
                recipient=recipient_id,
                recipient_region=recipient_region,
                version=version,
                now=now,
            ),
        )

    async def record_enrollment(
        self,
        input_id: str,
        fingerprint: str,
        person_id: str,
        insurance_type: str,
        region: str,
        status: str,
        seen: SeenIds,
    ) -> Step[Recorded]:
        return await call_step(
            self.redis,
            RECORD_ENROLLMENT.call(
                **seen.of(_key(person_id, "seen:enrollment")),
                enrollment_key=_key(person_id, "account"),
                input_id=input_id,
                fingerprint=fingerprint,
                insurance_type=insurance_type,
                region=region,
                status=status,
            ),
        )

    async def supervise(
        self, input_id: str, fingerprint: str, person_id: str, action: str, lifts: str | None, now: str, seen: SeenIds
    ) -> Step[AccountStep]:
        return await call_step(
            self.redis,
            SUPERVISE.call(
                **seen.of(_key(person_id, "seen:supervision")),
                account_key=_key(person_id, "account"),
                freezes_key=_key(person_id, "freezes"),
                input_id=input_id,
                fingerprint=fingerprint,
                action=action,
                lifts=lifts,
                now=now,
            ),
        )

    async def draw_begin(self, requests: Sequence[tuple[str, str, Bucket]]) -> list[DrawAnswer | DrawPlan]:
        """Step 1 for each (claim, recipient, bucket), in one pipeline: the stored answer of an
        earlier draw, or the plan fixed at the first try."""
        replies = await send_all(
            self.redis,
            [
                DRAW_BEGIN.call(
                    plans_key=bucket.key(recipient_id, "plans"),
                    answers_key=bucket.key(recipient_id, "answers"),
                    providers_key=_key(recipient_id, "providers"),
                    account_key=_key(recipient_id, "account"),
                    claim_id=claim_id,
                    kept_ms=bucket.kept_ms,
                ).command
                for claim_id, recipient_id, bucket in requests
            ],
        )
        return [
            DrawAnswer.model_validate_json(encoded) if outcome == b"answered" else DrawPlan.model_validate_json(encoded)
            for outcome, encoded in replies
        ]

    def draw_from_grant(
        self, claim_id: str, provider_id: str, recipient_id: str, needed_fen: int, now: str, bucket: Bucket
    ) -> Call[Take]:
        """Step 2: take up to `needed_fen` from the provider's grant to the recipient, once per claim."""
        return DRAW_FROM_GRANT.call(
            account_key=_key(provider_id, "account"),
            grants_key=_key(provider_id, "grants"),
            takes_key=bucket.key(provider_id, "takes"),
            since_key=_key(provider_id, "rel-since"),
            claim_id=claim_id,
            recipient=recipient_id,
            needed=needed_fen,
            now=now,
            kept_ms=bucket.kept_ms,
        )

    def draw_finish(self, claim_id: str, recipient_id: str, answer: DrawAnswer, bucket: Bucket) -> Call[DrawAnswer]:
        """Step 3: store the answer; the first one stored stands."""
        return DRAW_FINISH.call(
            plans_key=bucket.key(recipient_id, "plans"),
            answers_key=bucket.key(recipient_id, "answers"),
            claim_id=claim_id,
            answer=answer.stored(),
            kept_ms=bucket.kept_ms,
        )

    async def run(self, calls: Sequence[Call[Result]]) -> list[Step[Result]]:
        return await run_steps(self.redis, calls)

    async def refund(
        self, refund_id: str, original_claim_id: str, provider_id: str, recipient_id: str, now: str, bucket: Bucket
    ) -> Step[Refund]:
        """What the original claim (whose day is `bucket`'s) drew from the provider goes back, once."""
        return await call_step(
            self.redis,
            REFUND.call(
                account_key=_key(provider_id, "account"),
                grants_key=_key(provider_id, "grants"),
                relationships_key=_key(provider_id, "relationships"),
                takes_key=bucket.key(provider_id, "takes"),
                refunds_key=bucket.key(provider_id, "refunds"),
                since_key=_key(provider_id, "rel-since"),
                refund_id=refund_id,
                original_claim_id=original_claim_id,
                recipient=recipient_id,
                now=now,
                kept_ms=bucket.kept_ms,
            ),
        )

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
            **{
                f"{name}_fen": int(account.get(name, 0))
                for name in ("balance", "frozen", "credited", "spent", "paid", "refunded")
            },
            grants_fen=grants,
            grants_by_day=by_day,
        )

    async def account_holders(self):
        """Every person with a wallet account (for the audit)."""
        async for key in self.redis.scan_iter(match=f"{PREFIX}*:account", count=1000):
            yield key.decode()[len(PREFIX) + 3 :].split("}", 1)[0]
