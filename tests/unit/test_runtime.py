"""The runtime's poison handling, in isolation: a record that keeps failing is dead-lettered alone,
its neighbours are answered, a transient error retries the whole batch, and the decoder holds
every record to the contract and its key."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import datetime
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared.clock import FixedClock
from shared.contracts import AccountCredited, DeadLetter, ReasonCode, WalletEvent
from shared.ids import make_person_id, mask_person_id
from shared.redis_client import RedisNotDurable
from shared.runtime import (
    DEAD_LETTER_PAYLOAD_BYTES,
    MAX_REQUEST_BYTES,
    DeadLetterDecoder,
    Delivery,
    Outbox,
    Refused,
    ToTopic,
    _fetch_waits,
    _learn_output_topics,
    _without_instructions,
    handle_isolating_poison,
    is_transient,
    patiently,
)
from shared.settings import Settings
from shared.topics import ACCOUNT_CREDITS, ACCOUNT_SPENDS, DEAD_LETTERS, ENROLLMENT, REGISTRY_DEAD_LETTERS

PERSON = make_person_id("110101", "19800101", 7)
NOW = datetime.fromisoformat("2026-03-02T12:00:00+08:00")


def record(offset: int, value: dict | bytes, key: bytes | None = PERSON.encode(), headers=()) -> ConsumerRecord:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return ConsumerRecord(
        topic=ACCOUNT_CREDITS.name,
        partition=3,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=raw,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(raw),
        headers=list(headers),
    )


def credit(event_id: str, amount_fen: int = 100, **fields) -> dict:
    return {
        "event_id": event_id,
        "person_id": PERSON,
        "amount_fen": amount_fen,
        "occurred_at": "2026-03-02T12:00:00+08:00",
        **fields,
    }


async def decoded(*records: ConsumerRecord) -> DeadLetterDecoder:
    decoder = DeadLetterDecoder("wallet", [ACCOUNT_CREDITS], FixedClock(NOW))
    await decoder(SimpleNamespace(raw_message=records))
    return decoder


def answer(message: AccountCredited) -> WalletEvent:
    return WalletEvent(
        event_id=f"out-{message.event_id}",
        cause_id=message.event_id,
        type="credited",
        provider_id=message.person_id,
        amount_fen=message.amount_fen,
        occurred_at=NOW,
    )


async def test_a_record_that_keeps_failing_is_dead_lettered_alone_and_its_neighbours_are_answered() -> None:
    decoder = await decoded(*(record(offset, credit(f"e{offset}")) for offset in range(10, 20)))
    tries: dict[str, int] = {}

    async def handler(batch: list[AccountCredited]) -> list:
        for message in batch:
            if message.event_id == "e14":
                tries["e14"] = tries.get("e14", 0) + 1
                raise ValueError("a Lua step failed on this one")
        return [answer(message) for message in batch]

    outputs = await handle_isolating_poison(handler, decoder, attempts=3)
    answered = [o.cause_id for o in outputs if isinstance(o, WalletEvent)]
    assert answered == [f"e{n}" for n in range(10, 20) if n != 14]
    (letter,) = [o for o in outputs if not isinstance(o, WalletEvent)]
    assert (letter.offset, letter.partition, letter.reason) == (14, 3, ReasonCode.INVALID_MESSAGE)
    assert "failed 3 times" in letter.error and "ValueError" in letter.error
    assert tries["e14"] == 1 + 3  # the whole batch once, then three tries alone


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("down"),
        ResponseError("LOADING Redis is loading"),
        TimeoutError(),
        *(
            BaseParser.parse_error(reply)
            for reply in (
                "OOM command not allowed when used memory > 'maxmemory'.",
                "READONLY You can't write against a read only replica.",
                "MASTERDOWN Link with MASTER is down",
                "BUSY Redis is busy running a script.",
                "NOPERM User gongji has no permissions to run the 'fcall' command",
                "MISCONF Errors writing to the AOF file: No space left on device",
                "NOREPLICAS Not enough good replicas to write.",
                "TRYAGAIN Multiple keys request during rehashing of slot",
                "CLUSTERDOWN The cluster is down",
                "ERR Function not found",
            )
        ),
    ],
)
async def test_a_transient_error_retries_the_whole_batch_and_skips_nothing(error: Exception) -> None:
    decoder = await decoded(record(1, credit("a")), record(2, credit("b")))

    async def handler(batch: list) -> list:
        raise error

    assert is_transient(error)
    with pytest.raises(type(error)):
        await handle_isolating_poison(handler, decoder, attempts=3)


def test_a_record_s_own_failure_is_not_mistaken_for_an_unwell_redis() -> None:
    lua_error = BaseParser.parse_error(
        "ERR user_script:12: attempt to compare nil with number script: x, on @user_script"
    )
    assert not is_transient(lua_error) and not is_transient(ValueError("BUSY"))
    assert not is_transient(MessageSizeTooLargeError())  # never retried: it would fail the same way forever


async def test_a_dead_letter_of_a_record_as_large_as_the_broker_takes_can_be_published() -> None:
    """A dead letter once carried its whole record, base64: above the producer's request size,
    its partition would have stalled for good. It carries the first 64 KiB, the size and a hash."""
    value = b"{" + b" " * 1_000_000
    (letter,) = (await decoded(record(3, value))).dead_letters
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started: its own size check only
    producer._serialize(letter.source_key.encode(), letter.model_dump_json().encode(), [])
    assert (letter.payload_bytes, letter.payload_sha256) == (len(value), hashlib.sha256(value).hexdigest())
    assert base64.b64decode(letter.payload) == value[:DEAD_LETTER_PAYLOAD_BYTES]


async def test_a_refusal_becomes_a_dead_letter_of_that_record_with_its_reason() -> None:
    decoder = await decoded(record(5, credit("a")), record(6, credit("b")))

    async def handler(batch: list[AccountCredited]) -> list:
        return [Refused(m, ReasonCode.CONFLICT, "used before") if m.event_id == "b" else answer(m) for m in batch]

    first, letter = await handle_isolating_poison(handler, decoder, attempts=3)
    assert first.cause_id == "a"
    assert (letter.offset, letter.reason, letter.error) == (6, ReasonCode.CONFLICT, "used before")


async def test_a_consumer_of_several_topics_may_refuse_the_message_inside_a_delivery() -> None:
    """Settlement's claim-path handler unwraps its Deliveries and refuses a bare draw answer."""
    decoder = DeadLetterDecoder("wallet", [ACCOUNT_CREDITS, ACCOUNT_SPENDS], FixedClock(NOW), deliveries=True)
    await decoder(SimpleNamespace(raw_message=(record(5, credit("a")), record(6, credit("b")))))

    async def handler(batch: list[Delivery]) -> list:
        return [
            Refused(d.message, ReasonCode.INVALID_MESSAGE, "no such claim")
            if d.message.event_id == "b"
            else answer(d.message)
            for d in batch
        ]

    first, letter = await handle_isolating_poison(handler, decoder, attempts=3)
    assert first.cause_id == "a"
    assert (letter.offset, letter.reason, letter.error) == (6, ReasonCode.INVALID_MESSAGE, "no such claim")


