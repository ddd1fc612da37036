"""The wallet's money-safety defects, each reproduced on the real Redis functions through the
handlers: retried draws that planned again, claim ids reused across recipients, relationship
events out of order, freezes, the run-time policy at grant time, one id namespace per topic,
and amounts beyond what cjson keeps exactly."""

from __future__ import annotations

import asyncio
from datetime import date, datetime

import pytest

from services.wallet.domain import account_breaches
from services.wallet.handlers import WalletHandlers
from services.wallet.store import Bucket
from shared.contracts import (
    AccountCredited,
    AccountSpent,
    DrawRequested,
    RefundRequested,
    RelationshipEvent,
    SupervisionActed,
)
from shared.money import MAX_AMOUNT_FEN
from shared.policy import Policy, write_policy
from shared.runtime import Refused
from tests.integration.test_wallet_rules import NOON, context, draw, grant, provider_with, relationship, wallet  # noqa: F401
from tests.support import new_id, new_person_id


def draw_request(recipient: str, amount_fen: int, claim_id: str) -> DrawRequested:
    return DrawRequested(
        request_id=f"r-{claim_id}",
        claim_id=claim_id,
        recipient_id=recipient,
        amount_fen=amount_fen,
        context=context(amount_fen),
        requested_at=NOON,
    )


async def first_step_only(wallet: WalletHandlers, recipient: str, claim_id: str, provider: str, needed: int) -> None:
    """A draw that crashed after its plan and its first provider's take, before its answer."""
    bucket = Bucket("20260302", 60_000)
    await wallet.store.draw_begin([(claim_id, recipient, bucket)])
    await wallet.store.run(
        [wallet.store.draw_from_grant(claim_id, provider, recipient, needed, "2026-03-02T12:00:00+08:00", bucket)]
    )


async def paid_by(wallet: WalletHandlers, provider: str) -> int:
    return (await wallet.store.snapshot(provider)).paid_fen


async def freeze(wallet: WalletHandlers, person: str, event_id: str | None = None, reason: str = "misuse") -> list:
    return await wallet.on_supervision(
        [
            SupervisionActed(
                event_id=event_id or new_id(), person_id=person, action="freeze", reason=reason, occurred_at=NOON
            )
        ]
    )


async def unfreeze(wallet: WalletHandlers, person: str, lifts: str | None = None) -> list:
    return await wallet.on_supervision(
        [
            SupervisionActed(
                event_id=new_id(), person_id=person, action="unfreeze", reason="cleared", lifts=lifts, occurred_at=NOON
            )
        ]
    )


async def test_a_retried_draw_follows_its_first_plan_when_the_recipient_was_frozen_in_between(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 40_000)
    claim_id = new_id("claim")
    await first_step_only(wallet, recipient, claim_id, provider, 12_000)
    await freeze(wallet, recipient)
    (*_, answer) = await wallet.on_draw_requests([draw_request(recipient, 12_000, claim_id)])
    # Before: `rejected`, paid 0, while the provider stayed debited 12,000.
    assert (answer.paid_fen, answer.reason) == (12_000, None)
    assert await paid_by(wallet, provider) == 12_000


async def test_a_retried_draw_follows_its_first_plan_when_a_provider_was_indexed_in_between(wallet) -> None:
    first, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, first, recipient, 20_000)
    claim_id = new_id("claim")
    await first_step_only(wallet, recipient, claim_id, first, 30_000)
    second = (await provider_with(wallet, 100_000, recipients=0))[0]
    await relationship(wallet, second, recipient, "established")
    wallet.clock.set(datetime.fromisoformat("2026-03-01T12:00:00+08:00"))  # indexed ahead of the first
    await grant(wallet, second, recipient, 15_000)
    wallet.clock.set(NOON)
    (*debits, answer) = await wallet.on_draw_requests([draw_request(recipient, 30_000, claim_id)])
    # Before: paid 35,000 for a 30,000 claim (self-pay -5,000).
    assert answer.paid_fen == 20_000 == sum(payer.amount_fen for payer in answer.payers)
    assert [(d.provider_id, d.amount_fen) for d in debits] == [(first, 20_000)]
    assert await paid_by(wallet, second) == 0


async def test_two_instances_drawing_one_claim_during_a_rebalance_agree(wallet) -> None:
    first, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, first, recipient, 20_000)
    second = (await provider_with(wallet, 100_000, recipients=0))[0]
    await relationship(wallet, second, recipient, "established")
    await grant(wallet, second, recipient, 20_000)
    claim_id = new_id("claim")
    request = draw_request(recipient, 30_000, claim_id)
    answers = await asyncio.gather(*(wallet.on_draw_requests([request]) for _ in range(6)))
    assert len({outputs[-1].event_id for outputs in answers}) == 1
    assert {outputs[-1].paid_fen for outputs in answers} == {30_000}
    assert await paid_by(wallet, first) + await paid_by(wallet, second) == 30_000


