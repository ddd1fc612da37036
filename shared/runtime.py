"""The Kafka side that the three services share, built on FastStream: the broker, batch subscribers
that acknowledge only after the effect, the dead-letter path, the outbox, health and metrics.

Every subscriber consumes bounded batches, and hands its handler at most `batch_max_records`
messages at a time (a record of a batched topic holds several). Its decoder validates each record
against the topic's contract (and its Kafka key against the contract's key field, but for a
batched topic's, whose messages' keys differ); a record that fails goes to
`gongji.dead-letters.v1` with the reason and the batch goes on without it, and its sender hears of
it (an answer on its own topics, or its own dead-letter topic). A record that the handler keeps
failing on is dead-lettered alone after a few tries; its neighbours are not held up.
The batch's offsets are committed only once all its outputs are confirmed by Kafka; confirmation
and commit overlap the next batch (shared/acknowledgements.py). A transient error — Kafka or Redis
unreachable — sends the consumer back to the first record not confirmed, whose effects are
idempotent in Redis, so a crash at any point loses nothing and repeats no effect.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, NamedTuple

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faststream import AckPolicy
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from faststream.security import SASLScram512
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_json
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.acknowledgements import Acknowledgements, FlushOnRevoke
from shared.clock import Clock
from shared.contracts import DeadLetter, ReasonCode
from shared.credentials import kafka_bootstrap, password, ssl_context
from shared.faststream_hooks import (
    aiokafka_producer,
    batch_would_wait,
    replace_batch_poll,
    set_batch_payload,
    wait_longer_when_idle,
)
from shared.ids import derived_event_id, mask_person_ids
from shared.operations import end_process, is_fatal, operations_routes
from shared.partitioner import partition_of
from shared.redis_client import Barrier, ReplicaBehind
from shared.redis_functions import REDIS_SECONDS
from shared.settings import Settings
from shared.topics import CLAIM_PATH, DEAD_LETTERS, Topic, route_group

logger = logging.getLogger("gongji")

# A dead letter carries at most this much of its record (base64 adds a third): a record as large
# as the broker accepts must still fit in its dead letter, or the partition would stall for good.
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024

MESSAGES = Counter("gongji_messages_total", "Input messages by topic and outcome", ["service", "topic", "outcome"])
OUTPUTS = Counter("gongji_outputs_total", "Messages published by topic", ["service", "topic"])
CONFLICTS = Counter("gongji_conflicting_inputs_total", "Inputs refused as CONFLICT", ["service", "topic"])
BATCH_SECONDS = Histogram(
    "gongji_batch_seconds",
    "Time to handle one batch, its outputs handed to the producer",
    ["service", "topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# Where a record's time goes on a hop (the latency budget of `gongji load`), summed over records:
# a phase's total over the records' count is its mean per record. The phases follow one another:
# `waiting` (created by its producer → handed to the handler: linger, broker, fetch, the queue),
# `handler` (Python), `redis` (round trips), `publish` (the previous batch's outputs confirmed, this
# batch's handed to the producer). Their confirmation and the commit overlap the next batch.
HOP_SECONDS = Counter(
    "gongji_hop_seconds", "Record-seconds spent in each phase of a hop", ["service", "topic", "phase"]
)
HOP_RECORDS = Counter("gongji_hop_records", "Records timed by the hop budget", ["service", "topic"])
HOP_PHASES = ("waiting", "handler", "redis", "publish")
CONSUMER_LAG = Gauge(
    "gongji_consumer_lag",
    "Records on the consumer's partitions not yet read (the broker's end less its position), by route",
    ["service", "topic"],
)


class HopBudget:
    """Times the phases of one subscriber's batches for HOP_SECONDS, by the records' topics (a
    consumer of several topics serves several hops)."""

    def __init__(self, service: str, topics: Sequence[Topic]) -> None:
        patterns = {topic.name: topic.pattern for topic in topics}
        self._phase = {
            (name, phase): HOP_SECONDS.labels(service, pattern, phase)
            for name, pattern in patterns.items()
            for phase in HOP_PHASES
        }
        self._records = {name: HOP_RECORDS.labels(service, pattern) for name, pattern in patterns.items()}
        self._batch: dict[str, int] = {}  # records of the batch in hand, by topic

    def handed(self, records: Sequence[ConsumerRecord]) -> dict[str, int]:
        """Starts timing a batch; returns how many of its records came on each topic."""
        now_ms = time.time() * 1000
        self._batch = {}
        for record in records:
            self._batch[record.topic] = self._batch.get(record.topic, 0) + 1
            self._phase[(record.topic, "waiting")].inc(max(0.0, now_ms - record.timestamp) / 1000)
        for name, count in self._batch.items():
            self._records[name].inc(count)
        return self._batch

    def done(self, handler: float, redis: float, publish: float) -> None:
        redis = min(redis, handler)  # round trips that overlapped (a handler's concurrent parts) count once
        self._spend("handler", handler - redis)
        self._spend("redis", redis)
        self._spend("publish", publish)

    def _spend(self, phase: str, seconds: float) -> None:
        """Every record of the batch spent these seconds in this phase."""
        for name, count in self._batch.items():
            self._phase[(name, phase)].inc(seconds * count)


@dataclass(frozen=True)
class Refused:
    """A handler's answer for an input that has no event stream of its own to carry a refusal
    (enrollment, kinship, credits, supervision): the runtime sends the input's record to the
    dead-letter topic with this reason, so that the sender can see it."""

    message: BaseModel  # the input, exactly as the handler received it
    reason: ReasonCode
    error: str  # what is wrong, in words; never personal data


@dataclass(frozen=True)
class Delivery:
    """A message with the topic it came in on, for a handler that serves several topics with one
    consumer (settlement: every province's claims topic)."""

    topic: Topic
    message: BaseModel
    sent_ms: int | None = None  # its Kafka record's time (the sender's), in ms since the epoch


@dataclass(frozen=True)
class ToTopic:
    """An output for a topic other than its model's own (a province's copy of a settlement)."""

    topic: Topic
    message: BaseModel


METADATA_MAX_AGE_MS = 5_000
# The largest request the producer sends, aiokafka's default: an output larger than it is refused
# before anything leaves (dead letters carry at most DEAD_LETTER_PAYLOAD_BYTES of their record).
MAX_REQUEST_BYTES = 1024 * 1024


def make_broker(settings: Settings, principal: str) -> KafkaBroker:
    """A broker client authenticated as `principal` (SCRAM over TLS, the CA verified)."""
    # acks=all with idempotence: a confirmed output is on every in-sync replica, never doubled.
    return KafkaBroker(
        kafka_bootstrap(settings).split(","),  # FastStream takes a list of addresses, not a comma list
        security=SASLScram512(principal, password(settings, principal), ssl_context=ssl_context(settings)),
        allow_auto_create_topics=False,  # topics are the operator's (`gongji infra up`), never a service's
        acks="all",
        enable_idempotence=True,
        # No linger: a batch's outputs are all handed to the producer before it next runs, so they
        # leave together anyway; a linger would only add its milliseconds to every hop.
        linger_ms=0,
        max_request_size=MAX_REQUEST_BYTES,
        request_timeout_ms=30_000,
        # aiokafka 0.14 retries a ListOffsets answered NotLeaderForPartition without refreshing its
        # metadata: a partition awaiting its first position when its leader moved (a consumer
        # joining while a broker fails) waited for the next periodic refresh, 5 minutes by default.
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        client_id="gongji",
        logger=logger,
    )


class Outbox:
    """The outputs of one batch, handed to the producer together; their confirmations come back as
    futures (shared/acknowledgements.py waits for them before the batch's offsets are committed).

    Each output goes straight to the broker's aiokafka producer, as its contract's JSON keyed by its
    key field: FastStream's publish path (a command object, middlewares, a correlation id and a
    content-type header per record, none of which a reader of these topics uses) cost as much CPU
    again as the producer itself. The FastStream publishers are declared all the same: they are what
    the AsyncAPI document lists (gongji/ops/asyncapi.py)."""

    def __init__(self, broker: KafkaBroker, service: str, topics: Sequence[Topic]) -> None:
        self._broker = broker
        for topic in topics:
            broker.publisher(
                topic.name,
                schema=list[topic.model] if topic.batched else topic.model,  # type: ignore[valid-type]
                title=f"{topic.name}:{service}",
                description=topic.description,
                # A province's topics are documented once, by name pattern, not 32 times.
                include_in_schema=not topic.province,
            )
        self._topic_by_model = topics_by_model(topics)
        self._sent = {topic.name: OUTPUTS.labels(service, topic.name) for topic in topics}
        self._batched = {topic.name for topic in topics if topic.batched}

    async def send(self, messages: Sequence[BaseModel | ToTopic]) -> list[asyncio.Future]:
        producer = aiokafka_producer(self._broker)
        if producer is None:
            raise RuntimeError("the broker's producer is not started, or FastStream moved its handle")
        pending = []
        by_partition, counts = await self._by_partition(producer, messages)
        for (topic_name, partition), records in by_partition.items():
            pending += await _handed_over(producer, topic_name, partition, records)
        for topic_name, count in counts.items():
            self._sent[topic_name].inc(count)
        return pending

    async def _by_partition(
        self, producer: Any, messages: Sequence[BaseModel | ToTopic]
    ) -> tuple[dict[tuple[str, int | None], list[tuple[bytes | None, bytes]]], dict[str, int]]:
        """Each output as its contract's JSON, keyed, under its topic and partition, in the order
        given (a batched topic's as arrays, shared/topics.py: Topic.batched), and how many outputs
        each topic has; anything that cannot leave is refused before anything does."""
        counts: dict[str, int] = {}
        partitions: dict[str, int] = {}  # each topic's, from the producer's metadata, once a batch
        by_partition: dict[tuple[str, int | None], list[tuple[bytes | None, bytes]]] = {}
        for message in messages:
            if isinstance(message, ToTopic):
                topic, message = message.topic, message.message
            else:
                topic = self._topic_by_model[type(message)]
            if topic.name not in self._sent:
                raise KeyError(f"{topic.name} is not among this outbox's topics")
            counts[topic.name] = counts.get(topic.name, 0) + 1
            # An empty key (a keyless record's dead letter) goes as no key, to a partition the
            # producer picks among those with a leader, as FastStream sent it.
            key = str(getattr(message, topic.key_field)).encode() or None
            partition = None
            if key is not None:
                if topic.name not in partitions:
                    partitions[topic.name] = len(await producer.partitions_for(topic.name))
                partition = partition_of(key, partitions[topic.name])
            by_partition.setdefault((topic.name, partition), []).append((key, to_json(message)))
        for (name, partition), records in by_partition.items():
            if name in self._batched:
                records = by_partition[(name, partition)] = _packed(records)
            for key, value in records:
                if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []) > MAX_REQUEST_BYTES:
                    # Refused here, as the producer's own check did: the broker's refusal would come
                    # back on every retry of the batch.
                    raise MessageSizeTooLargeError(f"an output for {name} is larger than a request to Kafka")
        return by_partition, counts


