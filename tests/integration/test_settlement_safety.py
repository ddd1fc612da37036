"""The settlement's money-safety rules against the real Redis, through its handlers, with an
injected clock: who may reverse what, claim ids unique nationally, clearing counts and exact
totals, only ended months closed, input ids per topic, conflicts made visible, and the policy and
clearing commands refusing what they cannot mean."""

from __future__ import annotations

import json
from datetime import datetime
from types import SimpleNamespace

import pytest
from aiokafka import ConsumerRecord
from redis import Redis as SyncRedis
from redis.asyncio.connection import AbstractConnection
from typer.testing import CliRunner

from gongji.cli import app
from services.settlement.clearing import close_month
from services.settlement.handlers import SettlementHandlers
from services.settlement.store import SettlementStore
from shared.clock import FixedClock
from shared.contracts import (
    Claim,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    Payer,
    ReasonCode,
    RefundRequested,
    SettlementEvent,
)
from shared.credentials import redis_options
from shared.policy import POLICY_KEY
from shared.principals import OPERATOR
from shared.runtime import DeadLetterDecoder, Delivery, Refused
from shared.topics import province_claims, province_dead_letters, province_settlements
from tests.integration.conftest import integration_redis_url
from tests.support import new_id, new_person_id, new_reversal_id, through_claim_path, with_claim_id

NOON = datetime.fromisoformat("2026-03-02T12:00:00+08:00")
SHARDS = 4  # few shards, so that two recipients easily share one


@pytest.fixture
async def settlement(redis) -> SettlementHandlers:
    store = SettlementStore(redis, SHARDS)
    await store.load()
    return SettlementHandlers(store, FixedClock(NOON))


def enrollment(person_id: str, status: str = "normal", event_id: str | None = None) -> EnrollmentChanged:
    return EnrollmentChanged(
        event_id=event_id or new_id("enr"),
        person_id=person_id,
        insurance_type="resident",
        region="510100",
        status=status,
        occurred_at=NOON,
    )


async def insured(settlement: SettlementHandlers, near: str | None = None, far: str | None = None) -> str:
    """A recipient insured in 510100; `near`: in the same shard as that person, `far`: in another."""
    store = settlement.store
    while True:
        person = new_person_id()
        if near and store.shard_prefix(person) != store.shard_prefix(near):
            continue
        if far and store.shard_prefix(person) == store.shard_prefix(far):
            continue
        await settlement.on_enrollment([enrollment(person)])
        return person


def settle_claim(recipient: str, amount_fen: int = 10_000, **fields) -> Claim:
    service_region = fields.pop("service_region", "510100")
    return Claim.model_validate(
        with_claim_id(
            {
                "kind": "settle",
                "recipient_id": recipient,
                "recipient_region": "510100",
                "category": "institution",
                "institution_code": f"H{service_region}00001",
                "service_region": service_region,
                "amount_fen": amount_fen,
                "occurred_at": NOON.isoformat(),
                **fields,
            }
        )
    )


def now(settlement: SettlementHandlers) -> dict[str, str]:
    """A claim that occurs at the settlement's clock (a test that moves it)."""
    return {"occurred_at": settlement.clock.now().isoformat()}


def reverse_claim(recipient: str, reverses: str, **fields) -> Claim:
    return Claim.model_validate(
        {
            "claim_id": new_reversal_id(reverses),
            "kind": "reverse",
            "recipient_id": recipient,
            "reverses": reverses,
            "occurred_at": NOON.isoformat(),
            **fields,
        }
    )


def answer(request: DrawRequested, paid_fen: int, provider_region: str = "440300") -> DrawAnswered:
    """The wallet's answer: one provider (in `provider_region`) paid `paid_fen`."""
    payers = (
        [Payer(provider_id=new_person_id(), provider_region=provider_region, amount_fen=paid_fen)] if paid_fen else []
    )
    return DrawAnswered(
        event_id=new_id("answer"),
        claim_id=request.claim_id,
        recipient_id=request.recipient_id,
        requested_fen=request.amount_fen,
        paid_fen=paid_fen,
        payers=payers,
        reason=None if paid_fen == request.amount_fen else ReasonCode.NO_QUOTA,
        context=request.context,
        answered_at=NOON,
    )