async def test_a_claim_id_reused_for_another_recipient_takes_nothing(wallet) -> None:
    provider, (first, second) = await provider_with(wallet, 100_000, recipients=2)
    await grant(wallet, provider, first, 5_000)
    await grant(wallet, provider, second, 10_000)
    claim_id = new_id("claim")
    assert (await draw(wallet, first, 5_000, claim_id)).paid_fen == 5_000
    reused = await draw(wallet, second, 3_000, claim_id)
    # Before: the second recipient's 3,000 claim was paid 5,000 out of the first one's take.
    assert reused.paid_fen == 0
    snapshot = await wallet.store.snapshot(provider)
    assert (snapshot.paid_fen, snapshot.grants_fen[second]) == (5_000, 10_000)


async def test_a_refund_for_another_recipient_returns_nothing(wallet) -> None:
    provider, (first, second) = await provider_with(wallet, 100_000, recipients=2)
    await grant(wallet, provider, first, 10_000)
    await grant(wallet, provider, second, 10_000)
    answer = await draw(wallet, first, 10_000)
    wrong = RefundRequested(
        claim_day="20260302",
        request_id=new_id(),
        claim_id=new_id("rev"),
        original_claim_id=answer.claim_id,
        recipient_id=second,
        payers=answer.payers,
        requested_at=NOON,
    )
    # Before: the money went into the provider's grant for the wrong recipient.
    assert await wallet.on_refund_requests([wrong]) == []
    snapshot = await wallet.store.snapshot(provider)
    assert (snapshot.grants_fen[first], snapshot.grants_fen[second], snapshot.refunded_fen) == (0, 10_000, 0)
    right = RefundRequested(
        claim_day="20260302",
        request_id=new_id(),
        claim_id=new_id("rev"),
        original_claim_id=answer.claim_id,
        recipient_id=first,
        payers=answer.payers,
        requested_at=NOON,
    )
    (refunded,) = await wallet.on_refund_requests([right])
    assert refunded.amount_fen == 10_000


def relationship_event(provider: str, recipient: str, kind: str, version: int) -> RelationshipEvent:
    return RelationshipEvent(
        event_id=new_id(),
        cause_id=new_id(),
        type=kind,
        provider_id=provider,
        recipient_id=recipient,
        recipient_region="510100",
        kinship="parent",
        version=version,
        occurred_at=NOON,
    )


async def test_an_older_relationship_event_never_undoes_a_newer_one(wallet) -> None:
    provider, _ = await provider_with(wallet, 100_000, recipients=0)
    recipient = new_person_id()
    # `terminated` (version 3) overtook `established` (version 2): the relationship has ended.
    await wallet.on_relationship_events([relationship_event(provider, recipient, "terminated", 3)])
    await wallet.on_relationship_events([relationship_event(provider, recipient, "established", 2)])
    assert (await grant(wallet, provider, recipient, 1_000)).reason == "RELATIONSHIP_NOT_ACTIVE"
    await wallet.on_relationship_events([relationship_event(provider, recipient, "established", 5)])
    assert (await grant(wallet, provider, recipient, 1_000)).type == "granted"
    assert await wallet.on_relationship_events([relationship_event(provider, recipient, "dissolved", 4)]) == []
    (released,) = await wallet.on_relationship_events([relationship_event(provider, recipient, "dissolved", 6)])
    assert (released.type, released.amount_fen) == ("released", 1_000)


async def test_each_freeze_stands_until_it_is_lifted(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    first, second = new_id("freeze"), new_id("freeze")
    await freeze(wallet, provider, first)
    (frozen,) = await freeze(wallet, provider, second, reason="a second case")
    assert (frozen.type, frozen.standing_freezes) == ("frozen", 2)
    (lifted,) = await unfreeze(wallet, provider, lifts=second)
    assert (lifted.type, lifted.standing_freezes) == ("unfrozen", 1)
    # Before: one unfreeze lifted every freeze.
    assert (await grant(wallet, provider, recipient, 100)).reason == "ACCOUNT_FROZEN"
    (free,) = await unfreeze(wallet, provider)  # lifts the oldest standing freeze
    assert free.standing_freezes == 0
    assert (await grant(wallet, provider, recipient, 100)).type == "granted"


@pytest.fixture
async def policy(redis):
    yield lambda **fields: write_policy(redis, Policy(**fields))
    await write_policy(redis, Policy())


async def test_grants_follow_the_run_time_policy(wallet, policy) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)  # 440300 -> 510100: cross-province
    await policy(closed_regions=frozenset({"51"}))
    assert (await grant(wallet, provider, recipient, 100)).reason == "REGION_WALLET_CLOSED"
    await policy(closed_regions=frozenset({"440300"}))
    assert (await grant(wallet, provider, recipient, 100)).reason == "REGION_WALLET_CLOSED"
    await policy(cross_province_since=date(2026, 3, 3))
    assert (await grant(wallet, provider, recipient, 100)).reason == "CROSS_PROVINCE_NOT_IN_FORCE"
    await policy()
    assert (await grant(wallet, provider, recipient, 100)).type == "granted"