# How much of a request one record of a batched topic fills at most: half, so that its key and the
# record's own bytes always fit beside it.
PACKED_BYTES = MAX_REQUEST_BYTES // 2


def _packed(records: list[tuple[bytes | None, bytes]]) -> list[tuple[bytes | None, bytes]]:
    """One partition's messages of a batched topic as JSON arrays, in their order, as few as hold
    them in PACKED_BYTES each (a larger message alone), each keyed by its first message's key."""
    packed: list[tuple[bytes | None, bytes]] = []
    start, size = 0, 1
    for end, (_, value) in enumerate(records):
        if end > start and size + len(value) + 1 > PACKED_BYTES:
            packed.append((records[start][0], b"[" + b",".join(value for _, value in records[start:end]) + b"]"))
            start, size = end, 1
        size += len(value) + 1
    packed.append((records[start][0], b"[" + b",".join(value for _, value in records[start:]) + b"]"))
    return packed


async def _handed_over(
    producer: Any, topic: str, partition: int | None, records: list[tuple[bytes | None, bytes]]
) -> list[asyncio.Future]:
    """One partition's outputs, in their order, as one record batch: the producer's path for a
    single record (a future, a metadata wait, lookups each) cost 27 µs of CPU a record here, a
    batch's about 10 (docs/performance.md). Only while the partition has no batch waiting to go
    (another route's, or this one's not gone yet): a batch would wait for it. Then, and for what
    outgrows a batch and for keyless outputs, record by record, added to the batch waiting."""
    pending, handed = [], 0
    if partition is not None and not batch_would_wait(producer, topic, partition):
        batch = producer.create_batch()
        while handed < len(records) and batch.append(key=records[handed][0], value=records[handed][1], timestamp=None):
            handed += 1
        pending.append(await producer.send_batch(batch, topic, partition=partition))
    for key, value in records[handed:]:
        pending.append(await producer.send(topic, value, key=key, partition=partition))
    return pending