async def test_a_dead_letter_has_one_id_however_often_its_record_is_seen() -> None:
    again = [(await decoded(record(8, b"not json"))).dead_letters[0] for _ in range(2)]
    assert again[0].event_id == again[1].event_id
    assert (await decoded(record(9, b"not json"))).dead_letters[0].event_id != again[0].event_id


@pytest.mark.parametrize(
    ("key", "why"), [(None, "missing"), (b"", "differs"), (b"someone else", "differs"), (b"\xff\xfe", "differs")]
)
async def test_the_kafka_key_must_be_the_contracts_key_field(key: bytes | None, why: str) -> None:
    decoder = await decoded(record(1, credit("a"), key=key))
    (letter,) = decoder.dead_letters
    assert decoder.batch == [] and why in letter.error and letter.reason == ReasonCode.INVALID_MESSAGE


async def test_an_amount_above_the_bound_has_its_own_reason() -> None:
    decoder = await decoded(record(1, credit("a", 2**63)), record(2, credit("b", 0)))
    assert [letter.reason for letter in decoder.dead_letters] == [
        ReasonCode.AMOUNT_OUT_OF_RANGE,
        ReasonCode.INVALID_MESSAGE,
    ]


async def test_headers_are_data_reply_to_is_dropped_and_bytes_that_are_not_utf8_are_kept_readable() -> None:
    parsed = {}

    async def parse(records):
        parsed["records"] = records
        return records

    await _without_instructions(
        (
            record(
                1,
                credit("a"),
                headers=[("reply_to", b"gongji.settlements.v1"), ("trace", b"\xff\xfe"), ("empty", None)],
            ),
        ),
        parse,
    )
    (only,) = parsed["records"]
    assert [name for name, _ in only.headers] == ["trace", "empty"]
    assert all(isinstance(value, bytes) and value.decode() is not None for _, value in only.headers)


