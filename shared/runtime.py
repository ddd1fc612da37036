"""The Kafka side that the three services share, built on FastStream: the broker, batch subscribers
that acknowledge only after the effect, the dead-letter path, the outbox, health and metrics.

Every subscriber consumes bounded batches from one partition. Its decoder validates each record
against the topic's contract; a record that fails goes to `gongji.dead-letters.v1` with the reason
and the batch goes on without it. The handler's outputs are all confirmed by Kafka before the batch
is acknowledged (`NACK_ON_ERROR`: an unexpected error re-delivers the batch, whose effects are
idempotent in Redis), so a crash at any point loses nothing and repeats no effect.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.asgi import AsgiFastStream, make_ping_asgi
from faststream.specification import AsyncAPI
from faststream.kafka import KafkaBroker
from prometheus_client import Counter, Histogram, make_asgi_app
from pydantic import BaseModel, ValidationError

from dataclasses import dataclass

from shared.clock import Clock
from shared.contracts import DeadLetter, ReasonCode
from shared.settings import Settings
from shared.topics import DEAD_LETTERS, Topic

logger = logging.getLogger("gongji")

MESSAGES = Counter("gongji_messages_total", "Input messages by topic and outcome", ["service", "topic", "outcome"])
OUTPUTS = Counter("gongji_outputs_total", "Messages published by topic", ["service", "topic"])
CONFLICTS = Counter("gongji_conflicting_inputs_total", "Inputs refused as CONFLICT", ["service", "topic"])
BATCH_SECONDS = Histogram(
    "gongji_batch_seconds", "Time to handle one batch, outputs confirmed", ["service", "topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


@dataclass(frozen=True)
class Refused:
    """A handler's answer for an input that has no event stream of its own to carry a refusal
    (enrollment, kinship, credits, supervision): the runtime sends the input's record to the
    dead-letter topic with this reason, so that the sender can see it."""

    message: BaseModel  # the input, exactly as the handler received it
    reason: ReasonCode
    error: str  # what is wrong, in words; never personal data


def make_broker(settings: Settings) -> KafkaBroker:
    # acks=all with idempotence: a confirmed output is on every in-sync replica, never doubled.
    return KafkaBroker(
        settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        request_timeout_ms=30_000,
        client_id="gongji",
        logger=logger,
    )


class Outbox:
    """The outputs of one batch, published together and confirmed before the batch is acknowledged."""

    def __init__(self, broker: KafkaBroker, service: str, topics: Sequence[Topic]) -> None:
        self._service = service
        self._publishers = {
            topic.name: broker.publisher(topic.name, schema=topic.model, title=f"{topic.name}:{service}",
                                         description=topic.model.__doc__)
            for topic in topics
        }
        self._topic_by_model = {topic.model: topic for topic in topics}

    async def publish(self, messages: Sequence[BaseModel]) -> None:
        pending = []
        for message in messages:
            topic = self._topic_by_model[type(message)]
            key = str(getattr(message, topic.key_field)).encode()
            pending.append(await self._publishers[topic.name].publish(message, key=key, no_confirm=True))
            OUTPUTS.labels(self._service, topic.name).inc()
        if pending:
            await asyncio.gather(*pending)


class DeadLetterDecoder:
    """Validates every record of a batch against its contract; sends the invalid ones, with the
    reason, to the dead-letter topic and returns the valid ones as contract models."""

    def __init__(self, service: str, topic: Topic, dead_letters: Outbox, clock: Clock) -> None:
        self._service = service
        self._topic = topic
        self._dead_letters = dead_letters
        self._clock = clock

    async def __call__(self, message: Any) -> list[BaseModel]:
        records: Sequence[ConsumerRecord] = message.raw_message
        valid, invalid = [], []
        for record in records:
            try:
                valid.append(self._topic.model.model_validate_json(record.value or b""))
            except ValidationError as error:
                invalid.append(self._dead_letter(record, _describe(error)))
        if invalid:
            MESSAGES.labels(self._service, self._topic.name, "dead_lettered").inc(len(invalid))
            await self._dead_letters.publish(invalid)
        return valid

    def _dead_letter(self, record: ConsumerRecord, error: str) -> DeadLetter:
        logger.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, error)
        return DeadLetter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=error,
            payload=base64.b64encode(record.value or b"").decode(),
            at=self._clock.now(),
            service=self._service,
            source_key=(record.key or b"").decode(errors="replace"),
        )


def _describe(error: ValidationError) -> str:
    """A short, readable reason: which field, what is wrong (never the personal data itself)."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(step) for step in detail["loc"]) or "message"
        parts.append(f"{where}: {detail['msg']}")
    return "; ".join(parts)


BatchHandler = Callable[[list[Any]], Awaitable[Sequence[BaseModel]]]


def subscribe(
    broker: KafkaBroker,
    topic: Topic,
    handler: BatchHandler,
    *,
    service: str,
    group_id: str,
    settings: Settings,
    outbox: Outbox,
    dead_letters: Outbox,
    clock: Clock,
) -> None:
    """Registers `handler` for bounded batches of `topic`; its outputs go through `outbox`."""

    async def consume(batch: list[BaseModel]) -> None:
        with BATCH_SECONDS.labels(service, topic.name).time():
            outputs = await handler(batch)
            await outbox.publish(outputs)
        MESSAGES.labels(service, topic.name, "processed").inc(len(batch))

    # FastStream reads the payload's schema (for validation and AsyncAPI) from the annotation.
    consume.__annotations__ = {"batch": list[topic.model], "return": None}
    consume.__name__ = f"{service}_{topic.name.replace('.', '_').replace('-', '_')}"
    consume.__doc__ = topic.model.__doc__
    broker.subscriber(
        topic.name,
        batch=True,
        group_id=group_id,
        auto_offset_reset="earliest",
        # A crashed instance's partitions move on once its session lapses: the broker's minimum.
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_500,
        # Commit only after the batch's effects and outputs are done; on an unexpected error
        # seek back and retry (the effects are idempotent), never skip.
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        decoder=DeadLetterDecoder(service, topic, dead_letters, clock),
        title=f"{topic.name}:{service}",
    )(consume)


Route = tuple[Topic, BatchHandler]


def build_service_app(
    service: str,
    settings: Settings,
    clock: Clock,
    *,
    group_id: str,
    routes: Sequence[Route],
    outputs: Sequence[Topic],
    on_start: Callable[[], Awaitable[None]],
    on_stop: Callable[[], Awaitable[None]],
    broker: KafkaBroker | None = None,
) -> AsgiFastStream:
    """One service process: its batch subscribers, `/health` (Kafka answers), `/metrics`
    (Prometheus) and `/docs/asyncapi` (its part of the contract, generated from the code)."""
    broker = broker or make_broker(settings)
    outbox = Outbox(broker, service, outputs)
    dead_letters = Outbox(broker, service, [DEAD_LETTERS])
    for topic, handler in routes:
        subscribe(broker, topic, handler, service=service, group_id=group_id, settings=settings,
                  outbox=outbox, dead_letters=dead_letters, clock=clock)

    @asynccontextmanager
    async def lifespan(*_: Any, **__: Any):
        await on_start()
        try:
            yield
        finally:
            await on_stop()

    return AsgiFastStream(
        broker,
        asgi_routes=[("/health", make_ping_asgi(broker, timeout=5.0)), ("/metrics", make_asgi_app())],
        lifespan=lifespan,
        specification=AsyncAPI(broker, title=f"Gongji {service} service", version="1.0.0",
                               description=f"The {service} service of Gongji (共济), contract v1."),
        asyncapi_path="/docs/asyncapi",
    )