# A service's answer to a sender for a record it dead-lettered, on the sender's own topics (a claim
# whose id can be read: rejected on its settlements topics), or None to send the dead letter instead.
SenderAnswer = Callable[[Topic, bytes, DeadLetter], list[BaseModel | ToTopic] | None]


class DeadLetterDecoder:
    """Validates every record of a batch against its contract. The invalid ones become dead
    letters, held until the batch's outputs are published (so that a batch retried after an
    outage writes each of them once); the valid ones go to the handler as contract models."""

    def __init__(
        self,
        service: str,
        topics: Sequence[Topic],
        clock: Clock,
        deliveries: bool = False,
        answer_sender: SenderAnswer | None = None,
        writes_dead_letters: bool = True,
    ) -> None:
        self.service = service
        self._topics = {topic.name: topic for topic in topics}
        self._clock = clock
        self._deliveries = deliveries  # hand the handler Delivery(topic, message), not bare messages
        self._answer_sender = answer_sender
        # False for a route that reads the platform's own outputs (Route.own_outputs).
        self.writes_dead_letters = writes_dead_letters
        self.records: Sequence[ConsumerRecord] = ()  # the batch in hand, every record
        self.batch: list[tuple[ConsumerRecord, Any]] = []  # its valid messages, each with its record
        # Where each message handed over came from, by the id of its model: its record, and its place
        # there when the record holds several (shared/topics.py: Topic.batched).
        self.sources: dict[int, tuple[ConsumerRecord, int | None]] = {}
        self.dead_letters: list[DeadLetter] = []
        self.to_senders: list[BaseModel | ToTopic] = []  # what the dead letters' senders are told

    async def __call__(self, message: Any) -> list[Any]:
        self.records = message.raw_message
        self.batch, self.sources, self.dead_letters, self.to_senders = [], {}, [], []
        for record in self.records:
            topic = self._topics[record.topic]
            if topic.batched:
                self._take_messages(topic, record)
                continue
            try:
                model = topic.model.model_validate_json(record.value or b"")
            except ValidationError as error:
                self._refuse(record, describe_validation_error(error), _reason(error))
                continue
            if not self.writes_dead_letters:  # its key is the platform's own (a dead letter's may be empty)
                self._hand_over(topic, record, model)
                continue
            if (wrong_key := _wrong_key(topic, record, model)) is not None:
                self._refuse(record, wrong_key, ReasonCode.INVALID_MESSAGE)
                continue
            self._hand_over(topic, record, model)
        for letter in self.dead_letters:
            MESSAGES.labels(self.service, letter.source_topic, "dead_lettered").inc()
        return [item for _, item in self.batch]

    def _hand_over(self, topic: Topic, record: ConsumerRecord, model: BaseModel, index: int | None = None) -> None:
        self.sources[id(model)] = (record, index)
        self.batch.append((record, Delivery(topic, model, record.timestamp) if self._deliveries else model))

    def _take_messages(self, topic: Topic, record: ConsumerRecord) -> None:
        """A record of a batched topic: each of its messages is handed over alone, and each that
        breaks the contract is refused alone, under its place in the record. Their keys are not
        checked against the record's: the platform's own outbox put each message in its key's
        partition (shared/partitioner.py), and only the platform writes these topics."""
        try:
            models: list[BaseModel | None] = list(_array_of(topic.model).validate_json(record.value or b""))
        except ValidationError:
            items = _json_array(record.value or b"")
            if items is None:
                self._refuse(
                    record, "the record is not a JSON array (in UTF-8) of messages", ReasonCode.INVALID_MESSAGE
                )
                return
            models = []
            for index, item in enumerate(items):
                value = json.dumps(item).encode()
                try:
                    models.append(topic.model.model_validate_json(value))
                except ValidationError as error:
                    key = item.get(topic.key_field) if isinstance(item, dict) else None
                    message = OneOfMany(index, value, _usable_key(key))
                    self._refuse(record, describe_validation_error(error), _reason(error), message)
                    models.append(None)
        for index, model in enumerate(models):
            if model is not None:
                self._hand_over(topic, record, model, index)

    def _refuse(self, record: ConsumerRecord, error: str, reason: ReasonCode, message: OneOfMany | None = None) -> None:
        if not self.writes_dead_letters:
            _skipped(self.service, record, error)
            return
        letter, *to_sender = self.refusal(record, error, reason, message=message)
        self.dead_letters.append(letter)  # type: ignore[arg-type]
        self.to_senders.extend(to_sender)

    def refused(self, refused: Refused) -> list[BaseModel | ToTopic]:
        """The refusal of a message the handler refused (or kept failing on): it may have changed
        state. A handler of several topics gets Deliveries and may refuse the message inside one."""
        model = refused.message.message if isinstance(refused.message, Delivery) else refused.message
        record, index = self.sources[id(model)]
        topic = self._topics[record.topic]
        message = (
            None if index is None else OneOfMany(index, to_json(model), _usable_key(getattr(model, topic.key_field)))
        )
        return self.refusal(record, refused.error, refused.reason, broke_the_contract=False, message=message)

    def refusal(
        self,
        record: ConsumerRecord,
        error: str,
        reason: ReasonCode,
        broke_the_contract: bool = True,
        message: OneOfMany | None = None,
    ) -> list[BaseModel | ToTopic]:
        """A refused record's dead letter (or of one message of it, with its place there), then what
        its sender is told: the service's answer on the sender's own topics if it gives one (only
        for a record that broke the contract: one the handler refused or kept failing on may have
        changed state), else the dead letter on the sender's dead-letter topic with person ids
        masked (nothing more for the national platform's own inputs: it reads the national one)."""
        letter = self.dead_letter(record, error, reason, message)
        topic = self._topics[record.topic]
        answer = (
            self._answer_sender(topic, message.value if message else record.value or b"", letter)
            if self._answer_sender and broke_the_contract
            else None
        )
        if answer is not None:
            return [letter, *answer]
        return [letter, *([ToTopic(topic.refusals_to, masked(letter))] if topic.refusals_to else [])]

    def dead_letter(
        self, record: ConsumerRecord, error: str, reason: ReasonCode, message: OneOfMany | None = None
    ) -> DeadLetter:
        index, value, key = (
            message if message else (None, record.value or b"", (record.key or b"").decode(errors="replace"))
        )
        place = (str(record.partition), str(record.offset), *(() if index is None else (str(index),)))
        if index is not None:
            # Its place in the record, in words: a field of its own would be refused by the
            # release before's readers of dead letters (docs/contract.md).
            error = f"message {index} of the record: {error}"
        logger.warning(
            "dead-lettered %s[%d]@%d (%s): %s", record.topic, record.partition, record.offset, reason.value, error
        )
        return DeadLetter(
            event_id=derived_event_id("dead-letter", self.service, record.topic, *place),
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=error,
            payload=base64.b64encode(value[:DEAD_LETTER_PAYLOAD_BYTES]).decode(),
            payload_bytes=len(value),
            payload_sha256=hashlib.sha256(value).hexdigest(),
            at=self._clock.now(),
            service=self.service,
            source_key=key,
            reason=reason,
        )