async def test_a_service_learns_its_output_topics_at_start_and_starts_anyway_if_it_cannot() -> None:
    asked: list[str] = []

    async def partitions_for(topic: str) -> set[int]:
        asked.append(topic)
        return {0}

    producer = SimpleNamespace(partitions_for=partitions_for)
    broker = SimpleNamespace(
        config=SimpleNamespace(producer=SimpleNamespace(_producer=SimpleNamespace(producer=producer)))
    )
    await _learn_output_topics(broker, [ACCOUNT_CREDITS, ACCOUNT_SPENDS])
    assert asked == [ACCOUNT_CREDITS.name, ACCOUNT_SPENDS.name]

    await _learn_output_topics(SimpleNamespace(config=SimpleNamespace(producer=None)), [ACCOUNT_CREDITS])  # no raise


def enrollment_record(offset: int, value: bytes, key: bytes = PERSON.encode()) -> ConsumerRecord:
    return ConsumerRecord(
        topic=ENROLLMENT.name,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=[],
    )


async def test_every_refusal_reaches_its_sender_on_its_own_dead_letter_topic_person_ids_masked() -> None:
    """The registry cannot read gongji.dead-letters.v1 (the operator's); it reads its own, masked."""
    decoder = DeadLetterDecoder("relationship", [ENROLLMENT], FixedClock(NOW))
    broken = json.dumps({"event_id": "e1", "person_id": PERSON, "status": "normal"}).encode()
    await decoder(SimpleNamespace(raw_message=(enrollment_record(4, broken),)))
    (letter,), (copy,) = decoder.dead_letters, decoder.to_senders
    assert copy.topic == REGISTRY_DEAD_LETTERS
    assert PERSON in base64.b64decode(letter.payload).decode() and letter.source_key == PERSON  # the operator's: whole
    shown = copy.message
    assert (
        PERSON not in base64.b64decode(shown.payload).decode()
        and mask_person_id(PERSON) in base64.b64decode(shown.payload).decode()
    )
    assert shown.source_key == mask_person_id(PERSON) and shown.payload_sha256 == letter.payload_sha256
    # A refusal the handler gives (a reused id) reaches the sender the same way.
    outputs = decoder.refusal(
        enrollment_record(5, broken), "event_id used before", ReasonCode.CONFLICT, broke_the_contract=False
    )
    assert [type(output).__name__ for output in outputs] == ["DeadLetter", "ToTopic"]
    assert outputs[1].topic == REGISTRY_DEAD_LETTERS and outputs[1].message.reason == ReasonCode.CONFLICT


async def test_the_national_platforms_own_inputs_have_only_the_national_dead_letter() -> None:
    decoder = await decoded(record(8, b"not json"))
    assert len(decoder.dead_letters) == 1 and decoder.to_senders == []


async def test_a_service_may_answer_the_sender_instead_on_its_own_topics() -> None:
    answered: list = []

    def answer_sender(topic, value, letter):
        answered.append((topic, value, letter.reason))
        return [answer(AccountCredited.model_validate(credit("x")))] if value.startswith(b"{") else None

    decoder = DeadLetterDecoder("relationship", [ENROLLMENT], FixedClock(NOW), answer_sender=answer_sender)
    await decoder(
        SimpleNamespace(raw_message=(enrollment_record(1, b'{"event_id": 1}'), enrollment_record(2, b"not json")))
    )
    assert [type(output).__name__ for output in decoder.to_senders] == ["WalletEvent", "ToTopic"]
    assert [value for _, value, _ in answered] == [b'{"event_id": 1}', b"not json"]
    # A record the handler refused or kept failing on may have changed state: it is not answered as
    # one that broke the contract (whose id stays free), only dead-lettered to its sender.
    refused = decoder.refusal(
        enrollment_record(3, b'{"event_id": 1}'), "failed 3 times", ReasonCode.INVALID_MESSAGE, broke_the_contract=False
    )
    assert [type(output).__name__ for output in refused] == ["DeadLetter", "ToTopic"] and len(answered) == 2


# ---- a route that reads the platform's own outputs ---------------------------------------------


def letter_record(offset: int, value: bytes, key: bytes | None) -> ConsumerRecord:
    return replace(record(offset, value, key), topic=DEAD_LETTERS.name)


