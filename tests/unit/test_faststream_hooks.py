"""The FastStream internals that shared/faststream_hooks.py reaches are still there: an upgrade that
moves one fails here, loudly, before a service stalls or slows."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.state import RealProducer
from faststream.kafka.subscriber import usecase
from faststream.specification import AsyncAPI

from shared.faststream_hooks import CHECKED_WITH, aiokafka_producer, replace_batch_poll, set_batch_payload


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