class OneOfMany(NamedTuple):
    """A message of a batched topic's record (shared/topics.py: Topic.batched): its place in the
    record, its JSON (as written again: a record's bytes hold many), and its own key."""

    index: int
    value: bytes
    key: str


@functools.cache
def _array_of(model: type[BaseModel]) -> TypeAdapter:
    """The contract of a batched topic's record: a JSON array of its model."""
    return TypeAdapter(list[model])  # type: ignore[valid-type]


# Every key field of the contract is an id of at most 128 characters (claim ids are the longest).
MAX_KEY_CHARACTERS = 128


def _usable_key(value: object) -> str:
    """A message's own key for its dead letter, as far as it can be one: a string that is UTF-8 and
    no longer than a Kafka key of the contract's (an id); else none. A dead letter that cannot leave
    would hold its partition back for ever."""
    if not isinstance(value, str) or len(value) > MAX_KEY_CHARACTERS:
        return ""
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate, which Python's json reads and UTF-8 cannot carry
        return ""
    return value


def _json_array(value: bytes) -> list[Any] | None:
    """A record that is not an array of valid messages, as its items, to be read one by one; None
    when it is not a JSON array at all."""
    try:
        items = json.loads(value.decode())  # UTF-8 only, as the contract's own parser reads it
    except (ValueError, RecursionError):
        return None
    return items if isinstance(items, list) else None


