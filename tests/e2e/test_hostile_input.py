"""Hostile input against the running services, as a careless or malicious sender would send it:
every kind of bad message on every input topic is answered with a reason within seconds (a dead
letter naming its topic, partition and offset, or a refusal event), and the next good message on
the same key is still handled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.structs import RecordMetadata

from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    CLAIMS,
    DEAD_LETTERS,
    ENROLLMENT,
    KINSHIP,
    RELATIONSHIP_COMMANDS,
    RELATIONSHIP_EVENTS,
    SETTLEMENTS,
    SUPERVISION,
    WALLET_COMMANDS,
    WALLET_EVENTS,
    Topic,
)
from tests.e2e.world import World, until
from tests.support import another_claim_id, new_id, new_person_id, now_iso, with_claim_id

pytestmark = pytest.mark.timeout(300)

ANSWER_SECONDS = 20.0


@dataclass
class Case:
    name: str
    topic: Topic
    value: bytes
    key: bytes | None
    reason: str = "INVALID_MESSAGE"  # the dead letter's reason, or the refusal event's
    # For a business refusal: where its answer comes, and how to recognise it.
    answer_topic: Topic | None = None
    answer_of: Callable[[dict], bool] | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def bases(person: str, relative: str) -> dict[Topic, dict[str, Any]]:
    """One valid message per input topic, keyed by `person` (the next good one reuses the key)."""
    return {
        ENROLLMENT: {
            "event_id": new_id("enr"),
            "person_id": person,
            "insurance_type": "employee",
            "region": "440300",
            "status": "normal",
            "occurred_at": now_iso(),
        },
        ACCOUNT_CREDITS: {"event_id": new_id("cred"), "person_id": person, "amount_fen": 100, "occurred_at": now_iso()},
        ACCOUNT_SPENDS: {"event_id": new_id("spend"), "person_id": person, "amount_fen": 1, "occurred_at": now_iso()},
        KINSHIP: {
            "event_id": new_id("kin"),
            "person_id": person,
            "relative_id": relative,
            "kinship": "child",
            "occurred_at": now_iso(),
        },
        SUPERVISION: {
            "event_id": new_id("sup"),
            "person_id": person,
            "action": "unfreeze",
            "reason": "review",
            "occurred_at": now_iso(),
        },
        CLAIMS: with_claim_id(
            {
                "kind": "settle",
                "recipient_id": person,
                "recipient_region": "440300",
                "category": "institution",
                "institution_code": "H44030500001",
                "service_region": "440300",
                "amount_fen": 100,
                "occurred_at": now_iso(),
            }
        ),
        RELATIONSHIP_COMMANDS: {
            "command_id": new_id("cmd"),
            "action": "dissolve",
            "actor_id": person,
            "provider_id": person,
            "recipient_id": relative,
            "requested_at": now_iso(),
        },
        WALLET_COMMANDS: {
            "command_id": new_id("grant"),
            "action": "grant",
            "actor_id": person,
            "provider_id": person,
            "recipient_id": relative,
            "recipient_region": "440300",
            "amount_fen": 100,
            "requested_at": now_iso(),
        },
    }


ID_FIELD = {CLAIMS: "claim_id", RELATIONSHIP_COMMANDS: "command_id", WALLET_COMMANDS: "command_id"}
TIME_FIELD = {CLAIMS: "occurred_at", RELATIONSHIP_COMMANDS: "requested_at", WALLET_COMMANDS: "requested_at"}
# A field of each topic given a value outside its contract.
OUT_OF_CONTRACT = {
    ENROLLMENT: ("insurance_type", "military"),
    ACCOUNT_CREDITS: ("amount_fen", "100"),
    ACCOUNT_SPENDS: ("amount_fen", True),
    KINSHIP: ("kinship", "cousin_of_a_friend"),
    SUPERVISION: ("action", "ban"),
    CLAIMS: ("kind", "refund"),
    RELATIONSHIP_COMMANDS: ("action", "steal"),
    WALLET_COMMANDS: ("action", "withdraw"),
}
AMOUNT_TOPICS = (ACCOUNT_CREDITS, ACCOUNT_SPENDS, CLAIMS, WALLET_COMMANDS)


def encoded(message: dict) -> bytes:
    return json.dumps(message).encode()


def hostile_cases(person: str, relative: str) -> list[Case]:
    cases: list[Case] = []
    key = person.encode()
    for topic, base in bases(person, relative).items():
        id_field = ID_FIELD.get(topic, "event_id")
        time_field = TIME_FIELD.get(topic, "occurred_at")
        key_field = topic.key_field
        fresh = lambda **changes: {**base, id_field: new_id("hostile"), **changes}  # noqa: E731
        bad_field, bad_value = OUT_OF_CONTRACT[topic]
        without_id = {name: value for name, value in fresh().items() if name != id_field}
        cases += [
            Case("not JSON", topic, b"{not json", key),
            Case("a JSON array", topic, b"[1, 2, 3]", key),
            Case("an empty value", topic, b"", key),
            Case("bytes that are not UTF-8", topic, b"\xff\xfe\xfa{", key),
            Case("JSON nested 50,000 deep", topic, b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", key),
            Case("no Kafka key", topic, encoded(fresh()), None),
            Case("a Kafka key other than the key field", topic, encoded(fresh()), new_person_id().encode()),
            Case("an epoch number for a time", topic, encoded(fresh(**{time_field: 1772417700})), key),
            Case("a time without an offset", topic, encoded(fresh(**{time_field: "2026-03-02T10:15:00"})), key),
            Case(
                "a person id with a wrong check character",
                topic,
                encoded(fresh(**{key_field: person[:-1] + ("0" if person[-1] != "0" else "1")})),
                (person[:-1] + ("0" if person[-1] != "0" else "1")).encode(),
            ),
            Case("no input id", topic, encoded(without_id), key),
            Case("an input id of 129 characters", topic, encoded(fresh(**{id_field: "x" * 129})), key),
            Case(f"{bad_field} outside the contract", topic, encoded(fresh(**{bad_field: bad_value})), key),
        ]
    for topic in AMOUNT_TOPICS:
        base = bases(person, relative)[topic]
        id_field = ID_FIELD.get(topic, "event_id")
        cases += [
            Case(
                "an amount of 2^63 fen",
                topic,
                encoded({**base, id_field: new_id("h"), "amount_fen": 2**63}),
                key,
                reason="AMOUNT_OUT_OF_RANGE",
            ),
            Case(
                "an amount just above 10^12 fen",
                topic,
                encoded({**base, id_field: new_id("h"), "amount_fen": 10**12 + 1}),
                key,
                reason="AMOUNT_OUT_OF_RANGE",
            ),
            Case(
                "an amount of 1e400",
                topic,
                encoded({**base, id_field: new_id("h")})
                .replace(b'"amount_fen": 100', b'"amount_fen": 1e400')
                .replace(b'"amount_fen": 1,', b'"amount_fen": 1e400,'),
                key,
            ),
            Case("a negative amount", topic, encoded({**base, id_field: new_id("h"), "amount_fen": -100}), key),
            Case("a fractional amount", topic, encoded({**base, id_field: new_id("h"), "amount_fen": 1.5}), key),
        ]
    supervision = bases(person, relative)[SUPERVISION]
    claim = bases(person, relative)[CLAIMS]
    cases += [
        Case(
            "a freeze with an empty reason",
            SUPERVISION,
            encoded({**supervision, "event_id": new_id("h"), "action": "freeze", "reason": ""}),
            key,
        ),
        Case(
            "a freeze with a blank reason",
            SUPERVISION,
            encoded({**supervision, "event_id": new_id("h"), "action": "freeze", "reason": "   "}),
            key,
        ),
        Case(
            "a reversal without `reverses`",
            CLAIMS,
            encoded({"claim_id": new_id("h"), "kind": "reverse", "recipient_id": person, "occurred_at": now_iso()}),
            key,
        ),
        Case(
            "a settle claim without an amount",
            CLAIMS,
            encoded(
                {
                    name: value
                    for name, value in {**claim, "claim_id": another_claim_id(claim)}.items()
                    if name != "amount_fen"
                }
            ),
            key,
        ),
        Case(
            "a pharmacy claim with 1001 items",
            CLAIMS,
            encoded(
                {
                    **claim,
                    "claim_id": another_claim_id(claim),
                    "category": "pharmacy",
                    "items": [{"code": "X", "in_catalogue": True, "amount_fen": 1}] * 1001,
                }
            ),
            key,
        ),
        Case(
            "an item amount above the bound",
            CLAIMS,
            encoded(
                {
                    **claim,
                    "claim_id": another_claim_id(claim),
                    "category": "pharmacy",
                    "items": [{"code": "X", "in_catalogue": True, "amount_fen": 10**13}],
                }
            ),
            key,
            reason="AMOUNT_OUT_OF_RANGE",
        ),
    ]
    # Business refusals: valid messages that the rules refuse, answered on the service's own topic.
    cash_id, thief_id, grant_id = another_claim_id(claim), new_id("thief"), new_id("big")
    cases += [
        Case(
            "a claim for a use that is not medical",
            CLAIMS,
            encoded({**claim, "claim_id": cash_id, "category": "cash_withdrawal"}),
            key,
            "CATEGORY_NOT_ALLOWED",
            SETTLEMENTS,
            lambda m: m["claim_id"] == cash_id,
        ),
        Case(
            "a request made by someone else",
            RELATIONSHIP_COMMANDS,
            encoded(
                {
                    "command_id": thief_id,
                    "action": "request",
                    "actor_id": relative,
                    "provider_id": person,
                    "recipient_id": relative,
                    "recipient_region": "440300",
                    "kinship": "child",
                    "requested_at": now_iso(),
                }
            ),
            key,
            "NOT_AUTHORIZED",
            RELATIONSHIP_EVENTS,
            lambda m: m["cause_id"] == thief_id,
        ),
        Case(
            "a grant over 2,000 yuan",
            WALLET_COMMANDS,
            encoded({**bases(person, relative)[WALLET_COMMANDS], "command_id": grant_id, "amount_fen": 200_001}),
            key,
            "TRANSFER_AMOUNT_OVER_LIMIT",
            WALLET_EVENTS,
            lambda m: m["cause_id"] == grant_id,
        ),
    ]
    return cases


async def send(kafka, case: Case) -> RecordMetadata:
    return await kafka.producer.send_and_wait(case.topic.name, case.value, key=case.key, headers=case.headers or None)


def answer_to(kafka, case: Case, where: RecordMetadata) -> str | None:
    """None when the case is answered as it should be; else what is wrong so far."""
    if case.answer_topic is not None:
        events = kafka.matching(case.answer_topic, case.answer_of)
        if not events:
            return "no answer"
        return None if events[0]["reason"] == case.reason else f"answered {events[0]['reason']}"
    letters = kafka.matching(
        DEAD_LETTERS,
        lambda m: (m["source_topic"], m["partition"], m["offset"]) == (case.topic.name, where.partition, where.offset),
    )
    if not letters:
        return "no dead letter"
    if {letter["reason"] for letter in letters} != {case.reason} or not all(letter["error"] for letter in letters):
        return f"dead letters {[(letter['reason'], letter['error']) for letter in letters]}"
    return None


async def all_answered(kafka, sent: list[tuple[Case, RecordMetadata]]) -> list[str]:
    """Waits (bounded) until every case is answered; returns what is still wrong."""
    deadline = asyncio.get_running_loop().time() + ANSWER_SECONDS
    while True:
        wrong = [
            f"{case.topic.name}: {case.name}: {problem}"
            for case, where in sent
            if (problem := answer_to(kafka, case, where)) is not None
        ]
        if not wrong or asyncio.get_running_loop().time() > deadline:
            return wrong
        await asyncio.sleep(0.25)


async def test_every_kind_of_bad_input_on_every_topic_is_answered_and_the_next_message_is_handled(
    world: World, kafka
) -> None:
    person = await world.person("employee", "440300")
    relative = await world.person("resident", "440300")
    cases = hostile_cases(person, relative)
    assert len(cases) >= 60 and {case.topic for case in cases} == set(bases(person, relative))
    sent = [(case, await send(kafka, case)) for case in cases]
    wrong = await all_answered(kafka, sent)
    assert not wrong, "\n".join(wrong)

    # The next good message on each topic, on the same key, is still handled.
    assert (await world.credit(person, 500))["balance_fen"] == 500
    await world.enroll(person, "employee", "440300", "normal")
    await world.kinship(person, relative, "child")
    await world.establish(person, relative, "440300", kinship="child")
    assert (await world.grant(person, relative, "440300", 300))["type"] == "granted"
    assert (await world.settle(world.claim_message(relative, "440300", 200)))["paid_fen"] == 200


async def test_headers_are_data_a_reply_to_header_publishes_nowhere(world: World, kafka) -> None:
    """FastStream answers a message that carries `reply_to` on the topic it names: a confused
    deputy. A claim asking for its answer on the national settlements topic, and a credit asking
    for it on the claims topic, are handled as usual and nothing is published where they pointed."""
    person = await world.person("employee", "440300")
    credit_id = new_id("cred")
    credit = {"event_id": credit_id, "person_id": person, "amount_fen": 100, "occurred_at": now_iso()}
    claim = world.claim_message(person, "440300", 100)
    claims_before = len(kafka.seen[CLAIMS.name])
    await kafka.producer.send_and_wait(
        ACCOUNT_CREDITS.name,
        encoded(credit),
        key=person.encode(),
        headers=[("reply_to", CLAIMS.name.encode()), ("trace", b"\xff\xfe")],
    )
    await kafka.producer.send_and_wait(
        CLAIMS.name, encoded(claim), key=person.encode(), headers=[("reply_to", SETTLEMENTS.name.encode())]
    )
    await kafka.wait_for(WALLET_EVENTS, lambda m: m["cause_id"] == credit_id)
    await kafka.wait_for(SETTLEMENTS, lambda m: m.get("claim_id") == claim["claim_id"])
    await kafka.settle_quietly()
    # Only the settlement service's own answer; nothing else on either topic the headers named.
    assert len(kafka.matching(SETTLEMENTS, lambda m: m.get("claim_id") == claim["claim_id"])) == 1
    assert kafka.matching(SETTLEMENTS, lambda m: "claim_id" not in m) == []
    assert [m.get("claim_id") for m in kafka.seen[CLAIMS.name][claims_before:]] == [claim["claim_id"]]


async def test_an_id_reused_for_other_content_is_refused_visibly_on_every_input_topic(world: World, kafka) -> None:
    person = await world.person("employee", "440300")
    relative = await world.person("resident", "440300")
    await world.credit(person, 1_000)
    originals = bases(person, relative)
    for topic, message in originals.items():
        await kafka.publish(topic, message)
    # The originals are applied first: the credit of 100 and the spend of 1.
    await until(lambda: _balance_is(world, person, b"1099"), "the credit and the spend")
    refusals = {
        ENROLLMENT: {"region": "440100"},
        ACCOUNT_CREDITS: {"amount_fen": 101},
        ACCOUNT_SPENDS: {"amount_fen": 2},
        KINSHIP: {"kinship": "spouse"},
        SUPERVISION: {"reason": "another"},
        CLAIMS: {"amount_fen": 101},
        RELATIONSHIP_COMMANDS: {"action": "decline"},
        WALLET_COMMANDS: {"amount_fen": 101},
    }
    event_answers = {
        ACCOUNT_SPENDS: WALLET_EVENTS,
        CLAIMS: SETTLEMENTS,
        RELATIONSHIP_COMMANDS: RELATIONSHIP_EVENTS,
        WALLET_COMMANDS: WALLET_EVENTS,
    }
    failures = []
    for topic, change in refusals.items():
        other = {**originals[topic], **change}
        input_id = other[ID_FIELD.get(topic, "event_id")]
        where = await kafka.producer.send_and_wait(topic.name, encoded(other), key=person.encode())
        try:
            if topic in event_answers:
                field_name = "claim_id" if topic is CLAIMS else "cause_id"
                await kafka.wait_for(
                    event_answers[topic],
                    lambda m: m[field_name] == input_id and m.get("reason") == "CONFLICT",
                    timeout=ANSWER_SECONDS,
                )
            else:
                await kafka.wait_for(
                    DEAD_LETTERS,
                    lambda m: (m["source_topic"], m["offset"], m["reason"]) == (topic.name, where.offset, "CONFLICT"),
                    timeout=ANSWER_SECONDS,
                )
        except AssertionError as error:
            failures.append(f"{topic.name}: {error}")
    assert not failures, "\n".join(failures)
    # Nothing changed: the first content stands.
    await kafka.settle_quietly()
    assert await _balance_is(world, person, b"1099")


async def _balance_is(world: World, person: str, balance: bytes) -> bool:
    return await world.redis.hget(f"wal:{{p:{person}}}:account", "balance") == balance
