"""What one province may send on its own claims topic: claims for one recipient in a day, and
claims in a minute. A claim beyond either is refused RATE_LIMITED, final like any refusal (a
redelivery gets the same answer); the national topic has no such bound, and one province's
claims never use up another's."""

from __future__ import annotations

from datetime import timedelta

from services.settlement.handlers import SettlementHandlers
from services.settlement.store import ClaimLimits, SettlementStore
from shared.clock import FixedClock
from shared.contracts import Claim, DrawRequested, SettlementEvent
from shared.runtime import Delivery
from shared.topics import province_claims
from tests.integration.test_settlement_safety import NOON, SHARDS, insured, reverse_claim, settle_claim
from tests.support import new_id, through_claim_path


async def handlers(redis, per_recipient_per_day: int, province_per_minute: int) -> SettlementHandlers:
    store = SettlementStore(redis, SHARDS)
    await store.load()
    return SettlementHandlers(
        store,
        FixedClock(NOON),
        limits=ClaimLimits(per_recipient_per_day, province_per_minute),
    )


async def from_province(settlement: SettlementHandlers, province: str, claim: Claim) -> str:
    """What the claim gets: `drawing` (accepted, the wallet asked) or the refusal's reason."""
    (output, *_) = await settlement.on_claim_path([Delivery(province_claims(province), claim)])
    return "drawing" if isinstance(output, DrawRequested) else output.reason


async def test_a_province_may_send_so_many_claims_for_one_recipient_a_day(redis) -> None:
    settlement = await handlers(redis, per_recipient_per_day=2, province_per_minute=10_000)
    recipient = await insured(settlement)
    first, second, third = (settle_claim(recipient, 1_000) for _ in range(3))
    assert await from_province(settlement, "51", first) == "drawing"
    assert await from_province(settlement, "51", second) == "drawing"
    assert await from_province(settlement, "51", third) == "RATE_LIMITED"
    assert await from_province(settlement, "51", third) == "RATE_LIMITED"  # redelivered: the same answer
    assert await from_province(settlement, "51", first) == "drawing"  # a redelivery is no new claim
    # Another province's claims for the same person are its own count; the national topic has none.
    care_in_31 = settle_claim(recipient, 1_000, service_region="310100")
    assert await from_province(settlement, "31", care_in_31) == "drawing"
    (national,) = await through_claim_path(settlement, [settle_claim(recipient, 1_000)])
    assert isinstance(national, DrawRequested)
    settlement.clock = FixedClock(NOON + timedelta(days=1))  # a new Asia/Shanghai day
    assert await from_province(settlement, "51", settle_claim(recipient, 1_000)) == "drawing"


async def test_a_province_may_send_so_many_claims_a_minute(redis) -> None:
    """Province 44 here, whose minute no other test counts (the clock is fixed at NOON)."""
    settlement = await handlers(redis, per_recipient_per_day=100, province_per_minute=SHARDS)  # one a shard
    recipient = await insured(settlement)
    neighbour = await insured(settlement, near=recipient)  # in the same shard
    assert await from_province(settlement, "44", settle_claim(recipient, 1_000, service_region="440300")) == "drawing"
    refused = settle_claim(neighbour, 1_000, service_region="440300")
    (event, *_) = await settlement.on_claim_path([Delivery(province_claims("44"), refused)])
    assert isinstance(event, SettlementEvent)
    assert (event.status, event.reason, event.paid_fen, event.self_pay_fen) == ("rejected", "RATE_LIMITED", 0, 1_000)
    settlement.clock = FixedClock(NOON + timedelta(minutes=1))
    assert await from_province(settlement, "44", settle_claim(neighbour, 1_000, service_region="440300")) == "drawing"


async def test_the_counts_expire_with_their_day_and_minute(redis) -> None:
    settlement = await handlers(redis, per_recipient_per_day=100, province_per_minute=10_000)
    recipient = await insured(settlement)
    await from_province(settlement, "51", settle_claim(recipient, 1_000))
    prefix = settlement.store.shard_prefix(recipient)
    assert 0 < await redis.ttl(f"{prefix}:limits:20260302:51") <= 2 * 86_400
    assert 0 < await redis.ttl(f"{prefix}:limits:2026-03-02T12:00") <= 120


async def test_a_provinces_reversals_count_against_its_bounds_as_its_claims_do(redis) -> None:
    """Else a province could send refused reversals without end: to probe, or to fill Redis."""
    settlement = await handlers(redis, per_recipient_per_day=1, province_per_minute=10_000)
    recipient = await insured(settlement)
    assert await from_province(settlement, "51", settle_claim(recipient, 1_000)) == "drawing"
    probe = reverse_claim(recipient, f"510100-{new_id('anything')}")
    assert await from_province(settlement, "51", probe) == "RATE_LIMITED"
    assert await from_province(settlement, "51", probe) == "RATE_LIMITED"  # redelivered: the same answer
    (national,) = await through_claim_path(settlement, [reverse_claim(recipient, f"510100-{new_id('anything')}")])
    assert national.reason == "UNKNOWN_CLAIM"  # the national topic has no bound


async def test_a_claim_sent_by_another_province_is_not_recorded_and_its_id_stays_free(redis) -> None:
    """Province 51 sent a claim for care in 31: refused SERVICE_REGION_MISMATCH before its id is
    taken and before it counts; 31 knows no such claim, and its own claim under the id is taken in."""
    settlement = await handlers(redis, per_recipient_per_day=2, province_per_minute=10_000)
    recipient = await insured(settlement)
    misplaced = settle_claim(recipient, 1_000, service_region="310100")
    assert await from_province(settlement, "51", misplaced) == "SERVICE_REGION_MISMATCH"
    assert await settlement.store.claim(misplaced.claim_id) is None
    assert (
        await from_province(settlement, "51", reverse_claim(recipient, misplaced.claim_id)) == "SERVICE_REGION_MISMATCH"
    )
    assert await from_province(settlement, "31", reverse_claim(recipient, misplaced.claim_id)) == "UNKNOWN_CLAIM"
    assert await from_province(settlement, "31", misplaced) == "drawing"  # 51's attempts counted nowhere