def _skipped(service: str, record: ConsumerRecord, error: str) -> None:
    """A record of the platform's own outputs that fits no contract: its dead letter would be read
    again (a dead letter of a dead letter, for ever), so it is logged and skipped. The deep audit
    finds an output that fits no contract."""
    logger.error(
        "skipped %s[%d]@%d, an output that cannot be read: %s", record.topic, record.partition, record.offset, error
    )
    MESSAGES.labels(service, record.topic, "skipped").inc()


def masked(letter: DeadLetter) -> DeadLetter:
    """A dead letter as its sender reads it: every resident id in its payload, key and error masked
    (its size and hash stay those of the record as sent, so that the sender can tell which it was)."""
    shown = base64.b64decode(letter.payload).decode(errors="surrogateescape")
    return letter.model_copy(
        update={
            "payload": base64.b64encode(mask_person_ids(shown).encode(errors="surrogateescape")).decode(),
            "source_key": mask_person_ids(letter.source_key),
            "error": mask_person_ids(letter.error),
        }
    )


def _wrong_key(topic: Topic, record: ConsumerRecord, model: BaseModel) -> str | None:
    """Per-key order rests on the Kafka key: it must be the contract's key field, exactly."""
    expected = str(getattr(model, topic.key_field))
    if record.key is None:
        return f"the Kafka key is missing: it must be the message's {topic.key_field}"
    if record.key != expected.encode():
        return f"the Kafka key differs from the message's {topic.key_field}"
    return None


def describe_validation_error(error: ValidationError) -> str:
    """A short, readable reason: which field, what is wrong (never the personal data itself)."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False, include_context=False)[:5]:
        where = ".".join(str(step) for step in detail["loc"]) or "message"
        parts.append(f"{where}: {detail['msg']}")
    return "; ".join(parts)


def _reason(error: ValidationError) -> ReasonCode:
    """An amount above the contract's bound has a reason of its own."""
    for detail in error.errors(include_url=False, include_input=False):
        if detail["type"] == "less_than_equal" and str(detail["loc"][-1]).endswith("_fen"):
            return ReasonCode.AMOUNT_OUT_OF_RANGE
    return ReasonCode.INVALID_MESSAGE


# Errors that say the infrastructure is unwell, not the message: the batch is retried as a whole
# (nothing is skipped) until Kafka or Redis answers again. redis-py raises its own class for the
# replies it knows (and strips their code); the others keep the code at the start of their text.
_TRANSIENT = (
    ReplicaBehind,
    # A Redis Cluster out of reach, or slots not covered while it fails over (not RedisErrors): a
    # batch then waits, never dead-letters what it could not apply (a refund, a draw).
    RedisClusterException,
    ClusterError,
    RedisConnectionError,
    RedisTimeoutError,
    OutOfMemoryError,
    ReadOnlyError,
    NoPermissionError,
    NoScriptError,
    ClusterDownError,
    MasterDownError,
    TryAgainError,
    OSError,
    asyncio.TimeoutError,
)
_TRANSIENT_REPLIES = (
    "BUSY",
    "MISCONF",
    "NOREPLICAS",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "TRYAGAIN",
    "LOADING",
    "Function not found",
)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, _TRANSIENT):
        return True
    if isinstance(error, KafkaError):
        return error.retriable
    return isinstance(error, ResponseError) and str(error).startswith(_TRANSIENT_REPLIES)


# How long a starting service waits out an unwell Kafka or Redis (a node down, a failover under
# way) before it gives up: its checks are retried, as a batch is, instead of failing the start.
START_PATIENCE_SECONDS = 60.0


async def patiently(check: Callable[[], Awaitable[None]], what: str, patience: float = START_PATIENCE_SECONDS) -> None:
    """Runs `check` until it passes; a transient error is retried (pausing up to 2 s) until
    `patience` runs out, any other error (Redis not durable, a library missing) is raised at once."""
    deadline, pause = time.monotonic() + patience, 0.2
    while True:
        try:
            return await check()
        except Exception as error:
            if not is_transient(error) or time.monotonic() + pause > deadline:
                raise
            logger.warning("%s: %s; trying again in %.1f s", what, error, pause)
        await asyncio.sleep(pause)
        pause = min(2 * pause, 2.0)


BatchHandler = Callable[[list[Any]], Awaitable[Sequence[BaseModel | ToTopic | Refused]]]


