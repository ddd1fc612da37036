"""On the real broker, a claim-path consumer with nothing to read fetches about twice a second, not
forty times (shared/faststream_hooks.py: wait_longer_when_idle). That it still reads what comes is
every end-to-end test's business: the services' claim-path consumers are built so."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.credentials import aiokafka_options
from shared.faststream_hooks import wait_longer_when_idle
from shared.principals import OPERATOR
from shared.topics import REFUND_REQUESTS

pytestmark = pytest.mark.timeout(60)

IDLE_SECONDS = 3.0


async def _fetches_while_idle(infrastructure, hooked: bool) -> int:
    """How many fetches a claim-path consumer of a quiet topic sends in IDLE_SECONDS (no group: only
    reads)."""
    consumer = AIOKafkaConsumer(
        **aiokafka_options(infrastructure, OPERATOR.name),
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=infrastructure.claim_path_fetch_max_wait_ms,
        fetch_min_bytes=infrastructure.claim_path_fetch_min_bytes,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(REFUND_REQUESTS.name, number) for number in range(3)])
        await consumer.getmany(timeout_ms=1000)  # positions known: fetching has begun
        fetcher, sent = consumer._fetcher, [0]
        fetch = fetcher._proc_fetch_request

        async def counted(*args):
            sent[0] += 1
            return await fetch(*args)

        fetcher._proc_fetch_request = counted
        if hooked:
            wait_longer_when_idle(consumer, infrastructure.idle_fetch_max_wait_ms)
        await asyncio.sleep(IDLE_SECONDS)
        return sent[0]
    finally:
        await consumer.stop()


async def test_an_idle_claim_path_consumer_fetches_at_the_idle_wait_not_the_short_one(infrastructure) -> None:
    short = await _fetches_while_idle(infrastructure, hooked=False)
    idle = await _fetches_while_idle(infrastructure, hooked=True)
    assert short >= IDLE_SECONDS * 1000 / infrastructure.claim_path_fetch_max_wait_ms / 2, short
    assert idle <= IDLE_SECONDS * 1000 / infrastructure.idle_fetch_max_wait_ms + 2, idle