async def settled(
    settlement: SettlementHandlers, claim: Claim, paid_fen: int | None = None, provider_region: str = "440300"
) -> SettlementEvent:
    (request,) = await through_claim_path(settlement, [claim])
    paid = claim.amount_fen if paid_fen is None else paid_fen
    (event,) = await through_claim_path(settlement, [answer(request, paid, provider_region)])
    return event


async def reverse(settlement: SettlementHandlers, recipient: str, reverses: str) -> list:
    sent = reverse_claim(recipient, reverses, occurred_at=settlement.clock.now().isoformat())
    return await through_claim_path(settlement, [sent])


def refused(outputs: list, reason: str) -> bool:
    """A single settlement event that pays nothing back and names `reason`."""
    return [
        (type(o), *(getattr(o, name, None) for name in ("status", "reason", "paid_fen", "payers"))) for o in outputs
    ] == [(SettlementEvent, "rejected", reason, 0, [])]


# ---- who may reverse what ------------------------------------------------------------------


async def test_a_reversal_of_a_reversal_is_not_reversible(settlement) -> None:
    recipient = await insured(settlement)
    before = await settlement.store.accumulators("2026-03")
    paid = await settled(settlement, settle_claim(recipient, 10_000), provider_region="120100")
    first = await reverse(settlement, recipient, paid.claim_id)
    assert [(type(o), getattr(o, "status", None)) for o in first] == [
        (SettlementEvent, "reversed"),
        (RefundRequested, None),
    ]
    assert refused(await reverse(settlement, recipient, first[0].claim_id), "NOT_REVERSIBLE")
    after = await settlement.store.accumulators("2026-03")
    assert after.get("12>51", 0) - before.get("12>51", 0) == 0  # paid once, taken back once
    # The refund is reconciled where its claim was: it carries the claim's category and regions.
    assert (first[0].category, first[0].service_region, first[0].recipient_region) == (
        paid.category,
        paid.service_region,
        paid.recipient_region,
    )


async def test_another_recipient_cannot_reverse_a_claim_in_the_same_shard_or_in_another(settlement) -> None:
    owner = await insured(settlement)
    paid = await settled(settlement, settle_claim(owner, 10_000))
    for other in (await insured(settlement, near=owner), await insured(settlement, far=owner)):
        outputs = await reverse(settlement, other, paid.claim_id)
        assert refused(outputs, "NOT_REVERSIBLE")
        assert outputs[0].requested_fen == 0  # nothing of another person's claim is told
    record = await settlement.store.claim(paid.claim_id)
    assert record is not None and record.reversed_by is None
    assert (await reverse(settlement, owner, paid.claim_id))[0].status == "reversed"


async def test_a_pending_claim_is_not_reversible_and_can_still_be_reversed_once_paid(settlement) -> None:
    recipient = await insured(settlement)
    (request,) = await through_claim_path(settlement, [settle_claim(recipient, 5_000)])  # the wallet has not answered
    assert refused(await reverse(settlement, recipient, request.claim_id), "NOT_REVERSIBLE")
    (paid,) = await through_claim_path(settlement, [answer(request, 5_000)])
    assert paid.status == "settled"
    assert (await reverse(settlement, recipient, request.claim_id))[0].paid_fen == 5_000


async def test_a_claim_that_paid_nothing_is_not_reversible(settlement) -> None:
    recipient = await insured(settlement)
    (not_allowed,) = await through_claim_path(settlement, [settle_claim(recipient, category="cash_withdrawal")])
    no_quota = await settled(settlement, settle_claim(recipient), paid_fen=0)
    assert (not_allowed.reason, no_quota.reason) == ("CATEGORY_NOT_ALLOWED", "NO_QUOTA")
    for claim in (not_allowed, no_quota):
        assert refused(await reverse(settlement, recipient, claim.claim_id), "NOT_REVERSIBLE")


