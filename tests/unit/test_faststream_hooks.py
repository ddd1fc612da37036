"""The FastStream internals that shared/faststream_hooks.py reaches are still there: an upgrade that
moves one fails here, loudly, before a service stalls or slows."""

from __future__ import annotations

import inspect
from importlib.metadata import version
from types import SimpleNamespace

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.fetch import FetchRequest
from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.state import RealProducer
from faststream.kafka.subscriber import usecase
from faststream.specification import AsyncAPI

from shared.faststream_hooks import (
    AIOKAFKA_CHECKED_WITH,
    CHECKED_WITH,
    aiokafka_producer,
    batch_would_wait,
    replace_batch_poll,
    set_batch_payload,
    wait_longer_when_idle,
)


def test_the_pinned_faststream_is_the_one_the_hooks_were_checked_with() -> None:
    assert version("faststream") == CHECKED_WITH, "a new FastStream: check each hook, then CHECKED_WITH"


def test_a_batch_subscriber_fetches_through_the_get_msg_the_hook_replaces() -> None:
    subscriber = KafkaBroker("localhost:1").subscriber("gongji.example.v1", batch=True, group_id="example")
    assert "await self.get_msg(consumer)" in inspect.getsource(usecase)  # the consume loop's one fetch

    async def get_msg(consumer):
        return ()

    replace_batch_poll(subscriber, get_msg)
    assert subscriber.get_msg is get_msg


def test_the_producer_handle_is_where_the_hook_reads_it() -> None:
    broker = KafkaBroker("localhost:1")
    assert aiokafka_producer(broker) is None  # not started: no producer yet, and no error
    started = object()
    broker.config.producer._producer = RealProducer(started)  # what connecting puts there
    assert aiokafka_producer(broker) is started


def test_faststream_reads_the_payload_from_the_annotation_the_hook_sets() -> None:
    broker = KafkaBroker("localhost:1")

    async def handler(batch) -> None: ...

    set_batch_payload(handler, list[int])
    broker.subscriber("gongji.example.v1", batch=True)(handler)
    schema = str(AsyncAPI(broker).to_specification().to_jsonable())
    assert "integer" in schema


def test_the_pinned_aiokafka_is_the_one_the_hooks_were_checked_with() -> None:
    assert version("aiokafka") == AIOKAFKA_CHECKED_WITH, "a new aiokafka: check each hook, then AIOKAFKA_CHECKED_WITH"


def test_aiokafka_fetches_through_the_method_the_hook_wraps_with_the_wait_it_sets() -> None:
    assert "self._proc_fetch_request(" in inspect.getsource(Fetcher._fetch_requests_routine)
    assert "node_id = self._select_read_replica(tp)" in inspect.getsource(Fetcher._get_actions_per_node)
    built = inspect.getsource(FetchRequest.build)
    assert "self._max_wait_ms" in built and "self._min_bytes" in built


class _Assignment:
    """Partitions 0..n-1 of one topic, each read from the broker given."""

    def __init__(self, *brokers: int) -> None:
        self.tps = list(range(len(brokers)))
        self.brokers = brokers


class _Fetcher:
    """aiokafka's fetcher as the hook sees it: one fetch per call, which brings records or not."""

    def __init__(self, brings: list[bool]) -> None:
        self.brings = brings
        self.assignment = _Assignment()
        self.waits: list[tuple[int, int]] = []  # (max wait ms, min bytes) of each fetch sent

    def _select_read_replica(self, tp: int) -> int:
        return self.assignment.brokers[tp]

    async def _proc_fetch_request(self, assignment: object, node_id: int, request: FetchRequest) -> bool:
        self.waits.append((request._max_wait_ms, request._min_bytes))
        return self.brings.pop(0)


async def _fetch(fetcher: _Fetcher, node_id: int, *partitions: int) -> None:
    """A fetch to `node_id` asking for `partitions`, as aiokafka builds it (25 ms, 4 KiB)."""
    topics = [("gongji.example.v1", [(partition, 0, 1 << 20) for partition in partitions])]
    await fetcher._proc_fetch_request(fetcher.assignment, node_id, FetchRequest(25, 4096, 1 << 20, 0, topics))


async def test_a_fetch_waits_longer_only_once_the_last_one_to_its_broker_brought_nothing() -> None:
    fetcher = _Fetcher(brings=[False, False, True, False, False, False])
    consumer = SimpleNamespace(_fetcher=fetcher)
    wait_longer_when_idle(consumer, idle_wait_ms=500)
    wait_longer_when_idle(consumer, idle_wait_ms=500)  # a second call changes nothing
    fetcher.assignment = _Assignment(1, 1, 2)
    for _ in range(4):
        await _fetch(fetcher, 1, 0, 1)
    await _fetch(fetcher, 2, 2)  # another broker: its own last fetch counts
    await _fetch(fetcher, 2, 2)
    assert fetcher.waits == [(25, 4096), (500, 1), (500, 1), (25, 4096), (25, 4096), (500, 1)]


async def test_the_short_wait_stays_while_a_partition_is_left_out_of_the_fetch() -> None:
    # Left out: its records not taken yet, or its position not known yet. It is fetched only once
    # the fetch in flight returns.
    fetcher = _Fetcher(brings=[False, False, False])
    wait_longer_when_idle(SimpleNamespace(_fetcher=fetcher), idle_wait_ms=500)
    fetcher.assignment = _Assignment(1, 1)
    await _fetch(fetcher, 1, 0, 1)
    await _fetch(fetcher, 1, 0)
    await _fetch(fetcher, 1, 1, 0)
    assert fetcher.waits == [(25, 4096), (25, 4096), (500, 1)]


async def test_a_batch_waiting_to_go_is_where_the_hook_reads_it() -> None:
    """`send` adds to a partition's batch waiting to go; `send_batch` waits for it to leave."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started
    accumulator = producer._message_accumulator
    assert not batch_would_wait(producer, "gongji.example.v1", 3)
    await accumulator.add_message(TopicPartition("gongji.example.v1", 3), b"k", b"v", timeout=1)
    assert batch_would_wait(producer, "gongji.example.v1", 3)
    assert not batch_would_wait(producer, "gongji.example.v1", 4)
    assert "pending = self._batches.get(tp)" in inspect.getsource(type(accumulator).add_batch)  # what it waits on
    accumulator._batches.clear()  # nothing to flush: the producer never started
