"""The deep audit against planted breaches. Each test builds a small consistent world through the
three services' handlers (Redis database 13, emptied first; the records kept as Kafka would keep
them), checks that the audit finds it valid, then breaks one invariant, in Redis or in the topics,
the way a defect would, and expects the audit to name the invariant and the ids."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest

from gongji.audit import audit as quick_audit
from gongji.audit.books import Record, rebuild
from gongji.audit.compare import (
    ACCOUNT,
    ANSWER,
    CLAIM,
    CLEARING,
    HISTORY,
    REFUND,
    RELATIONSHIP,
    REPUBLISHED,
    AuditReport,
    Difference,
    compare,
)
from gongji.audit.rules import RULE
from gongji.audit.state import read_state
from gongji.audit.window import Window
from gongji.simulation.network import dead_letter_of
from services.settlement import handlers
from services.settlement.domain import Assessment
from services.wallet.domain import GrantLimits
from shared.contracts import (
    AccountCredited,
    Claim,
    EnrollmentChanged,
    ReasonCode,
    SettlementEvent,
    SupervisionActed,
    WalletCommand,
    WalletEvent,
)
from shared.runtime import Refused
from shared.settings import Settings
from shared.topics import (
    ACCOUNT_CREDITS,
    CLAIMS,
    DEAD_LETTERS,
    DRAW_REQUESTS,
    ENROLLMENT,
    RELATIONSHIP_EVENTS,
    SETTLEMENTS,
    SUPERVISION,
    WALLET_COMMANDS,
    WALLET_EVENTS,
    province_claims,
)
from shared.topics import (
    CLEARING as CLEARING_TOPIC,
)
from shared.window import ClaimWindow
from tests.integration.bus import Bus, bus_on_its_own_database
from tests.integration.saga import SHARDS
from tests.support import another_claim_id, new_id

AUDIT_DATABASE = 13
REGION = "510100"  # the recipient's, and where the care is given (province 51)
MONTH, AFTER_THE_MONTH = "2026-03", datetime.fromisoformat("2026-04-01T00:00:00+08:00")


@pytest.fixture
async def bus(infrastructure):
    async with bus_on_its_own_database(infrastructure, AUDIT_DATABASE) as bus:
        yield bus


@dataclass
class Story:
    """Two providers in provinces 44 and 12 share with one recipient in 51: one claim paid by the
    first, one split between both, the first reversed (back into the first's quota), a spend, the
    second relationship dissolved (its quota released), and the month closed."""

    recipient: str
    first: str
    second: str
    reversed_claim: str
    split_claim: str
    reversal: str


async def story(bus: Bus) -> Story:
    recipient = await bus.person("resident", REGION)
    first, second = await bus.person("employee", "440300"), await bus.person("employee", "120100")
    for provider in (first, second):
        await bus.credit(provider, 1_000_000)
        await bus.establish(provider, recipient, REGION)
        assert (await bus.grant(provider, recipient, REGION, 50_000)).type == "granted"
        bus.clock.set(bus.clock.now() + timedelta(seconds=1))  # the first grant draws first
    reversed_claim, split_claim = bus.saga.settle(recipient, 30_000), bus.saga.settle(recipient, 40_000)
    for claim in (reversed_claim, split_claim):
        await bus.claim(claim)
    reversal = bus.saga.reverse(recipient, reversed_claim.claim_id)
    await bus.claim(reversal)
    await bus.command("dissolve", second, second, recipient)
    await bus.close(MONTH, AFTER_THE_MONTH)
    return Story(recipient, first, second, reversed_claim.claim_id, split_claim.claim_id, reversal.claim_id)


async def related_pair(bus: Bus) -> tuple[str, str]:
    """A provider with 100,000 fen and an established relationship to a recipient in REGION."""
    recipient = await bus.person("resident", REGION)
    provider = await bus.person("employee", "440300")
    await bus.credit(provider, 100_000)
    await bus.establish(provider, recipient, REGION)
    return provider, recipient


async def deep(bus: Bus, records: list[Record] | None = None) -> AuditReport:
    window = Window.from_settings(Settings(), bus.saga.clock.now())
    books = rebuild(bus.records if records is None else records)
    return compare(books, await read_state(bus.redis, window.today), window)


def named(report: AuditReport, invariant: str, **ids: str) -> list[Difference]:
    assert not report.valid and report.first is not None
    return [
        difference
        for difference in report.differences
        if difference.invariant == invariant and all(difference.ids.get(k) == v for k, v in ids.items())
    ]


def records_of(bus: Bus, topic: str, **fields) -> list[Record]:
    return [
        record
        for record in bus.records
        if record.topic == topic and all((record.value or {}).get(k) == v for k, v in fields.items())
    ]


def changed(record: Record, **changes) -> Record:
    """The record as a defect would have written it, in its place."""
    return replace(record, value={**(record.value or {}), **changes})


def again(record: Record, **changes) -> Record:
    """The record published once more, later, with `changes`."""
    return replace(changed(record, **changes), offset=record.offset + 10_000)


async def test_a_consistent_world_is_valid_and_counted(bus: Bus) -> None:
    await story(bus)
    report = await deep(bus)
    assert report.valid, report.differences
    assert report.pending == []
    counts = report.counts
    assert (counts["claims_final"], counts["reversals"], counts["months"], counts["relationships"]) == (2, 1, 1, 2)
    assert counts["persons"] == 3 and counts["foreign_records"] == 0


# ---- account: balance, frozen quota, quotas -----------------------------------------------------


async def test_money_added_to_an_account_and_its_totals_in_redis_is_named(bus: Bus) -> None:
    world = await story(bus)
    account = f"wal:{{p:{world.first}}}:account"
    await bus.redis.hincrby(account, "balance", 100)
    await bus.redis.hincrby(account, "credited", 100)
    assert (
        await quick_audit(bus.redis, SHARDS, Window.from_settings(Settings(), bus.clock.now()))
    ).clean  # consistent within Redis: re-reading sees nothing
    report = await deep(bus)
    (balance,) = [d for d in named(report, ACCOUNT, person=world.first) if d.what.startswith("balance")]
    assert balance.found - balance.expected == 100
    assert [d for d in named(report, ACCOUNT, person=world.first) if d.what.startswith("credited")]


async def test_a_quota_restored_in_redis_is_named(bus: Bus) -> None:
    world = await story(bus)
    await bus.redis.hincrby(f"wal:{{p:{world.second}}}:grants", world.recipient, 5_000)
    await bus.redis.hincrby(f"wal:{{p:{world.second}}}:account", "frozen", 5_000)
    assert (
        await quick_audit(bus.redis, SHARDS, Window.from_settings(Settings(), bus.clock.now()))
    ).clean  # frozen = Σ quotas still holds
    report = await deep(bus)
    assert named(report, ACCOUNT, provider=world.second, recipient=world.recipient)
    assert named(report, ACCOUNT, person=world.second)  # frozen
    assert named(report, RELATIONSHIP, provider=world.second, recipient=world.recipient)  # quota after the end


# ---- claims: paid = Σ debits = Σ payers, once -----------------------------------------------------


async def test_a_debit_published_twice_under_two_ids_is_named_while_another_claim_is_pending(bus: Bus) -> None:
    world = await story(bus)
    drawing = bus.saga.settle(world.recipient, 10_000)
    await bus.claim(drawing, hold=frozenset({DRAW_REQUESTS}))  # the old audit skipped its check for this
    (debit,) = records_of(bus, WALLET_EVENTS.name, type="debited", claim_id=world.split_claim, provider_id=world.first)
    report = await deep(bus, [*bus.records, again(debit, event_id=new_id())])
    (twice, *_) = named(report, CLAIM, claim=world.split_claim, provider=world.first)
    assert twice.what == "a provider was debited more than once for a claim"
    assert {"claim": drawing.claim_id} in [pending.ids for pending in report.pending]


async def test_a_claim_record_changed_in_redis_is_named(bus: Bus) -> None:
    world = await story(bus)
    claims = bus.saga.sstore.claims_key(world.recipient, "20260302")
    record = json.loads(await bus.redis.hget(claims, world.split_claim))
    record["result"]["paid"] = 1
    await bus.redis.hset(claims, world.split_claim, json.dumps(record))
    assert named(await deep(bus), CLAIM, claim=world.split_claim)


async def test_a_result_whose_payers_do_not_add_up_is_named(bus: Bus) -> None:
    world = await story(bus)
    (result,) = records_of(bus, SETTLEMENTS.name, claim_id=world.split_claim)
    records = [changed(record, paid_fen=39_000) if record is result else record for record in bus.records]
    report = await deep(bus, records)
    assert {d.what for d in named(report, CLAIM, claim=world.split_claim)} >= {
        "the payers do not add up to what was paid",
        "the published result differs from settlement's record",
    }


# ---- reversals: refunded = paid, to the right recipient's quota or account ----------------------


async def test_a_reversal_whose_refund_gives_nothing_back_is_named(bus: Bus) -> None:
    provider, recipient = await related_pair(bus)
    await bus.grant(provider, recipient, REGION, 50_000)
    claim = bus.saga.settle(recipient, 30_000)
    await bus.claim(claim)
    assert (await deep(bus)).valid
    # A defect loses what the claim drew before the reversal comes: the refund finds nothing.
    await bus.redis.hdel(f"wal:{{p:{provider}}}:takes:20260302", claim.claim_id)
    reversal = bus.saga.reverse(recipient, claim.claim_id)
    await bus.claim(reversal)
    assert (
        await quick_audit(bus.redis, SHARDS, Window.from_settings(Settings(), bus.clock.now()))
    ).clean  # it only ever flagged an over-refund
    (short,) = named(await deep(bus), REFUND, claim=claim.claim_id, provider=provider)
    assert (short.what, short.expected, short.found, short.ids["reversal"]) == (
        "a refund gave nothing back",
        30_000,
        0,
        reversal.claim_id,
    )


async def test_a_refund_published_twice_under_two_ids_is_named(bus: Bus) -> None:
    world = await story(bus)
    (refund,) = records_of(bus, WALLET_EVENTS.name, type="refunded", claim_id=world.reversed_claim)
    report = await deep(bus, [*bus.records, again(refund, event_id=new_id())])
    assert named(report, REFUND, claim=world.reversed_claim, provider=world.first)


async def test_a_refund_into_another_recipients_quota_is_named(bus: Bus) -> None:
    world = await story(bus)
    (refund,) = records_of(bus, WALLET_EVENTS.name, type="refunded", claim_id=world.reversed_claim)
    assert refund.value["refunded_to"] == "grant"  # the relationship lasts
    stranger = await bus.person("resident", REGION)
    records = [changed(r, recipient_id=stranger) if r is refund else r for r in bus.records]
    report = await deep(bus, records)
    assert named(report, REFUND, claim=world.reversed_claim, provider=world.first)
    assert named(report, ACCOUNT, provider=world.first, recipient=stranger)


# ---- relationships: the same state in both services ---------------------------------------------


async def test_a_relationship_the_wallet_lost_is_named(bus: Bus) -> None:
    world = await story(bus)
    await bus.redis.hdel(f"wal:{{p:{world.first}}}:relationships", world.recipient)
    (lost,) = named(await deep(bus), RELATIONSHIP, provider=world.first, recipient=world.recipient)
    assert (lost.expected, lost.found) == ("active", "ended")


async def test_a_relationship_the_relationship_service_revived_is_named(bus: Bus) -> None:
    world = await story(bus)
    revived = {"state": "active", "kinship": "parent", "recipient_region": REGION, "since": "2026-03-02T12:00:00+08:00"}
    await bus.redis.hset(f"rel:{{p:{world.second}}}:rels", world.recipient, json.dumps(revived))
    (revival,) = named(await deep(bus), RELATIONSHIP, provider=world.second, recipient=world.recipient)
    assert (revival.expected, revival.found) == ("ended", "active")


# ---- clearing: per month and province pair ------------------------------------------------------


async def test_an_accumulator_pair_no_claim_made_is_named(bus: Bus) -> None:
    world = await story(bus)
    clearing = f"{bus.saga.sstore.shard_prefix(world.recipient)}:clearing:{MONTH}"
    await bus.redis.hincrby(clearing, "11>51", 500)
    await bus.redis.hincrby(clearing, "11>51#claims", 1)
    report = await deep(bus)
    (extra,) = named(report, CLEARING, month=MONTH, pair="11>51")
    assert (extra.expected, extra.found) == (None, (500, 1, 0))
    assert [d for d in named(report, CLEARING, month=MONTH) if d.what == "a month changed after it was closed"]


async def test_a_statement_whose_net_rows_do_not_sum_to_zero_is_named(bus: Bus) -> None:
    await story(bus)
    (net, *_) = records_of(bus, CLEARING_TOPIC.name, row="net")
    records = [changed(r, amount_fen=r.value["amount_fen"] + 1) if r is net else r for r in bus.records]
    report = await deep(bus, records)
    assert {d.what for d in named(report, CLEARING, month=MONTH)} >= {
        "a statement's net rows do not sum to zero",
        "a statement's net row differs from the settlements of the month",
    }


# ---- grants per day, from the events ------------------------------------------------------------


async def test_a_fourth_grant_in_a_day_is_named_though_the_counter_agrees(bus: Bus) -> None:
    provider, recipient = await related_pair(bus)
    granted = [await bus.grant(provider, recipient, REGION, 1_000) for _ in range(3)]
    await bus.redis.delete(f"wal:{{p:{provider}}}:grants-by-day")  # the counter lost: the limit no longer holds
    granted.append(await bus.grant(provider, recipient, REGION, 1_000))
    assert [event.type for event in granted] == ["granted"] * 4
    assert (
        await quick_audit(bus.redis, SHARDS, Window.from_settings(Settings(), bus.clock.now()))
    ).clean  # it counted from the very counter
    (too_many,) = named(await deep(bus), RULE, provider=provider, day="20260302")
    assert (too_many.expected, too_many.found) == (3, 4)
    assert too_many.ids["commands"].split() == sorted(event.cause_id for event in granted)


# ---- answers and outputs ------------------------------------------------------------------------


async def test_a_credit_whose_input_is_missing_is_named(bus: Bus) -> None:
    world = await story(bus)
    (credit,) = records_of(bus, ACCOUNT_CREDITS.name, person_id=world.second)
    assert credit.offset > 0  # (a topic without its first records is another difference)
    report = await deep(bus, [record for record in bus.records if record is not credit])
    (orphan,) = report.differences
    assert (orphan.invariant, orphan.ids["person"]) == (ANSWER, world.second)
    assert (orphan.what, orphan.ids["input"]) == ("an output names no input", credit.value["event_id"])


async def test_a_credit_answered_with_another_amount_is_named(bus: Bus) -> None:
    world = await story(bus)
    (credited,) = records_of(bus, WALLET_EVENTS.name, type="credited", provider_id=world.first)
    report = await deep(bus, [changed(r, amount_fen=2_000_000) if r is credited else r for r in bus.records])
    assert named(report, ANSWER, person=world.first)
    assert named(report, ACCOUNT, person=world.first)


async def test_an_output_published_again_with_other_figures_is_named(bus: Bus) -> None:
    world = await story(bus)
    (result,) = records_of(bus, SETTLEMENTS.name, claim_id=world.split_claim)
    report = await deep(bus, [*bus.records, again(result, paid_fen=1)])
    (clash,) = named(report, REPUBLISHED, topic=SETTLEMENTS.name)
    assert clash.ids["event"] == result.value["event_id"]
    assert len(report.differences) == 1  # the first publication stands


# ---- what is in flight is reported, not a difference --------------------------------------------


async def test_a_claim_drawing_is_pending_not_a_difference(bus: Bus) -> None:
    world = await story(bus)
    claim = bus.saga.settle(world.recipient, 10_000)
    await bus.claim(claim, hold=frozenset({DRAW_REQUESTS}))
    report = await deep(bus)
    assert report.valid, report.differences
    assert {(pending.what, pending.ids.get("claim") or pending.ids.get("input")) for pending in report.pending} == {
        ("claim drawing: the wallet's answer is on its way", claim.claim_id),
        ("input not yet answered", claim.claim_id),
    }
    assert report.counts["claims_pending"] == 1


async def test_results_and_events_stored_but_not_yet_published_are_pending(bus: Bus) -> None:
    """Redis is read after the end offsets are taken: a step stored since, whose outputs come later."""
    world = await story(bus)
    claim = bus.saga.settle(world.recipient, 10_000)
    outputs = await bus.claim(claim)
    unpublished = {output.event_id for output in outputs if isinstance(output, SettlementEvent | WalletEvent)}
    report = await deep(bus, [r for r in bus.records if not (r.value and r.value.get("event_id") in unpublished)])
    assert report.valid, report.differences
    assert {pending.what for pending in report.pending} == {
        "claim final in Redis, its result not yet published",
        "debited in Redis, its event not yet published",
        "input not yet answered",
    }


async def test_topics_that_lost_their_first_records_make_the_audit_fail(bus: Bus) -> None:
    await story(bus)
    (first_credit, *_) = records_of(bus, ACCOUNT_CREDITS.name)
    report = await deep(bus, [record for record in bus.records if record is not first_credit])
    (lost,) = named(report, HISTORY, topic=ACCOUNT_CREDITS.name)
    assert (lost.ids["partition"], lost.found) == ("0", 1)


async def test_keys_made_between_the_scan_and_the_reads_are_read_with_the_rest(bus: Bus, monkeypatch) -> None:
    """Redis is scanned, then read person by person and shard by shard: a key a step makes meanwhile
    (a provider's first refund, a shard's first claim of a month) is read with its neighbours."""
    provider, recipient = await related_pair(bus)
    await bus.grant(provider, recipient, REGION, 50_000)
    claim = bus.saga.settle(recipient, 30_000)
    await bus.claim(claim)
    scanned = [key async for key in bus.redis.scan_iter()]
    await bus.claim(bus.saga.reverse(recipient, claim.claim_id))  # makes wal:{p:provider}:refunds:20260302
    bus.clock.set(datetime.fromisoformat("2026-04-02T12:00:00+08:00"))
    await bus.claim(bus.saga.settle(recipient, 1_000))  # makes the shard's clearing:2026-04

    async def the_earlier_scan(**_):
        for key in scanned:
            yield key

    monkeypatch.setattr(bus.redis, "scan_iter", the_earlier_scan)
    assert f"wal:{{p:{provider}}}:refunds:20260302".encode() not in scanned
    report = await deep(bus)
    assert report.valid, report.differences


# ---- refusals before the claim id was taken answer only their own claim --------------------------


def refusal_of(claim, reason: str, **fields) -> SettlementEvent:
    figures = {
        "status": "rejected",
        "requested_fen": claim.amount_fen,
        "paid_fen": 0,
        "self_pay_fen": claim.amount_fen,
        "payers": [],
    } | fields
    return SettlementEvent(
        event_id=new_id("refusal"),
        cause_id=claim.claim_id,
        claim_id=claim.claim_id,
        recipient_id=claim.recipient_id,
        reason=reason,
        settled_at=datetime.fromisoformat("2026-03-02T12:00:00+08:00"),
        **figures,
    )


async def test_a_claim_never_taken_in_is_not_hidden_by_a_refusal_of_another_claim_under_its_id(bus: Bus) -> None:
    """Province 45 sends a claim under 44's id and is refused before the id is taken: 44's own
    claim under the id, if it is never taken in, is still waited for (issue 20's review)."""
    world = await story(bus)
    squat = bus.saga.settle(world.recipient, 100)
    bus.record(CLAIMS, squat)
    bus.record(SETTLEMENTS, refusal_of(squat, "SERVICE_REGION_MISMATCH"))
    report = await deep(bus)
    assert report.valid and report.pending == [], (report.differences, report.pending)
    bus.record(CLAIMS, squat.model_copy(update={"amount_fen": 12_850}))
    report = await deep(bus)
    assert ("claim not yet taken in by settlement", squat.claim_id) in {
        (pending.what, pending.ids.get("claim")) for pending in report.pending
    }


async def test_a_refusal_that_pays_or_names_no_claim_is_named(bus: Bus) -> None:
    world = await story(bus)
    claim = bus.saga.settle(world.recipient, 700)
    bus.record(CLAIMS, claim)
    bus.record(SETTLEMENTS, refusal_of(claim, "CONFLICT", status="partial", paid_fen=700, self_pay_fen=0))
    assert named(await deep(bus), ANSWER, input=claim.claim_id)
    broken = bus.saga.settle(world.recipient, 800)
    bus.record(SETTLEMENTS, refusal_of(broken, "INVALID_MESSAGE", error="recipient_id: invalid"))
    records = [
        record
        for record in bus.records
        if record.topic != SETTLEMENTS.name or record.value.get("claim_id") != claim.claim_id
    ]
    assert [difference.what for difference in named(await deep(bus, records), ANSWER, input=broken.claim_id)] == [
        "a refusal of a broken claim names no dead-lettered claim"
    ]


# ---- the rules themselves: breaches that Redis and the records agree on ---------------------------
# Each plants a one-line regression in the code that decides (the services' own checks bypassed),
# so that Redis and the topics hold the breach consistently; the audit names the rule from the
# records alone.


def rules_broken(report: AuditReport) -> list[str]:
    return [difference.what for difference in report.differences if difference.invariant == RULE]


async def test_a_grant_above_2000_yuan_is_named(bus: Bus, monkeypatch) -> None:
    monkeypatch.setattr("services.wallet.handlers.check_grant", lambda command: None)
    monkeypatch.setattr(bus.saga.wallet, "limits", GrantLimits(max_amount_fen=10**9))
    provider, recipient = await related_pair(bus)
    await bus.credit(provider, 1_000_000)
    assert (await bus.grant(provider, recipient, REGION, 50_000)).type == "granted"
    report = await deep(bus)
    assert report.valid, report.differences
    big = await bus.grant(provider, recipient, REGION, 200_001)
    assert big.type == "granted" and big.amount_fen == 200_001
    assert rules_broken(await deep(bus)) == ["rule 9: a grant above 2,000 yuan"]


async def test_a_grant_made_by_someone_other_than_the_provider_is_named(bus: Bus, monkeypatch) -> None:
    monkeypatch.setattr("services.wallet.handlers.check_grant", lambda command: None)
    store_grant = bus.saga.wstore.grant

    async def as_if_the_provider(input_id, content, actor, provider, *rest):
        return await store_grant(input_id, content, provider, provider, *rest)

    monkeypatch.setattr(bus.saga.wstore, "grant", as_if_the_provider)
    provider, recipient = await related_pair(bus)
    (granted, *_) = await bus.publish(
        WALLET_COMMANDS,
        WalletCommand(
            command_id=new_id("grant"),
            action="grant",
            actor_id=recipient,
            provider_id=provider,
            recipient_id=recipient,
            recipient_region=REGION,
            amount_fen=1_000,
            requested_at=bus.clock.now(),
        ),
    )
    assert granted.type == "granted"
    assert rules_broken(await deep(bus)) == ["rule 10: a grant made by someone other than the provider"]


async def test_a_use_that_is_not_medical_paid_is_named(bus: Bus, monkeypatch) -> None:
    monkeypatch.setattr(
        "services.settlement.handlers.assess_claim", lambda claim, recipient: Assessment(claim.amount_fen or 0)
    )
    provider, recipient = await related_pair(bus)
    await bus.grant(provider, recipient, REGION, 50_000)
    massage = bus.saga.settle(recipient, 20_000, category="massage", institution_code=None)
    (result, *_) = [output for output in await bus.claim(massage) if isinstance(output, SettlementEvent)]
    assert (result.status, result.paid_fen) == ("settled", 20_000)
    assert rules_broken(await deep(bus)) == ["rule 12: a use that is not medical (massage) was paid"]


@pytest.mark.parametrize(
    ("category", "insured", "service_region", "broken"),
    [
        (
            "ltc_premium",
            "resident",
            "110100",
            "rule 12: a premium paid to a province other than the recipient's insured one",
        ),
        (
            "resident_premium",
            "employee",
            REGION,
            "rule 12: a resident-insurance premium paid for a recipient never insured as a resident",
        ),
    ],
)
async def test_a_premium_paid_where_it_is_not_owed_is_named(
    bus: Bus, monkeypatch, category, insured, service_region, broken
) -> None:
    """Issue 20's defects 1 and 2, put back: the premium billed by another province, the resident
    premium of an employee."""
    monkeypatch.setattr("services.settlement.handlers.refusal_before_id", lambda claim, province, *when: None)
    monkeypatch.setattr(
        "services.settlement.handlers.assess_claim", lambda claim, recipient: Assessment(claim.amount_fen or 0)
    )
    recipient = await bus.person(insured, REGION)
    provider = await bus.person("employee", "440300")
    await bus.credit(provider, 100_000)
    await bus.establish(provider, recipient, REGION)
    await bus.grant(provider, recipient, REGION, 50_000)
    premium = bus.saga.settle(
        recipient, 10_500, category=category, institution_code=None, service_region=service_region
    )
    (result, *_) = [output for output in await bus.claim(premium) if isinstance(output, SettlementEvent)]
    assert result.status == "settled"
    assert rules_broken(await deep(bus)) == [broken]


async def test_a_claim_id_squatted_by_another_province_is_named(bus: Bus, monkeypatch) -> None:
    """Issue 20's defect 3, put back (the province whose topic brought a claim is not asked):
    province 11 sends a 100-fen premium under a Shenzhen hospital's claim id on its own topic, and
    the hospital's own claim under that id is then refused as a conflict. Redis and the records
    agree; the rule does not."""
    refusal = handlers.refusal_before_id
    monkeypatch.setattr(handlers, "refusal_before_id", lambda claim, province, *when: refusal(claim, None, *when))
    recipient = await bus.person("resident", "440300")
    hospital = bus.saga.settle(
        recipient, 12_850, recipient_region="440300", service_region="440300", institution_code="H44030500012"
    )
    squat = hospital.model_copy(update={"category": "ltc_premium", "institution_code": None, "amount_fen": 100})
    (squatted, *_) = [
        output for output in await bus.claim(squat, topic=province_claims("11")) if isinstance(output, SettlementEvent)
    ]
    (conflict,) = [
        output
        for output in await bus.claim(hospital, topic=province_claims("44"))
        if isinstance(output, SettlementEvent)
    ]
    assert (squatted.claim_id, conflict.reason) == (hospital.claim_id, "CONFLICT")
    assert rules_broken(await deep(bus)) == [
        "province topics: a claim of another province's care was judged by its claim id"
    ]
    monkeypatch.setattr(handlers, "refusal_before_id", refusal)
    squat_again = squat.model_copy(update={"claim_id": another_claim_id(hospital.model_dump(mode="json"))})
    await bus.claim(squat_again, topic=province_claims("11"))
    assert len(rules_broken(await deep(bus))) == 1  # refused as it should be: nothing more to name


async def test_a_grant_from_a_frozen_account_is_named(bus: Bus) -> None:
    """Planted in the account's step numbers: the freeze applied before the grant it should have
    refused. (Their order on the topic says nothing: the grant and the freeze come from two
    consumers.)"""
    provider, recipient = await related_pair(bus)
    await bus.grant(provider, recipient, REGION, 1_000)
    await bus.publish(
        SUPERVISION,
        SupervisionActed(
            event_id=new_id("sup"), person_id=provider, action="freeze", reason="违规使用", occurred_at=bus.clock.now()
        ),
    )
    assert (await deep(bus)).valid
    (grant,) = records_of(bus, WALLET_EVENTS.name, type="granted", provider_id=provider)
    (freeze,) = records_of(bus, WALLET_EVENTS.name, type="frozen", provider_id=provider)
    assert grant.value["account_seq"] < freeze.value["account_seq"]
    swapped = {
        id(grant): changed(grant, account_seq=freeze.value["account_seq"]),
        id(freeze): changed(freeze, account_seq=grant.value["account_seq"]),
    }
    records = [swapped.get(id(record), record) for record in bus.records]
    assert rules_broken(await deep(bus, records)) == ["rule 16: a grant from a frozen account"]


async def test_quota_for_someone_never_related_is_named(bus: Bus) -> None:
    provider, recipient = await related_pair(bus)
    await bus.grant(provider, recipient, REGION, 1_000)
    records = [
        record
        for record in bus.records
        if not (record.topic == RELATIONSHIP_EVENTS.name and (record.value or {}).get("type") == "established")
    ]
    assert "rules 2, 8: quota granted to someone never related to the provider" in rules_broken(
        await deep(bus, records)
    )


# ---- the idempotency window, judged with the audit's own reading of it ----------------------------


async def a_paid_claim(bus: Bus) -> tuple[str, Claim]:
    """A recipient with a 5,000-fen grant, and a claim of 1,000 settled from it today."""
    provider, recipient = await related_pair(bus)
    await bus.grant(provider, recipient, REGION, 5_000)
    claim = bus.saga.settle(recipient, 1_000)
    await bus.claim(claim)
    return recipient, claim


async def test_a_claim_within_the_window_refused_as_too_old_is_named(bus: Bus, monkeypatch) -> None:
    monkeypatch.setattr(handlers, "refusal_before_id", lambda claim, province, *when: ReasonCode.CLAIM_TOO_OLD)
    provider, recipient = await related_pair(bus)
    await bus.claim(bus.saga.settle(recipient, 1_000))
    assert rules_broken(await deep(bus)) == ["window: a claim within the window was refused as too old"]


async def test_a_claim_taken_ahead_of_the_clock_is_named(bus: Bus, monkeypatch) -> None:
    monkeypatch.setattr(handlers, "refusal_before_id", lambda claim, province, *when: None)
    provider, recipient = await related_pair(bus)
    await bus.grant(provider, recipient, REGION, 5_000)
    tomorrow = (bus.clock.now() + timedelta(days=1)).isoformat()
    (result, *_) = [
        o
        for o in await bus.claim(bus.saga.settle(recipient, 1_000, occurred_at=tomorrow))
        if isinstance(o, SettlementEvent)
    ]
    assert result.status == "settled"
    assert rules_broken(await deep(bus)) == ["window: a claim was taken ahead of the clock"]


async def test_a_reversal_of_a_claim_older_than_the_window_is_named(bus: Bus) -> None:
    recipient, claim = await a_paid_claim(bus)
    bus.saga.settlement.window = ClaimWindow(length=timedelta(days=3650))  # the service judges otherwise
    bus.clock.set(claim.occurred_at + timedelta(days=31))
    (reversal, *_) = [
        o for o in await bus.claim(bus.saga.reverse(recipient, claim.claim_id)) if isinstance(o, SettlementEvent)
    ]
    assert reversal.status == "reversed"
    assert rules_broken(await deep(bus)) == ["window: a claim older than the window was reversed"]


async def test_a_claim_record_gone_after_its_window_and_grace_is_no_difference(bus: Bus) -> None:
    """Expired, as a day's bucket does: the record is gone, the audit knows it may be."""
    recipient, claim = await a_paid_claim(bus)
    bucket = bus.saga.sstore.claims_key(recipient, "20260302")
    await bus.redis.delete(bucket)
    assert named(await deep(bus), CLAIM, claim=claim.claim_id)  # too early to be gone: a difference
    bus.clock.set(claim.occurred_at + timedelta(days=32, hours=12))
    report = await deep(bus)
    assert report.valid, report.differences
    assert report.counts["claims_expired"] == 1


async def test_the_quick_audit_leaves_totals_over_all_history_to_the_deep_audit_once_claims_expire(bus: Bus) -> None:
    recipient, claim = await a_paid_claim(bus)
    await bus.redis.delete(bus.saga.sstore.claims_key(recipient, "20260302"))  # as if expired
    early = await quick_audit(bus.redis, SHARDS, Window.from_settings(Settings(), bus.clock.now()))
    assert early.history_held and "wallet paid 1000 != settled claims paid 0" in early.breaches
    late = await quick_audit(
        bus.redis, SHARDS, Window.from_settings(Settings(), claim.occurred_at + timedelta(days=40))
    )
    assert (late.history_held, late.breaches) == (False, [])


async def test_an_input_refused_as_too_old_within_its_window_is_named(bus: Bus) -> None:
    world = await story(bus)
    (granted,) = records_of(bus, WALLET_EVENTS.name, type="granted", provider_id=world.first)
    refusal = again(granted, event_id=new_id("ev"), type="grant_rejected", reason="INPUT_TOO_OLD", frozen_fen=0)
    report = await deep(bus, [*bus.records, refusal])
    assert rules_broken(report) == ["window: an input within the window was refused as too old"]


async def test_an_input_applied_though_older_than_its_window_is_named(bus: Bus) -> None:
    world = await story(bus)
    (credit,) = records_of(bus, ACCOUNT_CREDITS.name, person_id=world.second)
    sent = datetime.fromisoformat(credit.value["occurred_at"]) - timedelta(days=31)
    report = await deep(bus, [changed(r, occurred_at=sent.isoformat()) if r is credit else r for r in bus.records])
    assert rules_broken(report) == ["window: an input older than the window was applied"]


async def test_an_input_applied_then_refused_on_a_late_redelivery_is_not_taken_for_unsent(bus: Bus) -> None:
    """The wallet took a credit in; delivered again once its id was forgotten (two generations on),
    it was refused INPUT_TOO_OLD with a dead letter. The credit still stands in the books: its
    answer names it."""
    world = await story(bus)
    (credit,) = records_of(bus, ACCOUNT_CREDITS.name, person_id=world.second)
    bus.clock.set(bus.clock.now() + timedelta(days=70))
    refused = Refused(AccountCredited.model_validate(credit.value), ReasonCode.INPUT_TOO_OLD, "older than the window")
    bus.record(DEAD_LETTERS, dead_letter_of(credit, refused, bus.clock.now()))
    report = await deep(bus)
    assert report.valid, report.differences


async def test_an_input_applied_and_delivered_again_late_gets_its_stored_answer(bus: Bus) -> None:
    world = await story(bus)
    (credit,) = records_of(bus, ACCOUNT_CREDITS.name, person_id=world.second)
    (credited,) = records_of(bus, WALLET_EVENTS.name, type="credited", provider_id=world.second)
    bus.clock.set(bus.clock.now() + timedelta(days=31))  # outside its window, its id still remembered
    (again,) = await bus.saga.wallet.on_credits([AccountCredited.model_validate(credit.value)])
    assert again.model_dump(mode="json") == credited.value  # the same answer, once more
    bus.record(WALLET_EVENTS, again)
    assert (await deep(bus)).valid


async def test_an_input_refused_as_outside_its_window_is_answered_not_pending(bus: Bus) -> None:
    provider, recipient = await related_pair(bus)
    late = WalletCommand(
        command_id=new_id("g"),
        action="grant",
        actor_id=provider,
        provider_id=provider,
        recipient_id=recipient,
        recipient_region=REGION,
        amount_fen=1_000,
        requested_at=bus.clock.now() - timedelta(days=31),
    )
    (refused,) = await bus.publish(WALLET_COMMANDS, late)
    assert (refused.type, refused.reason) == ("grant_rejected", ReasonCode.INPUT_TOO_OLD)
    report = await deep(bus)
    assert report.valid and not report.pending, (report.differences, report.pending)


# ---- a checkpoint: the records after its cut judged, added to the figures before it -------------


def ends(records: list[Record]) -> dict[tuple[str, int], int]:
    """Each partition's end offset: where an audit reading them now would cut."""
    offsets: dict[tuple[str, int], int] = {}
    for record in records:
        offsets[(record.topic, record.partition)] = max(
            offsets.get((record.topic, record.partition), 0), record.offset + 1
        )
    return offsets


async def from_checkpoint(bus: Bus, cut: dict[tuple[str, int], int], opening, records: list[Record] | None = None):
    window = Window.from_settings(Settings(), bus.saga.clock.now())
    books = rebuild(bus.records if records is None else records, cut)
    return compare(books, await read_state(bus.redis, window.today), window, opening)


async def test_a_checkpointed_audit_judges_what_came_after_its_cut_and_folds_the_same_books(bus: Bus) -> None:
    """A claim paid before the cut reversed after it, a new claim, a quota released: judged from the
    checkpoint's figures, valid, and the books folded on equal the books rebuilt from scratch."""
    world = await story(bus)
    first = await deep(bus)
    assert first.valid and first.pending == []
    cut, opening = ends(bus.records), first.closing
    reversal = bus.saga.reverse(world.recipient, world.split_claim)  # paid before the cut
    await bus.claim(reversal)
    await bus.claim(bus.saga.settle(world.recipient, 5_000))
    await bus.command("dissolve", world.first, world.first, world.recipient)

    later = await from_checkpoint(bus, cut, opening)
    assert later.valid, later.differences
    assert later.pending == []
    assert 0 < later.counts["records_judged"] < later.counts["records"]
    assert later.counts["records_in_books"] == later.counts["records"]  # all of them read: within the horizon
    assert (later.counts["claims_final"], later.counts["reversals"]) == (3, 2)
    assert later.closing.to_json() == (await deep(bus)).closing.to_json()


async def test_a_checkpointed_audit_names_what_breaks_after_its_cut_against_what_came_before(bus: Bus) -> None:
    world = await story(bus)
    cut, opening = ends(bus.records), (await deep(bus)).closing
    (result,) = records_of(bus, SETTLEMENTS.name, claim_id=world.split_claim)
    await bus.redis.hincrby(f"wal:{{p:{world.first}}}:account", "balance", 100)  # money made in Redis
    report = await from_checkpoint(bus, cut, opening, [*bus.records, again(result, event_id=new_id())])
    assert named(report, CLAIM, claim=world.split_claim)  # a second result for a claim paid before the cut
    (balance,) = [d for d in named(report, ACCOUNT, person=world.first) if d.what.startswith("balance")]
    assert balance.found - balance.expected == 100  # the checkpoint's figures, compared with Redis


async def test_what_a_checkpoint_folded_is_not_judged_again_but_a_from_scratch_audit_finds_it(bus: Bus) -> None:
    """The checkpoint is trusted for what came before its cut: `--from-scratch` is there for when
    it is in doubt."""
    world = await story(bus)
    (result,) = records_of(bus, SETTLEMENTS.name, claim_id=world.split_claim)
    records = [changed(record, paid_fen=39_000) if record is result else record for record in bus.records]
    assert named(await deep(bus, records), CLAIM, claim=world.split_claim)
    checkpointed = await from_checkpoint(bus, ends(records), (await deep(bus)).closing, records)
    assert checkpointed.valid and checkpointed.counts["records_judged"] == 0


async def test_a_premium_paid_stays_owed_when_its_recipients_enrollment_is_refused_on_a_late_redelivery(
    bus: Bus,
) -> None:
    """The recipient's resident enrollment, taken in, then delivered again once its id was forgotten
    and refused INPUT_TOO_OLD: the recipient was insured as a resident all along (rule 12)."""
    provider, recipient = await related_pair(bus)
    await bus.grant(provider, recipient, REGION, 50_000)
    premium = bus.saga.settle(recipient, 20_000, category="resident_premium", institution_code=None)
    (result, *_) = [output for output in await bus.claim(premium) if isinstance(output, SettlementEvent)]
    assert (result.status, result.paid_fen) == ("settled", 20_000)
    (enrollment,) = records_of(bus, ENROLLMENT.name, person_id=recipient)
    bus.clock.set(bus.clock.now() + timedelta(days=70))
    refused = Refused(EnrollmentChanged.model_validate(enrollment.value), ReasonCode.INPUT_TOO_OLD, "too old")
    bus.record(DEAD_LETTERS, dead_letter_of(enrollment, refused, bus.clock.now()))
    report = await deep(bus)
    assert report.valid, report.differences