async def handle_isolating_poison(
    handler: BatchHandler, decoder: DeadLetterDecoder, attempts: int, most: int | None = None
) -> list[BaseModel | ToTopic]:
    """Runs the batch, `most` messages at a time, in their order; if a message in a part fails for
    a reason of its own, runs that part's one by one (effects are idempotent, so the ones already
    applied answer as duplicates), and a message that fails `attempts` times is dead-lettered alone:
    its neighbours and its partition go on. A transient error is raised, so that the whole batch is
    retried and nothing is skipped."""
    batch = decoder.batch
    most = most or max(1, len(batch))
    answers: list[BaseModel | ToTopic | Refused] = []
    for start in range(0, len(batch), most):
        part = batch[start : start + most]
        try:
            answers.extend(await handler([model for _, model in part]))
        except Exception as error:  # noqa: BLE001 - sorted below: transient, or one poisonous record
            # A route of the platform's own outputs: a record that was read fails through no fault of
            # its own (it is the platform's); it is read again until it is handled, never skipped.
            if is_transient(error) or not decoder.writes_dead_letters:
                raise
            logger.warning("batch of %d failed (%s); handling it one by one", len(part), type(error).__name__)
            for record, model in part:
                answers.extend(await _handle_alone(handler, decoder, record, model, attempts))
    outputs: list[BaseModel | ToTopic] = []
    for answer in answers:
        if isinstance(answer, Refused):
            outputs.extend(decoder.refused(answer))
        else:
            outputs.append(answer)
    return [*decoder.dead_letters, *decoder.to_senders, *outputs]


async def _handle_alone(
    handler: BatchHandler, decoder: DeadLetterDecoder, record: ConsumerRecord, model: BaseModel, attempts: int
) -> Sequence[BaseModel | Refused]:
    for attempt in range(1, attempts + 1):
        try:
            return await handler([model])
        except Exception as error:  # noqa: BLE001
            if is_transient(error):
                raise
            logger.warning(
                "%s[%d]@%d failed (try %d of %d): %s",
                record.topic,
                record.partition,
                record.offset,
                attempt,
                attempts,
                type(error).__name__,
            )
            failure = f"processing failed {attempts} times: {type(error).__name__}"
    return [Refused(model, ReasonCode.INVALID_MESSAGE, failure)]


async def _without_instructions(records: tuple[ConsumerRecord, ...], parse: Callable) -> Any:
    """Kafka headers are data, never instructions: `reply_to` is dropped (FastStream would publish
    the handler's result to whatever topic it names), and a header that is not UTF-8 is kept
    readable instead of failing the whole batch."""
    return await parse(
        tuple(
            replace(
                record,
                headers=[
                    (name, (value or b"").decode(errors="replace").encode())
                    for name, value in record.headers
                    if name != "reply_to"
                ],
            )
            for record in records
        )
    )


def hands_deliveries(topics: Sequence[Topic]) -> bool:
    """Whether a route's handler gets each message with its topic (a Delivery): when its topics
    differ in what a handler tells apart, their contract or their province. Two versions of one
    hop (shared/topics.py: DRAW_REQUESTS_V1) do not."""
    return len({(topic.model, topic.province) for topic in topics}) > 1


def subscribe(
    broker: KafkaBroker,
    topics: tuple[Topic, ...],
    handler: BatchHandler,
    *,
    service: str,
    service_group: str,
    settings: Settings,
    outbox: Outbox,
    clock: Clock,
    answer_sender: SenderAnswer | None = None,
    writes_dead_letters: bool = True,
    replicated: Barrier,
) -> Acknowledgements:
    """Registers `handler` for bounded batches of `topics`; its outputs and the batch's dead
    letters go through `outbox`, confirmed before the batch's offsets are committed (the returned
    pipeline). The route reads in a consumer group of its own, named under `service_group`.
    Several topics are read by one consumer; the handler gets each message as a Delivery that names
    its topic when they differ in contract or province (hands_deliveries, Route.handed)."""
    several = len(topics) > 1
    deliveries = hands_deliveries(topics)
    topic = topics[0]
    claim_path = topic.name in CLAIM_PATH
    label = topic.pattern
    decoder = DeadLetterDecoder(
        service,
        topics,
        clock,
        deliveries=deliveries,
        answer_sender=answer_sender,
        writes_dead_letters=writes_dead_letters,
    )

    budget = HopBudget(service, topics)
    acknowledgements = Acknowledgements(f"{service} {label}")

    async def consume(batch: list[BaseModel]) -> None:
        records = decoder.records
        counts = budget.handed([record for record, _ in decoder.batch])
        redis_seconds = [0.0]
        reset = REDIS_SECONDS.set(redis_seconds)
        try:
            with BATCH_SECONDS.labels(service, label).time():
                started = time.perf_counter()
                try:
                    primaries = replicated.primaries()  # where this batch's writes can go
                    outputs = await handle_isolating_poison(
                        handler, decoder, settings.poison_attempts, settings.batch_max_records
                    )
                    waited = time.perf_counter()
                    await replicated(primaries)  # the batch's writes survive a failover before anything leaves
                    redis_seconds[0] += time.perf_counter() - waited
                except Exception:
                    acknowledgements.rewind(records)  # transient: the batch is read again, nothing skipped
                    raise
                handled = time.perf_counter()
                await acknowledgements.send(records, lambda: outbox.send(outputs))
            budget.done(handled - started, redis_seconds[0], time.perf_counter() - handled)
        finally:
            REDIS_SECONDS.reset(reset)
        for name, count in counts.items():
            MESSAGES.labels(service, name, "processed").inc(count)

    # FastStream reads the payload's schema (for validation and AsyncAPI) from the annotation;
    # Deliveries were validated by the decoder already.
    set_batch_payload(consume, list[Any] if deliveries else list[topic.model])
    consume.__name__ = f"{service}_{label.replace('.', '_').replace('-', '_')}"
    consume.__doc__ = topic.model.__doc__
    subscriber = broker.subscriber(
        *(one.name for one in topics),
        batch=True,
        group_id=route_group(service_group, topic),
        auto_offset_reset="earliest",
        # A crashed instance's partitions move on once its session lapses (a stopped one's at once:
        # it leaves its group).
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_session_timeout_ms // 4,
        rebalance_timeout_ms=settings.consumer_rebalance_timeout_ms,
        **_fetch_waits(settings, claim_path, own_outputs=not writes_dead_letters),
        # `acknowledgements` commits, once the batch's effects are done and its outputs confirmed;
        # on a transient error it seeks back (the effects are idempotent), never skips.
        ack_policy=AckPolicy.MANUAL,
        listener=FlushOnRevoke(acknowledgements),
        parser=_without_instructions,
        decoder=decoder,
        no_reply=True,
        title=f"{label}:{service}",
        # A province's topics are documented once, by name pattern (gongji/ops/asyncapi.py), not 32 times.
        include_in_schema=not several,
    )
    subscriber(consume)
    replace_batch_poll(
        subscriber,
        _poll_without_pause(settings, acknowledgements, CONSUMER_LAG.labels(service, label), claim_path),
    )
    return acknowledgements