async def test_input_ids_are_scoped_per_topic_and_never_meet_internal_records(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 10_000)
    claim_id = new_id("claim")
    await draw(wallet, recipient, 1_000, claim_id)
    shared_id = new_id("same")
    for event_id in (shared_id, f"draw:{claim_id}", f"refund:{claim_id}", f"{shared_id}/{provider}"):
        (credited,) = await wallet.on_credits(
            [AccountCredited(event_id=event_id, person_id=provider, amount_fen=70_000, occurred_at=NOON)]
        )
        assert credited.type == "credited"
    (spent,) = await wallet.on_spends(
        [AccountSpent(event_id=shared_id, person_id=provider, amount_fen=1, occurred_at=NOON)]
    )
    assert spent.type == "spent"
    snapshot = await wallet.store.snapshot(provider)
    assert snapshot.balance_fen == 100_000 - 1_000 + 4 * 70_000 - 1
    assert account_breaches(snapshot) == []


async def test_a_credit_id_reused_for_other_content_is_refused_visibly(wallet) -> None:
    provider, _ = await provider_with(wallet, 100, recipients=0)
    event_id = new_id("cred")
    await wallet.on_credits(
        [AccountCredited(event_id=event_id, person_id=provider, amount_fen=70_000, occurred_at=NOON)]
    )
    other = AccountCredited(event_id=event_id, person_id=provider, amount_fen=1, occurred_at=NOON)
    (refusal,) = await wallet.on_credits([other])
    assert isinstance(refusal, Refused) and refusal.message is other and refusal.reason == "CONFLICT"
    assert (await wallet.store.snapshot(provider)).balance_fen == 70_100


async def test_balances_beyond_14_significant_digits_stay_exact(wallet) -> None:
    provider, _ = await provider_with(wallet, 1, recipients=0)
    credits = [
        AccountCredited(event_id=new_id(), person_id=provider, amount_fen=MAX_AMOUNT_FEN, occurred_at=NOON)
        for _ in range(1_000)
    ]
    events = await wallet.on_credits(credits)
    # Before: 10^15 + 1 came back as 10^15 (cjson keeps 14 significant digits).
    assert events[-1].balance_fen == 10**15 + 1
    assert (await wallet.store.snapshot(provider)).balance_fen == 10**15 + 1


async def test_the_quota_of_an_ended_relationship_is_released_when_its_successor_arrives_first(wallet) -> None:
    """(P, R) established (v2), 100 granted; R moves (terminated v3, from the relationship service's
    enrollment consumer); P asks again and R accepts (established v5, from its command consumer).
    The two publish independently, so v5 may overtake v3."""
    provider, _ = await provider_with(wallet, 10_000, recipients=0)
    recipient = new_person_id()
    await wallet.on_relationship_events([relationship_event(provider, recipient, "established", 2)])
    await grant(wallet, provider, recipient, 100)
    outputs = await wallet.on_relationship_events([relationship_event(provider, recipient, "established", 5)])
    outputs += await wallet.on_relationship_events([relationship_event(provider, recipient, "terminated", 3)])
    # Before: the 100 stayed frozen for good, and the new relationship could draw it.
    assert [(event.type, event.amount_fen) for event in outputs] == [("released", 100)]
    snapshot = await wallet.store.snapshot(provider)
    assert (snapshot.frozen_fen, snapshot.grants_fen.get(recipient, 0)) == (0, 0)
    assert (await draw(wallet, recipient, 100)).paid_fen == 0


async def test_a_reversal_of_a_claim_drawn_under_an_ended_relationship_goes_to_the_account(wallet) -> None:
    """The money goes back to the grant while the relationship it was drawn under lasts; one set
    up again since is another relationship."""
    provider, _ = await provider_with(wallet, 10_000, recipients=0)
    recipient = new_person_id()
    await wallet.on_relationship_events([relationship_event(provider, recipient, "established", 2)])
    await grant(wallet, provider, recipient, 100)
    answer = await draw(wallet, recipient, 60)
    await wallet.on_relationship_events([relationship_event(provider, recipient, "dissolved", 3)])
    await wallet.on_relationship_events([relationship_event(provider, recipient, "established", 5)])
    refund = RefundRequested(
        claim_day="20260302",
        request_id=new_id(),
        claim_id=new_id("rev"),
        original_claim_id=answer.claim_id,
        recipient_id=recipient,
        payers=answer.payers,
        requested_at=NOON,
    )
    (refunded,) = await wallet.on_refund_requests([refund])
    # Before: the 60 was frozen into a grant the provider never made under the new relationship.
    snapshot = await wallet.store.snapshot(provider)
    assert (refunded.amount_fen, snapshot.balance_fen, snapshot.frozen_fen) == (60, 10_000, 0)
