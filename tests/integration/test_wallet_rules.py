"""The wallet's rules against the real Redis, through its handlers, with an injected clock:
each limit at its edge, races for the same balance, redelivered draws, releases and reversals."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from services.wallet.domain import account_breaches
from services.wallet.handlers import WalletHandlers
from services.wallet.store import WalletStore
from shared.clock import FixedClock
from shared.contracts import (
    AccountCredited,
    AccountSpent,
    ClaimContext,
    DrawRequested,
    EnrollmentChanged,
    Payer,
    RefundRequested,
    RelationshipEvent,
    SupervisionActed,
    WalletCommand,
)
from shared.policy import PolicyCache
from tests.support import new_id, new_person_id

NOON = datetime.fromisoformat("2026-03-02T12:00:00+08:00")


@pytest.fixture
async def wallet(redis) -> WalletHandlers:
    store = WalletStore(redis)
    await store.load()
    return WalletHandlers(store, FixedClock(NOON), PolicyCache(redis, 0))


async def provider_with(wallet: WalletHandlers, balance_fen: int, recipients: int = 1) -> tuple[str, list[str]]:
    provider = new_person_id()
    await wallet.on_enrollment(
        [
            EnrollmentChanged(
                event_id=new_id(),
                person_id=provider,
                insurance_type="employee",
                region="440300",
                status="normal",
                occurred_at=NOON,
            )
        ]
    )
    await wallet.on_credits(
        [AccountCredited(event_id=new_id(), person_id=provider, amount_fen=balance_fen, occurred_at=NOON)]
    )
    people = [new_person_id() for _ in range(recipients)]
    for recipient in people:
        await relationship(wallet, provider, recipient, "established")
    return provider, people


async def relationship(wallet: WalletHandlers, provider: str, recipient: str, kind: str) -> list:
    return await wallet.on_relationship_events(
        [
            RelationshipEvent(
                event_id=new_id(),
                cause_id=new_id(),
                type=kind,
                provider_id=provider,
                recipient_id=recipient,
                recipient_region="510100",
                kinship="parent",
                occurred_at=NOON,
            )
        ]
    )


def grant_command(provider: str, recipient: str, amount_fen: int, region: str = "510100", **fields) -> WalletCommand:
    return WalletCommand(
        command_id=fields.pop("command_id", new_id()),
        action="grant",
        actor_id=provider,
        provider_id=provider,
        recipient_id=recipient,
        recipient_region=region,
        amount_fen=amount_fen,
        requested_at=NOON,
    )


async def grant(wallet: WalletHandlers, provider: str, recipient: str, amount_fen: int, **fields):
    (event,) = await wallet.on_commands([grant_command(provider, recipient, amount_fen, **fields)])
    return event


async def draw(wallet: WalletHandlers, recipient: str, amount_fen: int, claim_id: str | None = None):
    claim_id = claim_id or new_id("claim")
    outputs = await wallet.on_draw_requests(
        [
            DrawRequested(
                request_id=f"r-{claim_id}",
                claim_id=claim_id,
                recipient_id=recipient,
                amount_fen=amount_fen,
                context=context(amount_fen),
                requested_at=NOON,
            )
        ]
    )
    return outputs[-1]


def context(amount_fen: int) -> ClaimContext:
    return ClaimContext(requested_fen=amount_fen, service_region="510100", claim_day="20260302")


async def assert_sound(wallet: WalletHandlers, *people: str) -> None:
    for person in people:
        assert account_breaches(await wallet.store.snapshot(person)) == []


async def test_a_grant_freezes_quota_and_200_000_fen_is_the_most_at_once(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 1_000_000)
    over = await grant(wallet, provider, recipient, 200_001)
    assert (over.type, over.reason) == ("grant_rejected", "TRANSFER_AMOUNT_OVER_LIMIT")
    granted = await grant(wallet, provider, recipient, 200_000)
    assert (granted.type, granted.balance_fen, granted.frozen_fen) == ("granted", 1_000_000, 200_000)
    await assert_sound(wallet, provider)


async def test_the_third_grant_of_a_day_passes_and_the_fourth_is_refused(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 1_000_000)
    results = [await grant(wallet, provider, recipient, 100) for _ in range(4)]
    assert [event.type for event in results] == ["granted"] * 3 + ["grant_rejected"]
    assert results[3].reason == "DAILY_TRANSFER_LIMIT"


async def test_only_successful_grants_count_towards_the_daily_limit(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 1_000)
    refused = [await grant(wallet, provider, recipient, amount) for amount in (5_000, 200_001, 1_001)]
    assert [event.reason for event in refused] == [
        "INSUFFICIENT_BALANCE",
        "TRANSFER_AMOUNT_OVER_LIMIT",
        "INSUFFICIENT_BALANCE",
    ]
    assert [(await grant(wallet, provider, recipient, 100)).type for _ in range(3)] == ["granted"] * 3


async def test_the_day_turns_at_midnight_asia_shanghai(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 1_000_000)
    wallet.clock.set(datetime.fromisoformat("2026-03-02T23:59:59+08:00"))
    assert [(await grant(wallet, provider, recipient, 100)).type for _ in range(4)][-1] == "grant_rejected"
    wallet.clock.set(datetime.fromisoformat("2026-03-03T00:00:00+08:00"))
    assert (await grant(wallet, provider, recipient, 100)).type == "granted"
    # 00:00 in Shanghai is 16:00 UTC the day before: the UTC date must not decide.
    wallet.clock.set(datetime.fromisoformat("2026-03-03T15:59:59+00:00"))
    assert [(await grant(wallet, provider, recipient, 100)).type for _ in range(2)] == ["granted", "granted"]
    assert (await grant(wallet, provider, recipient, 100)).reason == "DAILY_TRANSFER_LIMIT"
    wallet.clock.set(NOON)


async def test_daily_counts_follow_the_injected_clock_not_real_time(wallet, redis) -> None:
    """A count never expires in real time (under a fixed clock a 4th grant once passed ~25 h later):
    days older than a week, by the injected clock, are dropped as grants are made."""
    provider, (recipient,) = await provider_with(wallet, 1_000_000)
    for _ in range(3):
        await grant(wallet, provider, recipient, 100)
    counts = f"wal:{{p:{provider}}}:grants-by-day"
    assert await redis.ttl(counts) == -1
    assert (await grant(wallet, provider, recipient, 100)).reason == "DAILY_TRANSFER_LIMIT"
    wallet.clock.set(datetime.fromisoformat("2026-03-09T12:00:00+08:00"))
    assert (await grant(wallet, provider, recipient, 100)).type == "granted"
    assert await redis.hgetall(counts) == {b"20260302": b"3", b"20260309": b"1"}  # a week is kept
    wallet.clock.set(datetime.fromisoformat("2026-03-10T12:00:00+08:00"))
    await grant(wallet, provider, recipient, 100)
    assert await redis.hgetall(counts) == {b"20260309": b"1", b"20260310": b"1"}
    wallet.clock.set(NOON)


async def test_only_available_money_can_be_granted(wallet) -> None:
    provider, (first, second) = await provider_with(wallet, 150_000, recipients=2)
    assert (await grant(wallet, provider, first, 100_000)).type == "granted"
    refused = await grant(wallet, provider, second, 60_000)
    assert (refused.reason, refused.balance_fen, refused.frozen_fen) == ("INSUFFICIENT_BALANCE", 150_000, 100_000)


async def test_the_recipient_must_be_related_and_where_stated(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    assert (await grant(wallet, provider, new_person_id(), 100)).reason == "RELATIONSHIP_NOT_ACTIVE"
    assert (await grant(wallet, provider, recipient, 100, region="510700")).reason == "RECIPIENT_MISMATCH"


async def test_the_provider_must_be_employee_insured_and_normal(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    for status, reason in (("suspended", "PROVIDER_STATUS_ABNORMAL"),):
        await wallet.on_enrollment(
            [
                EnrollmentChanged(
                    event_id=new_id(),
                    person_id=provider,
                    insurance_type="employee",
                    region="440300",
                    status=status,
                    occurred_at=NOON,
                )
            ]
        )
        assert (await grant(wallet, provider, recipient, 100)).reason == reason
    await wallet.on_enrollment(
        [
            EnrollmentChanged(
                event_id=new_id(),
                person_id=provider,
                insurance_type="resident",
                region="440300",
                status="normal",
                occurred_at=NOON,
            )
        ]
    )
    assert (await grant(wallet, provider, recipient, 100)).reason == "PROVIDER_NOT_EMPLOYEE"


async def test_concurrent_grants_never_overdraw(wallet) -> None:
    provider, recipients = await provider_with(wallet, 250_000, recipients=3)
    events = await asyncio.gather(*(grant(wallet, provider, recipient, 100_000) for recipient in recipients))
    assert sorted(event.type for event in events) == ["grant_rejected", "granted", "granted"]
    snapshot = await wallet.store.snapshot(provider)
    assert (snapshot.balance_fen, snapshot.frozen_fen) == (250_000, 200_000)


async def test_concurrent_grants_never_pass_three_a_day(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 1_000_000)
    events = await asyncio.gather(*(grant(wallet, provider, recipient, 1_000) for _ in range(8)))
    assert sum(event.type == "granted" for event in events) == 3
    assert (await wallet.store.snapshot(provider)).frozen_fen == 3_000


async def test_a_grant_redelivered_applies_once_and_a_conflict_changes_nothing(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 1_000_000)
    command = grant_command(provider, recipient, 5_000)
    first = await wallet.on_commands([command])
    again = await wallet.on_commands([command, command])
    assert again == first * 2  # the same event, same event_id, re-published
    conflict = await grant(wallet, provider, recipient, 6_000, command_id=command.command_id)
    assert (conflict.type, conflict.reason) == ("grant_rejected", "CONFLICT")
    assert (await wallet.store.snapshot(provider)).frozen_fen == 5_000


async def test_spending_never_touches_frozen_quota(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 70_000)
    spend = AccountSpent(event_id=new_id(), person_id=provider, amount_fen=30_001, occurred_at=NOON)
    (refused,) = await wallet.on_spends([spend])
    assert (refused.type, refused.reason) == ("spend_rejected", "INSUFFICIENT_BALANCE")
    (spent,) = await wallet.on_spends(
        [AccountSpent(event_id=new_id(), person_id=provider, amount_fen=30_000, occurred_at=NOON)]
    )
    assert (spent.type, spent.balance_fen, spent.frozen_fen) == ("spent", 70_000, 70_000)
    await assert_sound(wallet, provider)


async def test_a_draw_redelivered_many_times_pays_once(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 50_000)
    claim_id = new_id("claim")
    answers = await asyncio.gather(*(draw(wallet, recipient, 12_850, claim_id) for _ in range(20)))
    answers += [await draw(wallet, recipient, 12_850, claim_id) for _ in range(20)]
    assert {answer.event_id for answer in answers} == {answers[0].event_id}
    assert answers[0].paid_fen == 12_850
    snapshot = await wallet.store.snapshot(provider)
    assert (snapshot.balance_fen, snapshot.frozen_fen, snapshot.grants_fen[recipient]) == (87_150, 37_150, 37_150)


async def test_draws_take_the_earliest_grant_first_and_report_self_pay(wallet) -> None:
    first_provider, (recipient,) = await provider_with(wallet, 100_000)
    second_provider = (await provider_with(wallet, 100_000, recipients=0))[0]
    await relationship(wallet, second_provider, recipient, "established")
    await grant(wallet, first_provider, recipient, 10_000)
    wallet.clock.set(datetime.fromisoformat("2026-03-02T12:00:01+08:00"))
    await grant(wallet, second_provider, recipient, 5_000)
    wallet.clock.set(NOON)
    answer = await draw(wallet, recipient, 18_000)
    assert [(payer.provider_id, payer.amount_fen) for payer in answer.payers] == [
        (first_provider, 10_000),
        (second_provider, 5_000),
    ]
    assert (answer.paid_fen, answer.reason) == (15_000, "NO_QUOTA")
    assert all(payer.provider_region == "440300" for payer in answer.payers)


async def test_release_on_relationship_end_returns_the_unused_quota_once(wallet) -> None:
    for ending in ("dissolved", "terminated"):
        provider, (recipient,) = await provider_with(wallet, 100_000)
        await grant(wallet, provider, recipient, 40_000)
        await draw(wallet, recipient, 15_000)
        event = RelationshipEvent(
            event_id=new_id(),
            cause_id=new_id(),
            type=ending,
            provider_id=provider,
            recipient_id=recipient,
            kinship="parent",
            occurred_at=NOON,
        )
        (released,) = await wallet.on_relationship_events([event])
        assert (released.type, released.amount_fen, released.balance_fen, released.frozen_fen) == (
            "released",
            25_000,
            85_000,
            0,
        )
        # Redelivered: the same event (same id) is re-published, the quota is not released twice.
        assert await wallet.on_relationship_events([event]) == [released]
        assert (await wallet.store.snapshot(provider)).balance_fen == 85_000
        assert (await draw(wallet, recipient, 100)).paid_fen == 0
        await assert_sound(wallet, provider)


async def test_a_reversal_goes_back_to_the_grant_while_the_relationship_lasts(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 40_000)
    answer = await draw(wallet, recipient, 15_000)
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
    assert (refunded.amount_fen, refunded.balance_fen, refunded.frozen_fen, refunded.refunded_to) == (
        15_000,
        100_000,
        40_000,
        "grant",
    )
    assert await wallet.on_refund_requests([refund]) == [refunded]  # redelivered: the same, once
    await assert_sound(wallet, provider)


async def test_a_reversal_after_the_relationship_ended_goes_to_the_providers_account(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 40_000)
    answer = await draw(wallet, recipient, 15_000)
    await relationship(wallet, provider, recipient, "dissolved")
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
    assert (refunded.amount_fen, refunded.balance_fen, refunded.frozen_fen, refunded.refunded_to) == (
        15_000,
        100_000,
        0,
        "account",
    )
    # A second reversal of the same claim under another id finds nothing left to return.
    again = RefundRequested(
        claim_day="20260302",
        request_id=new_id(),
        claim_id=new_id("rev"),
        original_claim_id=answer.claim_id,
        recipient_id=recipient,
        payers=answer.payers,
        requested_at=NOON,
    )
    assert await wallet.on_refund_requests([again]) == []
    await assert_sound(wallet, provider)


async def test_supervision_freezes_grants_spends_and_draws(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 40_000)
    freeze = SupervisionActed(event_id=new_id(), person_id=provider, action="freeze", reason="misuse", occurred_at=NOON)
    (frozen,) = await wallet.on_supervision([freeze])
    assert frozen.type == "frozen"
    assert (await grant(wallet, provider, recipient, 100)).reason == "ACCOUNT_FROZEN"
    (spend,) = await wallet.on_spends(
        [AccountSpent(event_id=new_id(), person_id=provider, amount_fen=1, occurred_at=NOON)]
    )
    assert spend.reason == "ACCOUNT_FROZEN"
    assert (await draw(wallet, recipient, 1_000)).paid_fen == 0
    await wallet.on_supervision(
        [SupervisionActed(event_id=new_id(), person_id=provider, action="unfreeze", reason="cleared", occurred_at=NOON)]
    )
    assert (await draw(wallet, recipient, 1_000)).paid_fen == 1_000


async def test_a_frozen_recipient_draws_nothing(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 40_000)
    await wallet.on_supervision(
        [SupervisionActed(event_id=new_id(), person_id=recipient, action="freeze", reason="misuse", occurred_at=NOON)]
    )
    answer = await draw(wallet, recipient, 1_000)
    assert (answer.paid_fen, answer.reason) == (0, "ACCOUNT_FROZEN")


async def test_a_refund_names_the_providers_it_returns_to(wallet) -> None:
    provider, (recipient,) = await provider_with(wallet, 100_000)
    await grant(wallet, provider, recipient, 40_000)
    answer = await draw(wallet, recipient, 5_000)
    assert answer.payers == [Payer(provider_id=provider, provider_region="440300", amount_fen=5_000)]


async def test_the_atomic_step_refuses_what_a_grant_may_not_do_even_if_the_python_check_regressed(
    wallet, monkeypatch
) -> None:
    """Every limit that guards money is refused where the money moves, in the Redis step: the actor,
    the 2,000-yuan cap (and the count and a frozen account, which only the step can know)."""
    monkeypatch.setattr("services.wallet.handlers.check_grant", lambda command: None)
    provider, (recipient,) = await provider_with(wallet, 1_000_000)
    stranger = new_person_id()
    by_someone_else = grant_command(provider, recipient, 1_000).model_copy(update={"actor_id": stranger})
    (refused,) = await wallet.on_commands([by_someone_else])
    assert (refused.type, refused.reason) == ("grant_rejected", "NOT_AUTHORIZED")
    over = await grant(wallet, provider, recipient, 200_001)
    assert (over.type, over.reason) == ("grant_rejected", "TRANSFER_AMOUNT_OVER_LIMIT")
    at_the_cap = await grant(wallet, provider, recipient, 200_000)
    assert (at_the_cap.type, at_the_cap.frozen_fen) == ("granted", 200_000)