async def test_a_partial_claim_is_reversible_and_only_once(settlement) -> None:
    recipient = await insured(settlement)
    # A stray `reverses` on a settle claim changes nothing: the kind decides.
    partial = await settled(settlement, settle_claim(recipient, 10_000, reverses="x"), paid_fen=4_000)
    assert partial.status == "partial"
    assert (await reverse(settlement, recipient, partial.claim_id))[0].paid_fen == 4_000
    assert refused(await reverse(settlement, recipient, partial.claim_id), "ALREADY_REVERSED")


async def test_a_claim_id_never_seen_stays_unknown(settlement) -> None:
    recipient = await insured(settlement)
    assert refused(await reverse(settlement, recipient, f"510100-{new_id('nowhere')}"), "UNKNOWN_CLAIM")


async def test_a_reversal_on_the_national_topic_is_told_to_the_province_that_sent_the_claim(settlement) -> None:
    """The province's books must hear of the refund of a claim it sent, whoever sent the refund."""
    recipient = await insured(settlement)
    claim = settle_claim(recipient, 6_000)
    (request,) = await settlement.on_claim_path([Delivery(province_claims("51"), claim)])
    paid = await through_claim_path(settlement, [answer(request, 6_000)])
    assert [getattr(output, "topic", None) for output in paid] == [None, province_settlements("51")]
    reversal = await reverse(settlement, recipient, claim.claim_id)
    assert [(type(output).__name__, getattr(output, "topic", None)) for output in reversal] == [
        ("SettlementEvent", None),
        ("ToTopic", province_settlements("51")),
        ("RefundRequested", None),
    ]
    assert reversal[1].message.status == "reversed" and reversal[1].message.paid_fen == 6_000
    # A refused reversal tells the province nothing of its claim.
    assert refused(await reverse(settlement, recipient, claim.claim_id), "ALREADY_REVERSED")


# ---- claim ids are unique nationally -------------------------------------------------------


async def test_a_claim_id_used_by_another_recipient_is_a_conflict_and_changes_nothing(settlement) -> None:
    first = await insured(settlement)
    second = await insured(settlement, far=first)
    claim = settle_claim(first, 10_000)
    await settled(settlement, claim)
    for reused in (
        settle_claim(second, 10_000, claim_id=claim.claim_id),
        reverse_claim(second, f"510100-{new_id()}", claim_id=claim.claim_id),
    ):
        (conflict,) = await through_claim_path(settlement, [reused])  # no draw request, nothing recorded
        assert (conflict.status, conflict.reason, conflict.recipient_id, conflict.cause_id) == (
            "rejected",
            "CONFLICT",
            second,
            claim.claim_id,
        )
    assert (await settlement.store.claim(claim.claim_id)).recipient_id == first  # the first stands
    (again,) = await through_claim_path(settlement, [claim])  # the owner's redelivery is still a duplicate
    assert (again.status, again.paid_fen) == ("settled", 10_000)


async def test_in_one_batch_the_first_recipient_to_use_a_claim_id_owns_it(settlement) -> None:
    first = await insured(settlement)
    second = await insured(settlement, far=first)
    claim = settle_claim(first)
    outputs = await through_claim_path(settlement, [claim, settle_claim(second, claim_id=claim.claim_id), claim])
    assert [type(o) for o in outputs] == [DrawRequested, SettlementEvent, DrawRequested]
    assert (outputs[1].reason, outputs[0].request_id) == ("CONFLICT", outputs[2].request_id)


async def test_a_reversal_naming_another_recipients_claim_in_the_same_batch_is_not_reversible(settlement) -> None:
    owner = await insured(settlement)
    other = await insured(settlement, far=owner)
    claim = settle_claim(owner)
    request, refusal = await through_claim_path(settlement, [claim, reverse_claim(other, claim.claim_id)])
    assert isinstance(request, DrawRequested) and refused([refusal], "NOT_REVERSIBLE")


