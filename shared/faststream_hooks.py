"""Every place where Gongji reaches past FastStream's or aiokafka's public API, in one module, each
checked against FastStream CHECKED_WITH and aiokafka AIOKAFKA_CHECKED_WITH (both pinned in
pyproject.toml). tests/unit/test_faststream_hooks.py fails loudly when an upgrade moves one: read
this module again before changing a pin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition
from faststream.exceptions import IncorrectState
from faststream.kafka import KafkaBroker

CHECKED_WITH = "0.7.8"
AIOKAFKA_CHECKED_WITH = "0.14.0"


def replace_batch_poll(subscriber: Any, get_msg: Callable[[Any], Awaitable[tuple]]) -> None:
    """A batch subscriber's consume loop fetches each batch with its `get_msg(consumer)`, which
    sleeps a whole batch timeout after an empty poll (shared/runtime.py says why that is replaced)."""
    subscriber.get_msg = get_msg


def aiokafka_producer(broker: KafkaBroker) -> Any | None:
    """The broker's aiokafka producer, once it is started; None if FastStream moved it (there is no
    public handle)."""
    try:
        return broker.config.producer._producer.producer
    except (AttributeError, IncorrectState):  # moved, or not started yet
        return None


def set_batch_payload(handler: Callable[..., Any], payload: Any) -> None:
    """FastStream reads a subscriber's payload schema (for its own validation and the AsyncAPI
    document) from its handler's annotation: a handler built at run time gets one set here."""
    handler.__annotations__ = {"batch": payload, "return": None}


def wait_longer_when_idle(consumer: Any, idle_wait_ms: int) -> None:
    """The consumer's fetches keep the wait and minimum it was made with while data flows; a fetch
    to a broker whose last fetch brought nothing waits up to `idle_wait_ms` for its first byte
    instead. The broker answers it as soon as one record comes, so an idle consumer costs a fetch
    per `idle_wait_ms`, not one per short wait, and the first record after a quiet spell is not held
    for the minimum. Only a fetch that asks for every partition the consumer reads from that broker
    waits longer: one left out (its records not taken yet by a slow batch, or its position not
    known yet) is fetched only once the fetch in flight returns, so it must return soon. Applied
    once per consumer."""
    fetcher = consumer._fetcher
    if getattr(fetcher, "_gongji_waits_longer_when_idle", False):
        return
    fetch = fetcher._proc_fetch_request
    idle_brokers: set[int] = set()  # brokers whose last fetch brought no record

    def asks_for_all(assignment: Any, node_id: int, request: Any) -> bool:
        asked = sum(len(partitions) for _, partitions in request.topics)
        return asked == sum(1 for tp in assignment.tps if fetcher._select_read_replica(tp) == node_id)

    async def fetch_waiting_longer_when_idle(assignment: Any, node_id: int, request: Any) -> bool:
        if node_id in idle_brokers and asks_for_all(assignment, node_id, request):
            request._max_wait_ms, request._min_bytes = idle_wait_ms, 1
        brought_records = await fetch(assignment, node_id, request)
        (idle_brokers.discard if brought_records else idle_brokers.add)(node_id)
        return brought_records

    fetcher._proc_fetch_request = fetch_waiting_longer_when_idle
    fetcher._gongji_waits_longer_when_idle = True


def batch_would_wait(producer: Any, topic: str, partition: int) -> bool:
    """Whether aiokafka's producer holds a batch of the partition not yet taken for a request: its
    `send_batch` would wait for that one to leave (up to its request timeout, a leader away), where
    `send` adds to it at once."""
    return bool(producer._message_accumulator._batches.get(TopicPartition(topic, partition)))