async def test_a_route_of_own_outputs_dead_letters_nothing_it_reads() -> None:
    """A dead letter of a keyless record is keyless itself: dead-lettered again for its key, it would
    come back for ever. Read back, it is taken as it is; one that fits no contract is skipped; a
    failure to handle one is the platform's, and the batch is read again."""
    letter = DeadLetter(
        event_id="d1", source_topic=ACCOUNT_CREDITS.name, partition=0, offset=1, error="x", payload="",
        at=NOW, service="wallet", source_key="",
    )  # fmt: skip
    decoder = DeadLetterDecoder("settlement", [DEAD_LETTERS], FixedClock(NOW), writes_dead_letters=False)
    taken = await decoder(
        SimpleNamespace(
            raw_message=(letter_record(1, letter.model_dump_json().encode(), None), letter_record(2, b"{", b"k"))
        )
    )
    assert taken == [letter]
    assert decoder.dead_letters == [] and decoder.to_senders == []

    async def failing(_: list) -> list:
        raise ValueError("the platform's own failure")

    with pytest.raises(ValueError):  # read again until handled: neither skipped nor dead-lettered
        await handle_isolating_poison(failing, decoder, attempts=2)


async def test_a_start_waits_out_a_node_that_is_down_but_not_a_redis_that_loses_writes() -> None:
    """A service started while a Redis node is down (a failover under way) retries its checks; a
    reason of Redis's own (not durable, a library missing) fails the start at once."""
    attempts = []

    async def down_twice() -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:17005")

    await patiently(down_twice, "wallet start")
    assert len(attempts) == 3

    async def not_durable() -> None:
        attempts.append(1)
        raise RedisNotDurable("appendfsync everysec")

    attempts.clear()
    with pytest.raises(RedisNotDurable):
        await patiently(not_durable, "wallet start")
    assert len(attempts) == 1

    async def always_down() -> None:
        raise RedisConnectionError("Error 111")

    with pytest.raises(RedisConnectionError):
        await patiently(always_down, "wallet start", patience=0.5)


class RecordingBatch:
    """Stands in for a producer's record batch: full once it holds `room` records."""

    def __init__(self, room: int) -> None:
        self.room, self.records = room, []

    def append(self, *, key: bytes | None, value: bytes, timestamp: None) -> object | None:
        if len(self.records) == self.room:
            return None
        self.records.append((key, value))
        return object()