def _fetch_waits(settings: Settings, claim_path: bool, own_outputs: bool) -> dict[str, int]:
    """How long a route's fetches wait at the broker, and for how much data.

    aiokafka keeps one fetch in flight per broker, for the partitions with nothing buffered: a
    partition just handed over is fetched again only when that fetch returns, which the broker
    holds until data comes or the wait ends (500 ms by default: the warm-up stall). Under load a
    fetch that waits for a few records first makes fewer, larger batches: at 500 claims/s p99 fell
    from 1.5 s to 0.5 s here (fewer requests, Redis round trips and commits). Only the hops a claim
    waits on pay for the short wait, and only while claims flow: idle, their fetches wait as long
    as the others' (shared/faststream_hooks.py: wait_longer_when_idle). A route of the platform's
    own outputs (the statistics' fold of every result) keeps no claim waiting: it waits for a large
    batch."""
    if claim_path:
        return {
            "fetch_max_wait_ms": settings.claim_path_fetch_max_wait_ms,
            "fetch_min_bytes": settings.claim_path_fetch_min_bytes,
        }
    return {
        "fetch_max_wait_ms": settings.idle_fetch_max_wait_ms,
        "fetch_min_bytes": settings.own_outputs_fetch_min_bytes if own_outputs else 1,
    }


def _poll_without_pause(
    settings: Settings, acknowledgements: Acknowledgements, lag: Gauge, claim_path: bool
) -> Callable[[Any], Awaitable[tuple]]:
    """FastStream's batch poll sleeps a whole batch timeout after an empty poll, so a record that
    arrives then waits for nothing (a third of a claim's time at 100 claims/s). This poll returns
    as soon as any record is fetched, and only polls again after an empty wait. It also sets the
    route's lag, at most once a second (what the dashboard shows). On the claim path, a fetch
    waits long once its broker's last fetch brought nothing (`wait_longer_when_idle`)."""
    lag_set_at = [0.0]

    async def get_msg(consumer: Any) -> tuple[ConsumerRecord, ...]:
        if claim_path:
            wait_longer_when_idle(consumer, settings.idle_fetch_max_wait_ms)
        if pause := acknowledgements.polling(consumer):
            await asyncio.sleep(pause)
        try:
            batches = await consumer.getmany(
                timeout_ms=settings.poll_timeout_ms, max_records=settings.batch_max_records
            )
        except KafkaError as error:
            if is_fatal(error):
                end_process(error, acknowledgements.subscriber)
            raise
        records = tuple(chain.from_iterable(batches.values()))
        acknowledgements.polled(records)
        if time.monotonic() - lag_set_at[0] >= 1:
            lag_set_at[0] = time.monotonic()
            acknowledgements.lag = await _lag(consumer)
            lag.set(acknowledgements.lag)
        return records

    return get_msg


async def _lag(consumer: Any) -> int:
    """The records on the consumer's partitions it has not read yet (0 for one it knows no end of)."""
    behind = 0
    for partition in consumer.assignment():
        end = consumer.highwater(partition)
        if end is not None:
            behind += max(0, end - await consumer.position(partition))
    return behind


