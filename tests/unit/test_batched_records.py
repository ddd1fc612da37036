"""The draw hop's records carry one batch's messages for one partition (shared/topics.py:
Topic.batched): the outbox packs them in their order, the decoder hands each message over alone,
and each message that breaks the contract, or that its handler refuses, is dead-lettered alone."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from types import SimpleNamespace

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker

from services.settlement.app import ROUTES as SETTLEMENT_ROUTES
from services.wallet.app import ROUTES as WALLET_ROUTES
from shared.clock import FixedClock
from shared.contracts import ClaimContext, DrawRequested, ReasonCode
from shared.ids import make_person_id
from shared.runtime import PACKED_BYTES, DeadLetterDecoder, Outbox, Refused, handle_isolating_poison, hands_deliveries
from shared.topics import DEAD_LETTERS, DRAW_ANSWERS, DRAW_ANSWERS_V1, DRAW_REQUESTS, DRAW_REQUESTS_V1, route_group
from tests.unit.test_runtime import RecordingProducer, partition_for, producer_of  # noqa: F401 - a fixture

NOW = datetime.fromisoformat("2026-03-02T12:00:00+08:00")
RECIPIENTS = [make_person_id("110101", "19800101", number) for number in range(1, 9)]


def draw(number: int, recipient: str | None = None, padding: str = "") -> DrawRequested:
    return DrawRequested(
        request_id=f"r{number}{padding}",
        claim_id=f"c{number}",
        recipient_id=recipient or RECIPIENTS[number % len(RECIPIENTS)],
        amount_fen=100 + number,
        context=ClaimContext(requested_fen=100 + number, service_region="110101", claim_day="20260302"),
        requested_at=NOW,
    )


def record(offset: int, value: bytes, topic: str = DRAW_REQUESTS.name, key: str = RECIPIENTS[0]) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic,
        partition=5,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key.encode(),
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=[],
    )


def array(*messages: bytes) -> bytes:
    return b"[" + b",".join(messages) + b"]"


async def decoded(*records: ConsumerRecord) -> DeadLetterDecoder:
    decoder = DeadLetterDecoder("wallet", [DRAW_REQUESTS_V1, DRAW_REQUESTS], FixedClock(NOW))
    await decoder(SimpleNamespace(raw_message=records))
    return decoder


async def test_the_outbox_sends_one_record_per_partition_its_messages_in_their_order(producer_of) -> None:  # noqa: F811
    producer = producer_of(RecordingProducer())
    draws = [draw(number) for number in range(40)]
    await Outbox(KafkaBroker(), "settlement", [DRAW_REQUESTS]).send(draws)
    expected: dict[int, list[DrawRequested]] = {}
    for one in draws:
        expected.setdefault(partition_for(one.recipient_id.encode()), []).append(one)
    assert len(producer.sent) == len(expected) < len(draws)
    for how, topic, partition, records in producer.sent:
        ((key, value),) = records
        assert (how, topic) == ("batch", DRAW_REQUESTS.name)
        assert [DrawRequested.model_validate(one) for one in json.loads(value)] == expected[partition]
        assert key == expected[partition][0].recipient_id.encode()  # its first message's key


async def test_a_partition_s_messages_that_outgrow_a_record_go_in_several_in_their_order(producer_of) -> None:  # noqa: F811
    producer = producer_of(RecordingProducer())
    draws = [draw(number, RECIPIENTS[0], padding="x" * 40_000) for number in range(30)]
    await Outbox(KafkaBroker(), "settlement", [DRAW_REQUESTS]).send(draws)
    values = [value for _, _, _, records in producer.sent for _, value in records]
    assert len(values) == 3 and all(len(value) <= PACKED_BYTES for value in values)
    assert [one["claim_id"] for value in values for one in json.loads(value)] == [one.claim_id for one in draws]


async def test_each_message_of_a_record_is_handed_over_alone() -> None:
    draws = [draw(number) for number in range(3)]
    decoder = await decoded(record(7, array(*(one.model_dump_json().encode() for one in draws))))
    assert [message for _, message in decoder.batch] == draws and decoder.dead_letters == []


async def test_a_message_that_breaks_the_contract_is_dead_lettered_alone_with_its_place() -> None:
    good = [draw(number).model_dump_json().encode() for number in range(2)]
    broken = [json.dumps({"claim_id": "c9", "recipient_id": RECIPIENTS[3]}).encode(), b'"not a message"']
    decoder = await decoded(record(7, array(good[0], broken[0], good[1], broken[1])))
    assert [message.claim_id for _, message in decoder.batch] == ["c0", "c1"]
    first, second = decoder.dead_letters
    assert (first.offset, second.offset) == (7, 7)
    assert first.error.startswith("message 1 of the record: ") and second.error.startswith("message 3 of the record: ")
    assert json.loads(base64.b64decode(first.payload)) == json.loads(broken[0])  # that message alone
    assert first.event_id != second.event_id and first.reason == ReasonCode.INVALID_MESSAGE
    # Each names its own message's key, not the record's (its first message's: another person).
    assert (first.source_key, second.source_key) == (RECIPIENTS[3], "")


async def test_a_message_whose_key_cannot_be_one_is_dead_lettered_without_it_and_the_batch_goes_on(
    producer_of,  # noqa: F811
) -> None:
    """Python's json reads a lone surrogate that UTF-8 cannot carry, and a key may be of any length:
    a dead letter keyed by either could never leave, and would hold its partition back for ever."""
    producer = producer_of(RecordingProducer())
    surrogate = b'{"claim_id": "c8", "recipient_id": "\\ud800"}'
    huge = json.dumps({"claim_id": "c9", "recipient_id": "x" * 600_000}).encode()
    decoder = await decoded(record(7, array(draw(1).model_dump_json().encode(), surrogate, huge)))
    assert [letter.source_key for letter in decoder.dead_letters] == ["", ""]
    await Outbox(KafkaBroker(), "wallet", [DEAD_LETTERS]).send(decoder.dead_letters)
    assert len(producer.sent) == 2 and [message.claim_id for _, message in decoder.batch] == ["c1"]


async def test_a_record_that_is_no_array_of_messages_is_dead_lettered_whole() -> None:
    utf16 = array(draw(1).model_dump_json().encode(), b"{}").decode().encode("utf-16")
    for value in (b"not json", draw(1).model_dump_json().encode(), b'{"a": [1]}', utf16):
        decoder = await decoded(record(3, value))
        (letter,) = decoder.dead_letters
        assert decoder.batch == [] and "JSON array" in letter.error and base64.b64decode(letter.payload) == value


async def test_a_first_version_record_holds_one_message_as_before() -> None:
    one = draw(1)
    decoder = await decoded(record(4, one.model_dump_json().encode(), DRAW_REQUESTS_V1.name, one.recipient_id))
    assert [message for _, message in decoder.batch] == [one]


async def test_a_message_its_handler_refuses_or_keeps_failing_on_is_dead_lettered_alone() -> None:
    draws = [draw(number) for number in range(4)]
    decoder = await decoded(record(9, array(*(one.model_dump_json().encode() for one in draws))))

    async def handler(batch: list[DrawRequested]) -> list:
        if any(message.claim_id == "c3" for message in batch):
            raise ValueError("a Lua step failed on this one")
        return [Refused(message, ReasonCode.CLAIM_TOO_OLD, "too old") for message in batch if message.claim_id == "c1"]

    refused, failed = await handle_isolating_poison(handler, decoder, attempts=2)
    assert (refused.error, refused.reason) == ("message 1 of the record: too old", ReasonCode.CLAIM_TOO_OLD)
    assert failed.error.startswith("message 3 of the record: processing failed 2 times")
    assert DrawRequested.model_validate_json(base64.b64decode(refused.payload)) == draws[1]
    assert (refused.source_key, failed.source_key) == (draws[1].recipient_id, draws[3].recipient_id)
    assert refused.event_id != failed.event_id


def test_both_versions_of_the_draw_hop_are_read_and_the_groups_keep_their_names() -> None:
    (wallet,) = [route for route in WALLET_ROUTES if DRAW_REQUESTS in route.topics]
    (settlement,) = [route for route in SETTLEMENT_ROUTES if DRAW_ANSWERS in route.topics]
    assert wallet.topics == (DRAW_REQUESTS_V1, DRAW_REQUESTS) and DRAW_ANSWERS_V1 in settlement.topics
    assert route_group("gongji-wallet", wallet.topics[0]) == "gongji-wallet.gongji.internal.draw-requests.v1"
    # Two versions of one hop hand bare messages; claims and answers are told apart.
    assert not hands_deliveries(wallet.topics) and hands_deliveries(settlement.topics)


async def test_a_handler_gets_at_most_its_batch_bound_of_messages_at_a_time_in_their_order() -> None:
    """A batch of records of many messages each is handed over in parts, as batches of single
    records would be; a part that fails is run one by one, the others are not."""
    draws = [draw(number) for number in range(25)]
    records = [
        record(offset, array(*(one.model_dump_json().encode() for one in draws[offset::5]))) for offset in range(5)
    ]
    decoder = await decoded(*records)
    parts: list[list[str]] = []

    async def handler(batch: list[DrawRequested]) -> list:
        parts.append([message.claim_id for message in batch])
        if len(batch) > 1 and "c11" in parts[-1]:
            raise ValueError("one of them fails once")
        return []

    await handle_isolating_poison(handler, decoder, attempts=2, most=10)
    handed = [message.claim_id for _, message in decoder.batch]
    assert len(handed) == 25 and "c11" in handed[:10]
    assert parts == [handed[:10], *([claim] for claim in handed[:10]), handed[10:20], handed[20:]]
