"""Publishing contract messages from the command line and the load generator (plain aiokafka:
these are clients of the system, not services), each as a principal with its credentials."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import BaseModel

from shared.credentials import aiokafka_options
from shared.principals import OPERATOR
from shared.settings import Settings
from shared.topics import Topic


def make_producer(settings: Settings, principal: str) -> AIOKafkaProducer:
    # No linger: what a client sends in one go leaves together anyway, and a latency measured
    # from the send should not include a wait of the client's own.
    return AIOKafkaProducer(
        **aiokafka_options(settings, principal),
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=256 * 1024,
    )


async def publish_models(
    settings: Settings, topic: Topic, messages: Iterable[BaseModel], principal: str = OPERATOR.name
) -> int:
    """Publishes as `principal` and waits until Kafka confirmed every message; returns how many."""
    return await publish_routed(settings, ((topic, message) for message in messages), principal)


async def publish_routed(settings: Settings, messages: Iterable[tuple[Topic, BaseModel]], principal: str) -> int:
    """Publishes each message to its topic as `principal`; waits until Kafka confirmed them all."""
    producer = make_producer(settings, principal)
    await producer.start()
    try:
        pending = [
            await producer.send(
                topic.name, message.model_dump_json().encode(), key=str(getattr(message, topic.key_field)).encode()
            )
            for topic, message in messages
        ]
        for future in pending:
            await future
        return len(pending)
    finally:
        await producer.stop()


class TopicWatcher:
    """Reads every partition of some topics from their current end, handing each record's decoded
    JSON to `on_message(topic, value)` (each message of a batched topic's record alone, with its
    `_index` and `_key` its own); for clients that watch the system's outputs (as the operator unless told)."""

    def __init__(self, settings: Settings, topics: Iterable[Topic], on_message, principal: str = OPERATOR.name) -> None:
        self._settings = settings
        self._topics = list(topics)
        self._batched = {topic.name: topic.key_field for topic in self._topics if topic.batched}
        self._on_message = on_message
        self._consumer = AIOKafkaConsumer(
            **aiokafka_options(settings, principal),
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=20,
        )
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._consumer.start()
        partitions = [
            TopicPartition(topic.name, number)
            for topic in self._topics
            for number in range(topic.partitions(self._settings))
        ]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve the end offsets now, before anything is published
            await self._consumer.position(partition)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batches.values():
                for record in records:
                    try:
                        value = json.loads(record.value)
                    except (TypeError, ValueError, RecursionError):  # senders write anything, nested without end too
                        value = None
                    batched = record.topic in self._batched and isinstance(value, list)
                    for index, message in enumerate(value if batched else [value]):
                        if not isinstance(message, dict):  # watched input topics may carry anything
                            message = {"_raw": record.value}
                        message["_key"] = record.key.decode(errors="replace") if record.key is not None else None
                        message["_partition"], message["_offset"] = record.partition, record.offset
                        if batched:  # the record's key is its first message's
                            message["_key"], message["_index"] = message.get(self._batched[record.topic]), index
                        message["_timestamp_ms"] = record.timestamp  # when its producer sent it
                        self._on_message(record.topic, message)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's close cancels its own fetch tasks, and one caught in its retry pause (a
            # fetch that timed out across a broker restart) raises that here; only a
            # cancellation of this task itself goes on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