@dataclass(frozen=True)
class Route:
    """One subscription of a service: the topics one consumer reads, and the method of the service's
    handlers class that takes their batches. Each app.py declares its routes once, as data; the app
    binds them to its handlers, and the integration buses and the simulation wire themselves from
    the same declaration. A route hands its handler Deliveries when its topics differ in contract
    or province (shared/runtime.py: hands_deliveries)."""

    topics: tuple[Topic, ...]
    method: Callable[..., Awaitable[Sequence[BaseModel | ToTopic | Refused]]]  # unbound: Handlers.on_x
    # It reads the platform's own outputs (results, dead letters): a record that fits no contract is
    # logged and skipped, never dead-lettered (its dead letter would come back to it); one that fails
    # is read again until it is handled.
    own_outputs: bool = False

    @property
    def name(self) -> str:
        return self.method.__name__

    def handed(self, topic: Topic, message: BaseModel) -> BaseModel | Delivery:
        """A message as this route's handler takes it."""
        return Delivery(topic, message) if hands_deliveries(self.topics) else message

    def bound(self, handlers: object) -> BatchHandler:
        return functools.partial(self.method, handlers)


@dataclass(frozen=True)
class Periodic:
    """A job a service runs every `seconds` beside its consumers: `due` gives what to publish now,
    and `done` is told once Kafka has confirmed all of it (a job that fails is tried again at the
    next tick: what it publishes is derived from Redis, so publishing it again is harmless)."""

    seconds: float
    due: Callable[[], Awaitable[Any]]  # an object with `outputs`
    done: Callable[[Any], Awaitable[None]]

    async def run(self, outbox: Outbox) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            try:
                publication = await self.due()
                await asyncio.gather(*await outbox.send(publication.outputs))
                await self.done(publication)
            except Exception as error:  # noqa: BLE001 - the next tick tries again; the consumers go on
                logger.warning("periodic publication failed, tried again next tick: %r", error)


def topics_by_model(topics: Sequence[Topic]) -> dict[type[BaseModel], Topic]:
    """Where a service's output of each model goes: the first topic listed of it. Its others (a
    province's copy, a sender's dead letters) are written as ToTopic."""
    found: dict[type[BaseModel], Topic] = {}
    for topic in topics:
        found.setdefault(topic.model, topic)
    return found


def build_service_app(
    service: str,
    settings: Settings,
    clock: Clock,
    *,
    group_id: str,
    handlers: object,
    routes: Sequence[Route],
    outputs: Sequence[Topic],
    on_start: Callable[[], Awaitable[None]],
    on_stop: Callable[[], Awaitable[None]],
    broker: KafkaBroker | None = None,
    replicated: Barrier,
    answer_sender: SenderAnswer | None = None,
    periodic: Periodic | None = None,
) -> AsgiFastStream:
    """One service process: its batch subscribers (`routes` bound to `handlers`), and its operations
    port (shared/operations.py): `/health` (every consumer consuming) and `/metrics` (Prometheus).
    `answer_sender` answers the senders of records it dead-letters where it can (SenderAnswer);
    `replicated` is asked for the primaries as each batch begins, and awaited after its handler,
    before its outputs leave (shared/redis_client.py: replication_barrier)."""
    broker = broker or make_broker(settings, service)
    inputs = [topic for route in routes for topic in route.topics]
    outputs = [*outputs, DEAD_LETTERS, *dict.fromkeys(one.refusals_to for one in inputs if one.refusals_to)]
    outbox = Outbox(broker, service, outputs)
    pipelines = [
        subscribe(
            broker,
            route.topics,
            route.bound(handlers),
            service=service,
            service_group=group_id,
            settings=settings,
            outbox=outbox,
            clock=clock,
            answer_sender=answer_sender,
            writes_dead_letters=not route.own_outputs,
            replicated=replicated,
        )
        for route in routes
    ]

    @asynccontextmanager
    async def lifespan(*_: Any, **__: Any):
        await patiently(on_start, f"{service} start")
        try:
            yield
        finally:
            await on_stop()

    app = AsgiFastStream(
        broker,
        asgi_routes=operations_routes(service, pipelines, settings.health_stale_seconds, settings.http_allowed_hosts),
        lifespan=lifespan,
    )

    jobs: list[asyncio.Task] = []

    @app.after_startup
    async def learn_output_topics() -> None:
        await _learn_output_topics(broker, outputs)
        if periodic is not None:
            jobs.append(asyncio.create_task(periodic.run(outbox), name=f"{service} periodic"))

    @app.on_shutdown
    async def commit_what_is_confirmed() -> None:
        """Before the consumers close: the last batches' confirmations and commits (else their
        records are only delivered again after the restart)."""
        for job in jobs:
            job.cancel()
        await asyncio.gather(*(pipeline.flush() for pipeline in pipelines))

    return app


async def _learn_output_topics(broker: KafkaBroker, topics: Sequence[Topic]) -> None:
    """Fetches the partitions of every output topic once the producer is up. Otherwise the first
    publish to each topic waits for its metadata, one topic after another (32 province topics):
    after a start, at 400/s, the first second settled 129 of 398 claims at p50 373 ms; with this,
    305–354 at p50 106–138 ms. If FastStream's producer handle moves, the service starts anyway,
    only the first claims are slower."""
    producer = aiokafka_producer(broker)
    if producer is None:
        logger.warning("output topics not learned at start: FastStream's producer handle moved")
        return
    for topic in topics:
        await producer.partitions_for(topic.name)
