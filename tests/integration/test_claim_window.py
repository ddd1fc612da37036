"""The idempotency window on the real Redis: a claim is taken only while its occurred_at lies within
the window, what recognises it again is kept past the window and then leaves Redis by itself, and
no copy of a claim, early or late, before or after its record expires, is ever paid twice."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import redis as sync_redis

from gongji.ops.window import KEPT_FOR, keep_for_window
from shared.clock import shanghai_day
from shared.contracts import DrawAnswered, DrawRequested, ReasonCode, RefundRequested
from shared.credentials import redis_options
from shared.principals import OPERATOR
from shared.redis_client import in_database
from shared.runtime import Refused
from shared.window import ClaimWindow
from tests.integration.saga import Saga, of_type, settlements
from tests.support import through_claim_path

# Short enough to watch records leave Redis: a day's records are kept 1.5 s past the day's end, so a
# claim of a day's last second is kept 2.5 s of real time. A shard's day bucket lives as long as its
# longest-kept claim: the day is one no other test writes claims for.
BRIEF = ClaimWindow(length=timedelta(seconds=1), skew=timedelta(milliseconds=100), grace=timedelta(seconds=0.5))
LAST_SECOND = datetime.fromisoformat("2026-02-17T23:59:59+08:00")


async def paid_by(saga: Saga, provider: str) -> int:
    snapshot = await saga.wstore.snapshot(provider)
    return snapshot.paid_fen - snapshot.refunded_fen


async def test_the_last_second_inside_the_window_is_taken_and_the_first_outside_is_refused_unread(redis) -> None:
    saga = await Saga(redis).load()
    recipient, (provider,) = await saga.family([50_000])
    now = saga.clock.now()
    oldest = saga.settle(recipient, 10_000, occurred_at=(now - timedelta(days=30)).isoformat())
    too_old = saga.settle(recipient, 10_000, occurred_at=(now - timedelta(days=30, seconds=1)).isoformat())
    ahead = saga.settle(recipient, 10_000, occurred_at=(now + timedelta(minutes=5, seconds=1)).isoformat())
    outputs = await saga.run_claims([oldest, too_old, ahead])
    answers = {result.claim_id: (result.status, result.reason) for result in settlements(outputs)}
    assert answers == {
        oldest.claim_id: ("settled", None),
        too_old.claim_id: ("rejected", ReasonCode.CLAIM_TOO_OLD),
        ahead.claim_id: ("rejected", ReasonCode.INVALID_MESSAGE),
    }
    assert await saga.sstore.claim(too_old.claim_id) is None  # nothing recorded, the id not taken
    assert await redis.exists(saga.sstore._owner_key(too_old.claim_id)) == 0
    assert await paid_by(saga, provider) == 10_000


async def test_a_copy_inside_the_window_is_a_duplicate_and_one_outside_it_is_refused(redis) -> None:
    saga = await Saga(redis).load()
    recipient, (provider,) = await saga.family([50_000])
    claim = saga.settle(recipient, 20_000)
    (first,) = settlements(await saga.run_claims([claim]))
    saga.clock.set(claim.occurred_at + timedelta(days=30))  # its last moment
    again = await saga.run_claims([claim])
    assert settlements(again) == [first] and not of_type(again, DrawRequested)
    saga.clock.set(claim.occurred_at + timedelta(days=30, milliseconds=1))
    (late,) = settlements(await saga.run_claims([claim]))
    assert (late.status, late.reason, late.event_id != first.event_id) == ("rejected", ReasonCode.CLAIM_TOO_OLD, True)
    assert await paid_by(saga, provider) == 20_000


async def test_claim_records_leave_redis_after_the_window_and_a_late_copy_is_never_paid_again(redis) -> None:
    saga = await Saga(redis, at=LAST_SECOND, window=BRIEF).load()
    recipient, (provider,) = await saga.family([50_000])
    claim = saga.settle(recipient, 20_000)
    (first,) = settlements(await saga.run_claims([claim]))
    record_key = saga.sstore.claims_key(recipient, shanghai_day(claim.occurred_at))
    owner_key = saga.sstore._owner_key(claim.claim_id)
    assert 0 < await redis.pttl(record_key) <= 2_500 and 0 < await redis.pttl(owner_key) <= 2_500
    await asyncio.sleep(2.0)  # just before the record expires, the window (the clock moved too) still open
    saga.clock.set(claim.occurred_at + timedelta(seconds=1))
    again = await saga.run_claims([claim])
    assert settlements(again) == [first] and not of_type(again, DrawRequested)
    await asyncio.sleep(0.6)
    assert await redis.exists(record_key, owner_key) == 0
    saga.clock.set(claim.occurred_at + timedelta(seconds=2.6))
    (late,) = settlements(await saga.run_claims([claim]))
    assert (late.status, late.reason) == ("rejected", ReasonCode.CLAIM_TOO_OLD)
    assert await paid_by(saga, provider) == 20_000


async def test_a_reversal_within_the_window_of_a_claim_held_but_too_old_is_refused(redis) -> None:
    saga = await Saga(redis).load()
    recipient, (provider,) = await saga.family([50_000])
    claim = saga.settle(recipient, 20_000)
    await saga.run_claims([claim])
    saga.clock.set(claim.occurred_at + timedelta(days=30, seconds=1))
    reversal = saga.reverse(recipient, claim.claim_id)  # itself on time
    (refused,) = settlements(outputs := await saga.run_claims([reversal]))
    assert (refused.status, refused.reason) == ("rejected", ReasonCode.NOT_REVERSIBLE)
    assert not of_type(outputs, RefundRequested) and await paid_by(saga, provider) == 20_000
    assert (await saga.sstore.claim(claim.claim_id)).reversed_by is None


async def test_a_reversal_of_a_claim_whose_record_expired_is_unknown_and_refunds_nothing(redis) -> None:
    saga = await Saga(redis, at=LAST_SECOND, window=BRIEF).load()
    recipient, (provider,) = await saga.family([50_000])
    claim = saga.settle(recipient, 20_000)
    await saga.run_claims([claim])
    await asyncio.sleep(2.6)
    saga.clock.set(claim.occurred_at + timedelta(seconds=2.6))
    reversal = saga.reverse(recipient, claim.claim_id)
    (refused,) = settlements(outputs := await saga.run_claims([reversal]))
    assert (refused.status, refused.reason) == ("rejected", ReasonCode.UNKNOWN_CLAIM)
    assert not of_type(outputs, RefundRequested) and await paid_by(saga, provider) == 20_000


async def test_a_claim_at_a_shanghai_month_end_is_taken_and_cleared_in_the_month_it_settles(redis) -> None:
    saga = await Saga(redis).load()
    recipient, _ = await saga.family([50_000])
    saga.clock.set(saga.clock.now().replace(month=4, day=1, hour=0, minute=0, second=1))  # 2026-03-31T16:00:01Z
    claim = saga.settle(recipient, 10_000, occurred_at="2026-03-31T23:59:59+08:00")
    (result,) = settlements(await saga.run_claims([claim]))
    assert (result.status, result.clearing_month) == ("settled", "2026-04")


async def test_a_restarted_service_refuses_a_late_copy_and_a_late_answer_after_the_records_expired(redis) -> None:
    """Settlement stopped with a draw answer not yet taken in and came back after its claim's record
    expired: the claim sent again is too old, and the late answer gives nothing back, since its claim
    may have been paid (it was not here: the provider's money is where the draw left it)."""
    saga = await Saga(redis, at=LAST_SECOND, window=BRIEF).load()
    recipient, (provider,) = await saga.family([50_000])
    claim = saga.settle(recipient, 20_000)
    (request,) = of_type(await through_claim_path(saga.settlement, [claim]), DrawRequested)
    (answer,) = of_type(await saga.wallet.on_draw_requests([request]), DrawAnswered)
    await asyncio.sleep(2.6)
    restarted = await Saga(redis, window=BRIEF).load()
    restarted.clock.set(claim.occurred_at + timedelta(seconds=2.6))
    (late,) = settlements(await through_claim_path(restarted.settlement, [claim]))
    assert (late.status, late.reason) == ("rejected", ReasonCode.CLAIM_TOO_OLD)
    (refusal,) = await through_claim_path(restarted.settlement, [answer])
    assert isinstance(refusal, Refused) and refusal.reason == ReasonCode.CLAIM_TOO_OLD
    assert await paid_by(saga, provider) == 20_000


async def test_a_claims_draw_records_are_kept_and_leave_with_its_day(redis) -> None:
    saga = await Saga(redis, at=LAST_SECOND, window=BRIEF).load()
    recipient, (provider,) = await saga.family([50_000])
    claim = saga.settle(recipient, 20_000)
    await saga.run_claims([claim])
    day = shanghai_day(claim.occurred_at)
    buckets = [f"wal:{{p:{provider}}}:takes:{day}", f"wal:{{p:{recipient}}}:answers:{day}"]
    ttls = [await redis.pttl(bucket) for bucket in buckets]
    assert all(0 < ttl <= 2_500 for ttl in ttls), ttls
    await asyncio.sleep(2.6)
    assert await redis.exists(*buckets) == 0


async def test_the_wallet_neither_draws_nor_refunds_for_a_day_whose_records_may_be_gone(redis) -> None:
    saga = await Saga(redis).load()
    recipient, (provider,) = await saga.family([50_000])
    claim = saga.settle(recipient, 20_000)
    (request,) = of_type(await saga.run_claims([claim]), DrawRequested)
    (refund,) = of_type(await saga.run_claims([saga.reverse(recipient, claim.claim_id)]), RefundRequested)
    saga.clock.set(claim.occurred_at + timedelta(days=32))  # the day's end + 30 days + 1 day: half the grace gone
    for handled in (await saga.wallet.on_draw_requests([request]), await saga.wallet.on_refund_requests([refund])):
        (refusal,) = handled
        assert isinstance(refusal, Refused) and refusal.reason == ReasonCode.CLAIM_TOO_OLD
    assert await paid_by(saga, provider) == 0  # drawn once, given back once


async def test_a_refused_claims_record_leaves_with_its_day_too(redis) -> None:
    """Issue 19: refused claims are not kept for good."""
    saga = await Saga(redis, at=LAST_SECOND, window=BRIEF).load()
    recipient = await saga.recipient()
    refused = saga.settle(recipient, 1_000, category="massage", institution_code=None)
    (answer,) = settlements(await saga.run_claims([refused]))
    assert (answer.status, answer.reason) == ("rejected", ReasonCode.CATEGORY_NOT_ALLOWED)
    bucket = saga.sstore.claims_key(recipient, shanghai_day(refused.occurred_at))
    assert await redis.hexists(bucket, refused.claim_id) and 0 < await redis.pttl(bucket) <= 2_500
    await asyncio.sleep(2.6)
    assert await redis.exists(bucket) == 0


def test_a_longer_window_keeps_the_records_written_under_the_shorter_one(infrastructure) -> None:
    """`gongji infra up` with a longer window lengthens every day's records to it before a copy the
    longer window lets in could find them gone; a shorter one changes nothing."""
    client = sync_redis.Redis.from_url(
        in_database(infrastructure.redis_url, 11), **redis_options(infrastructure, OPERATOR.name)
    )
    client.flushdb()
    day_keys = ["stl:{s1}:claims:20260302", "wal:{p:P}:takes:20260302", "stl:{c1}:owner:c1"]
    client.hset(day_keys[0], "c1", "{}")
    client.hset(day_keys[1], "c1", "{}")
    client.set(day_keys[2], "R|20260302")
    for key in day_keys:
        client.pexpire(key, 86_400_000)
    client.hset("wal:{p:P}:account", "balance", 1)  # kept for good, and stays so
    client.set(KEPT_FOR, 32 * 86_400)  # what Redis was kept for: the default window and grace
    now = datetime.fromisoformat("2026-03-02T12:00:00+08:00")
    longer = ClaimWindow(length=timedelta(days=60))
    assert keep_for_window(client, longer, now) == 3
    expected = (longer.kept_until("20260302") - now).total_seconds() * 1000
    assert all(abs(client.pttl(key) - expected) < 5_000 for key in day_keys)
    assert client.ttl("wal:{p:P}:account") == -1
    assert keep_for_window(client, ClaimWindow(), now) == 0  # shorter: nothing to do
    assert all(abs(client.pttl(key) - expected) < 5_000 for key in day_keys)
    client.flushdb()
    client.close()