async def test_a_batch_of_claims_takes_two_pipelined_round_trips(settlement, monkeypatch) -> None:
    recipients = [await insured(settlement) for _ in range(5)]
    paid = [await settled(settlement, settle_claim(recipient)) for recipient in recipients]
    writes = []  # every write to Redis, a command alone or a batch's
    send_packed_command = AbstractConnection.send_packed_command

    def counted(connection, command, *args, **kwargs):
        writes.append(command)
        return send_packed_command(connection, command, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    batch = [settle_claim(recipient) for recipient in recipients] + [
        reverse_claim(recipient, event.claim_id) for recipient, event in zip(recipients, paid, strict=True)
    ]
    outputs = await through_claim_path(settlement, batch)
    assert len(outputs) == 15 and len(writes) == 2


# ---- clearing ------------------------------------------------------------------------------


async def test_a_reversal_after_its_month_closed_changes_no_months_count_of_claims(settlement) -> None:
    recipient = await insured(settlement)
    pair = {"service_region": "520100"}  # 13 > 52: no other test clears this pair
    settlement.clock.set(datetime.fromisoformat("2025-10-31T23:00:00+08:00"))
    october = await settled(
        settlement, settle_claim(recipient, 3_000, **pair, **now(settlement)), provider_region="130100"
    )
    assert october.clearing_month == "2025-10"
    first_october = await close_month(settlement.store, "2025-10", datetime.fromisoformat("2025-11-01T00:00:00+08:00"))
    settlement.clock.set(datetime.fromisoformat("2025-11-03T09:00:00+08:00"))
    await settled(settlement, settle_claim(recipient, 1_000, **pair, **now(settlement)), provider_region="130100")
    (reversal, _) = await reverse(settlement, recipient, october.claim_id)
    assert (reversal.status, reversal.clearing_month) == ("reversed", "2025-11")  # taken back in the open month
    november = await close_month(settlement.store, "2025-11", datetime.fromisoformat("2025-12-01T00:00:00+08:00"))
    gross = [
        (r.payer_province, r.payee_province, r.amount_fen, r.claims, r.reversals) for r in november if r.row == "gross"
    ]
    assert gross == [("13", "52", -2_000, 1, 1)]
    assert {r.province: (r.amount_fen, r.claims, r.reversals) for r in november if r.row == "net"} == {
        "13": (2_000, 1, 1),
        "52": (-2_000, 1, 1),
    }
    again = await close_month(settlement.store, "2025-10", datetime.fromisoformat("2026-01-01T00:00:00+08:00"))
    assert again == first_october  # the closed statement never changes
    assert [(r.amount_fen, r.claims, r.reversals) for r in again if r.row == "gross"] == [(3_000, 1, 0)]


async def test_closing_keeps_totals_exact_beyond_fourteen_digits(settlement) -> None:
    recipient = await insured(settlement)
    settlement.clock.set(datetime.fromisoformat("2025-09-15T12:00:00+08:00"))
    claims = [settle_claim(recipient, 10**12, service_region="530100", **now(settlement)) for _ in range(100)]
    claims.append(settle_claim(recipient, 1, service_region="530100", **now(settlement)))
    requests = await through_claim_path(settlement, claims)
    await through_claim_path(settlement, [answer(request, request.amount_fen, "140100") for request in requests])
    rows = await close_month(settlement.store, "2025-09", datetime.fromisoformat("2025-10-01T00:00:00+08:00"))
    assert [(r.payer_province, r.payee_province, r.amount_fen, r.claims) for r in rows if r.row == "gross"] == [
        ("14", "53", 100_000_000_000_001, 101)
    ]
    assert {r.province: r.amount_fen for r in rows if r.row == "net"} == {
        "14": -100_000_000_000_001,
        "53": 100_000_000_000_001,
    }


async def test_a_month_that_has_not_ended_cannot_be_closed(settlement, redis) -> None:
    for month in ("2026-03", "2026-04", "2099-01"):
        with pytest.raises(ValueError, match=f"{month} has not ended"):
            await close_month(settlement.store, month, NOON)
    for prefix in settlement.store.all_shard_prefixes():
        assert not {b"2026-03", b"2026-04", b"2099-01"} & set(await redis.hkeys(f"{prefix}:closed"))


def test_the_clearing_command_refuses_a_month_that_has_not_ended(infrastructure) -> None:
    env = {
        "GONGJI_REDIS_URL": integration_redis_url(infrastructure.redis_url),
        "GONGJI_CLOCK_FIXED_AT": "2026-03-31T23:59:59+08:00",
        "GONGJI_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }  # were it not refused, no statement reaches the real topic
    result = CliRunner().invoke(app, ["clearing", "close", "2026-03"], env=env)
    assert result.exit_code == 1
    assert "2026-03 has not ended" in " ".join(result.output.split())


# ---- input ids per topic, output ids, conflicts made visible --------------------------------


async def test_enrollment_input_ids_are_kept_per_topic(settlement, redis) -> None:
    person = new_person_id()
    change = enrollment(person)
    await settlement.on_enrollment([change])
    # (the field "" holds when the generation of seen ids began: shared/prelude.lua)
    assert set(await redis.hkeys(f"stl:{{p:{person}}}:seen:enrollment")) == {b"", change.event_id.encode()}
    assert not await redis.exists(f"stl:{{p:{person}}}:seen")


async def test_an_enrollment_id_reused_for_other_content_is_refused_visibly(settlement, redis) -> None:
    person = new_person_id()
    change = enrollment(person)
    assert await settlement.on_enrollment([change, change]) == []  # a redelivery says nothing
    other = enrollment(person, status="suspended", event_id=change.event_id)
    (refusal,) = await settlement.on_enrollment([other])
    assert isinstance(refusal, Refused)
    assert (refusal.message, refusal.reason) == (other, ReasonCode.CONFLICT)
    assert person not in refusal.error
    assert await redis.hget(f"stl:{{p:{person}}}:enrollment", "status") == b"normal"


async def test_every_output_of_a_claims_story_has_its_own_id_and_names_its_input(settlement) -> None:
    recipient = await insured(settlement)
    claim = settle_claim(recipient)
    (request,) = await through_claim_path(settlement, [claim])
    (paid,) = await through_claim_path(settlement, [answer(request, claim.amount_fen)])
    reversal = reverse_claim(recipient, claim.claim_id)
    reversed_, refund = await through_claim_path(settlement, [reversal])
    (conflict,) = await through_claim_path(settlement, [settle_claim(recipient, 1, claim_id=claim.claim_id)])
    ids = [request.request_id, paid.event_id, reversed_.event_id, refund.request_id, conflict.event_id]
    assert len(set(ids)) == len(ids)
    assert (paid.cause_id, reversed_.cause_id, conflict.cause_id) == (claim.claim_id, reversal.claim_id, claim.claim_id)


# ---- policy command (sync tests: the command runs its own event loop) ------------------------


def policy_command(infrastructure, *args: str):
    env = {"GONGJI_REDIS_URL": integration_redis_url(infrastructure.redis_url)}
    return CliRunner().invoke(app, ["policy", "set", *args], env=env)


def stored_policy(infrastructure) -> dict:
    with SyncRedis.from_url(
        integration_redis_url(infrastructure.redis_url), **redis_options(infrastructure, OPERATOR.name)
    ) as client:
        return client.hgetall(POLICY_KEY)


@pytest.mark.parametrize(
    "option",
    [
        ["--close", "99"],
        ["--close", "5101"],
        ["--open", "999999"],
        ["--close", "51010"],
        ["--close", "shanghai"],
        ["--open", "00"],
    ],
)
def test_the_policy_command_refuses_codes_that_name_nothing(infrastructure, option) -> None:
    before = stored_policy(infrastructure)
    result = policy_command(infrastructure, "--close", "66", *option)
    assert result.exit_code == 1
    assert option[1] in result.output and "province" in result.output
    assert stored_policy(infrastructure) == before  # nothing changed, not even the valid --close 66


def test_the_policy_command_takes_a_province_or_a_region(infrastructure) -> None:
    assert policy_command(infrastructure, "--close", "66", "--close", "510100").exit_code == 0
    assert {"66", "510100"} <= set(stored_policy(infrastructure)[b"closed_regions"].decode().split())
    assert policy_command(infrastructure, "--open", "66", "--open", "510100").exit_code == 0
    assert not {"66", "510100"} & set(stored_policy(infrastructure)[b"closed_regions"].decode().split())


def province_record(province: str, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(
        topic=province_claims(province).name,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=[],
    )


async def test_a_claim_that_breaks_the_contract_is_answered_to_its_province_when_its_id_can_be_read(settlement):
    """A province's system waits for an answer: a claim it can name gets one on its own settlements
    topic (and the national one); a record it cannot name goes to its own dead-letter topic."""
    decoder = DeadLetterDecoder(
        "settlement",
        [province_claims("44")],
        settlement.clock,
        deliveries=True,
        answer_sender=settlement.answer_unreadable_claim,
    )
    patient = new_person_id()
    bad_check_digit = patient[:-1] + ("0" if patient[-1] != "0" else "1")
    claim = with_claim_id(
        {
            "kind": "settle",
            "recipient_id": bad_check_digit,
            "recipient_region": "440300",
            "category": "institution",
            "institution_code": "H44030500012",
            "service_region": "440300",
            "amount_fen": 12_850,
            "occurred_at": NOON.isoformat(),
        }
    )
    nested = b'{"claim_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    await decoder(
        SimpleNamespace(
            raw_message=(
                province_record("44", 1, json.dumps(claim).encode()),
                province_record("44", 2, b'{"claim_id": "broken'),
                province_record("44", 3, nested),
            )
        )
    )
    national, province, unreadable, too_deep = decoder.to_senders
    assert province.topic == province_settlements("44") and province.message == national
    assert (national.claim_id, national.status, national.reason, national.requested_fen, national.recipient_id) == (
        claim["claim_id"],
        "rejected",
        "INVALID_MESSAGE",
        12_850,
        bad_check_digit,
    )
    assert "recipient_id" in national.error and "check" in national.error
    assert unreadable.topic == too_deep.topic == province_dead_letters("44")
    again = DeadLetterDecoder(
        "settlement",
        [province_claims("44")],
        settlement.clock,
        deliveries=True,
        answer_sender=settlement.answer_unreadable_claim,
    )
    await again(
        SimpleNamespace(
            raw_message=(
                province_record("44", 1, json.dumps(claim).encode()),
                province_record("44", 7, json.dumps(claim).encode()),
            )
        )
    )
    assert again.to_senders[0].event_id == national.event_id  # the same record again: the same answer
    assert again.to_senders[2].event_id != national.event_id  # the same bytes sent again: an answer of its own


async def test_a_resident_premium_is_refused_for_an_employee_insured_recipient_and_paid_for_a_resident(settlement):
    """Rule 12(c), read from settlement's own copy of the enrollment (its insurance type)."""
    resident = await insured(settlement)
    employee = new_person_id()
    await settlement.on_enrollment([enrollment(employee).model_copy(update={"insurance_type": "employee"})])
    (refused,) = await through_claim_path(
        settlement, [settle_claim(employee, 10_500, category="resident_premium", institution_code=None)]
    )
    assert (refused.status, refused.reason) == ("rejected", "CATEGORY_NOT_ALLOWED")
    (asked,) = await through_claim_path(
        settlement, [settle_claim(employee, 10_500, category="ltc_premium", institution_code=None)]
    )
    assert isinstance(asked, DrawRequested)  # long-term care: either scheme
    (asked,) = await through_claim_path(
        settlement, [settle_claim(resident, 10_500, category="resident_premium", institution_code=None)]
    )
    assert isinstance(asked, DrawRequested)