class RecordingProducer:
    """Stands in for the broker's aiokafka producer: what the outbox hands it, in order, as
    ("batch", topic, partition, records) or ("one", topic, partition, record)."""

    def __init__(self, room: int = 100, waiting: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.room, self.waiting = room, waiting  # partitions with a batch waiting to go
        self.sent: list[tuple[str, str, int | None, object]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(24))

    def create_batch(self) -> RecordingBatch:
        return RecordingBatch(self.room)

    async def send_batch(self, batch: RecordingBatch, topic: str, *, partition: int) -> object:
        assert (topic, partition) not in self.waiting, "a batch would wait for the one waiting to go"
        self.sent.append(("batch", topic, partition, batch.records))
        return object()

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> object:
        self.sent.append(("one", topic, partition, (key, value)))
        return object()


@pytest.fixture
def producer_of(monkeypatch):
    def install(producer: RecordingProducer) -> RecordingProducer:
        monkeypatch.setattr("shared.runtime.aiokafka_producer", lambda broker: producer)
        monkeypatch.setattr(
            "shared.runtime.batch_would_wait", lambda _, topic, partition: (topic, partition) in producer.waiting
        )
        return producer

    return install


def partition_for(key: bytes) -> int:
    """Where every Kafka client puts a key among 24 partitions."""
    return DefaultPartitioner()(key, [*range(24)], [])


CREDIT = AccountCredited(event_id="e1", person_id=PERSON, amount_fen=5, occurred_at=NOW)


async def test_the_outbox_sends_each_output_as_its_contract_json_keyed_by_its_key_field(producer_of) -> None:
    producer = producer_of(RecordingProducer())
    outbox = Outbox(KafkaBroker(), "wallet", [ACCOUNT_CREDITS, DEAD_LETTERS, REGISTRY_DEAD_LETTERS])
    keyless = DeadLetter(
        event_id="d1", source_topic=ACCOUNT_CREDITS.name, partition=0, offset=1, error="x", payload="",
        at=NOW, service="wallet", source_key="",
    )  # fmt: skip
    assert len(await outbox.send([CREDIT, keyless, ToTopic(REGISTRY_DEAD_LETTERS, keyless)])) == 3
    key, letter = PERSON.encode(), keyless.model_dump_json().encode()
    assert producer.sent == [
        # In the partition every Kafka client would choose for its key.
        ("batch", ACCOUNT_CREDITS.name, partition_for(key), [(key, CREDIT.model_dump_json().encode())]),
        # A keyless record's dead letter is keyless too (FastStream sent an empty key as none), in
        # the partition the producer picks.
        ("one", DEAD_LETTERS.name, None, (None, letter)),
        ("one", REGISTRY_DEAD_LETTERS.name, None, (None, letter)),
    ]
    with pytest.raises(KeyError):  # a topic the outbox was not given: refused before anything leaves
        await outbox.send([CREDIT, ToTopic(ENROLLMENT, CREDIT)])
    assert len(producer.sent) == 3


def credits_of(people: list[str], count: int) -> list[AccountCredited]:
    return [
        AccountCredited(event_id=f"e{number}", person_id=people[number % len(people)], amount_fen=5, occurred_at=NOW)
        for number in range(count)
    ]


def handed_over(producer: RecordingProducer) -> dict[int, list[str]]:
    """Each partition's outputs' event ids, in the order handed over."""
    handed: dict[int, list[str]] = {}
    for how, _, partition, what in producer.sent:
        records = what if how == "batch" else [what]
        handed.setdefault(partition, []).extend(json.loads(value)["event_id"] for _, value in records)
    return handed


def in_their_partitions(credits: list[AccountCredited]) -> dict[int, list[str]]:
    expected: dict[int, list[str]] = {}
    for credit in credits:
        expected.setdefault(partition_for(credit.person_id.encode()), []).append(credit.event_id)
    return expected


async def test_a_partition_s_outputs_go_as_one_batch_and_what_outgrows_it_one_by_one_in_their_order(
    producer_of,
) -> None:
    producer = producer_of(RecordingProducer(room=2))
    credits = credits_of([PERSON], 5)
    await Outbox(KafkaBroker(), "wallet", [ACCOUNT_CREDITS]).send(credits)
    assert [how for how, *_ in producer.sent] == ["batch", "one", "one", "one"]
    assert handed_over(producer) == in_their_partitions(credits)  # every output once, in its order


async def test_a_partition_with_a_batch_waiting_to_go_gets_its_outputs_one_by_one(producer_of) -> None:
    """A new batch would wait for the one waiting (a leader away: up to the request timeout)."""
    other = make_person_id("110101", "19800101", 2)
    assert partition_for(other.encode()) != partition_for(PERSON.encode())
    producer = producer_of(
        RecordingProducer(waiting=frozenset({(ACCOUNT_CREDITS.name, partition_for(PERSON.encode()))}))
    )
    credits = credits_of([PERSON, other], 4)
    await Outbox(KafkaBroker(), "wallet", [ACCOUNT_CREDITS]).send(credits)
    assert sorted((how, partition) for how, _, partition, _ in producer.sent) == sorted(
        [("one", partition_for(PERSON.encode()))] * 2 + [("batch", partition_for(other.encode()))]
    )
    assert handed_over(producer) == in_their_partitions(credits)


async def test_an_output_larger_than_a_request_is_refused_before_anything_leaves(producer_of) -> None:
    producer = producer_of(RecordingProducer())
    outbox = Outbox(KafkaBroker(), "wallet", [ACCOUNT_CREDITS, DEAD_LETTERS])
    huge = DeadLetter(
        event_id="d1", source_topic=ACCOUNT_CREDITS.name, partition=0, offset=1, error="x" * MAX_REQUEST_BYTES,
        payload="", at=NOW, service="wallet", source_key=PERSON,
    )  # fmt: skip
    with pytest.raises(MessageSizeTooLargeError):
        await outbox.send([CREDIT, huge])
    assert producer.sent == [] and not is_transient(MessageSizeTooLargeError())


def test_only_the_claim_path_fetches_with_a_short_wait_and_only_the_own_outputs_wait_for_a_large_batch() -> None:
    settings = Settings()
    claim_path = _fetch_waits(settings, claim_path=True, own_outputs=False)
    own_outputs = _fetch_waits(settings, claim_path=False, own_outputs=True)
    others = _fetch_waits(settings, claim_path=False, own_outputs=False)
    assert claim_path == {"fetch_max_wait_ms": 25, "fetch_min_bytes": 4096}
    assert own_outputs == {"fetch_max_wait_ms": 500, "fetch_min_bytes": 64 * 1024}
    assert others == {"fetch_max_wait_ms": 500, "fetch_min_bytes": 1}  # answered at their first record
