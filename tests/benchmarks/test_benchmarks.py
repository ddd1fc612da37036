"""Speed, measured and printed (never asserted as a timing):

1. End to end versus a baseline on the same broker, on the secure listener (SASL_SSL) and beside it
   on the development one (SASL_PLAINTEXT, same SCRAM users and ACLs, no TLS), in the same run: one
   run of `gongji bench` (gongji/perf/bench.py) on each listener — claim messages through a raw aiokafka
   consume → produce pass-through, and through Gongji (province claims → settlement → wallet →
   settlement, three service processes started for each listener); prints the rates, their ratio,
   the services' CPU per claim and what TLS costs.
2. Cost per claim at two population sizes: the settlement and wallet handlers against the real
   Redis with 10^4 and a larger preloaded population; prints µs per claim for each.
3. A batch of Redis commands through `send_all` beside redis-py's pipeline, in the same run: CPU
   per command of each.
4. Outputs handed to aiokafka's producer record by record beside one record batch per partition,
   in the same run: CPU per record of each, confirmations included.
5. A service's hop through aiokafka beside librdkafka (confluent-kafka, its blocking client and its
   asyncio classes), in the same run: consume a batch, parse each record, produce it on, wait for
   the confirmations, commit; CPU per record moved (librdkafka's threads included) and the rate,
   for full batches and for the small ones of a light load.
6. The draw hop's messages read from their JSON, a record each beside an array a record, lax and
   strict (pydantic's TypeAdapter): CPU per message.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import datetime
from itertools import chain

import pytest
from hdrh.histogram import HdrHistogram
from redis.asyncio import Redis

from gongji.ops.infra import port_open
from gongji.perf.bench import BenchOptions, bench_run
from services.settlement.handlers import SettlementHandlers
from services.settlement.store import SettlementStore
from services.wallet.handlers import WalletHandlers
from services.wallet.store import WalletStore
from shared.clock import FixedClock
from shared.contracts import (
    AccountCredited,
    Claim,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    RelationshipEvent,
    SettlementEvent,
    WalletCommand,
)
from shared.credentials import aiokafka_options, librdkafka_options, redis_options
from shared.ids import make_person_id
from shared.partitioner import partition_of
from shared.policy import PolicyCache
from shared.principals import OPERATOR
from shared.redis_client import in_database
from shared.redis_functions import send_all
from tests.support import through_claim_path

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(1800)]
NOON = datetime.fromisoformat("2026-03-02T12:00:00+08:00")
CLAIMS = int(os.environ.get("GONGJI_BENCH_CLAIMS", "20000"))
RATE = float(os.environ.get("GONGJI_BENCH_RATE", "3000"))


async def test_the_claim_path_on_the_secure_listener_beside_plaintext(infrastructure) -> None:
    """Needs the broker started with the development listener: `gongji infra down &&
    GONGJI_KAFKA_PLAINTEXT_DEV=1 gongji infra up` (clients still choose TLS unless they set it too)."""
    host = infrastructure.kafka_bootstrap.rpartition(":")[0]
    if not port_open(host, infrastructure.kafka_plaintext_dev_port):
        pytest.fail(
            "no development listener: restart the broker with GONGJI_KAFKA_PLAINTEXT_DEV=1 "
            "(`gongji infra down && GONGJI_KAFKA_PLAINTEXT_DEV=1 gongji infra up`)"
        )
    options = BenchOptions(duration_seconds=CLAIMS / RATE, runs=1, rate=RATE)
    results = {}
    for label, plaintext in (("SASL_SSL (default)", False), ("SASL_PLAINTEXT (dev)", True)):
        listener = infrastructure.model_copy(update={"kafka_plaintext_dev": plaintext})
        results[label] = await bench_run(listener, options, _quiet_console())
        assert not results[label]["failures"], results[label]["failures"]
    print()
    for label, result in results.items():
        print(
            f"{label:<21} raw pass-through {result['baseline_msgs_per_s']:>7,.0f} msg/s | gongji "
            f"{result['claims_per_s']:>6,.0f} claims/s | ratio {result['ratio']:.2f} | latency ms p50 "
            f"{result['p50_ms']:,.0f}, p99 {result['p99_ms']:,.0f} | services' CPU {result['cpu_us_per_claim']:,.0f} "
            "µs per claim"
        )
    secure, plain = results.values()
    print(
        f"TLS costs {1 - secure['baseline_msgs_per_s'] / plain['baseline_msgs_per_s']:.0%} of the raw "
        f"pass-through and {1 - secure['claims_per_s'] / plain['claims_per_s']:.0%} of gongji's settled rate"
    )


def _quiet_console():
    from rich.console import Console

    return Console(quiet=True)


async def _preload(
    wallet: WalletHandlers, settlement: SettlementHandlers, first: int, families: int
) -> list[tuple[str, str]]:
    """Families of one provider and one recipient, written straight through the handlers."""
    pairs = [(_person(2 * number), _person(2 * number + 1)) for number in range(first, first + families)]
    chunk = 500
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        await wallet.on_enrollment(
            [
                EnrollmentChanged(
                    event_id=f"e{p}",
                    person_id=p,
                    insurance_type="employee",
                    region="440300",
                    status="normal",
                    occurred_at=NOON,
                )
                for p, _ in part
            ]
        )
        enrollment = [
            EnrollmentChanged(
                event_id=f"e{r}",
                person_id=r,
                insurance_type="resident",
                region="510100",
                status="normal",
                occurred_at=NOON,
            )
            for _, r in part
        ]
        await settlement.on_enrollment(enrollment)
        await wallet.on_credits(
            [AccountCredited(event_id=f"c{p}", person_id=p, amount_fen=10_000_000, occurred_at=NOON) for p, _ in part]
        )
        await wallet.on_relationship_events(
            [
                RelationshipEvent(
                    event_id=f"r{p}",
                    cause_id="bench",
                    type="established",
                    provider_id=p,
                    recipient_id=r,
                    recipient_region="510100",
                    occurred_at=NOON,
                )
                for p, r in part
            ]
        )
        await wallet.on_commands(
            [
                WalletCommand(
                    command_id=f"g{p}",
                    action="grant",
                    actor_id=p,
                    provider_id=p,
                    recipient_id=r,
                    recipient_region="510100",
                    amount_fen=200_000,
                    requested_at=NOON,
                )
                for p, r in part
            ]
        )
    return pairs


def _person(number: int) -> str:
    """A valid ID per number: 1,000 serials for each day of birth from 1950."""
    day, serial = divmod(number, 1000)
    birth = datetime.fromordinal(datetime(1950, 1, 1).toordinal() + day).strftime("%Y%m%d")
    return make_person_id("110101", birth, serial)


async def _cost_per_claim(redis: Redis, pairs: list[tuple[str, str]], claims: int) -> tuple[float, HdrHistogram]:
    """Settle `claims` claims of random families through settlement → wallet → settlement handlers."""
    import random

    clock = FixedClock(NOON)
    settlement = SettlementHandlers(SettlementStore(redis, 64), clock)
    wallet = WalletHandlers(WalletStore(redis), clock, PolicyCache(redis, 60))
    histogram = HdrHistogram(1, 10_000_000, 3)
    rng = random.Random(7)
    batch = 200
    started = time.perf_counter()
    for _ in range(claims // batch):
        messages = []
        for _ in range(batch):
            _, recipient = rng.choice(pairs)
            messages.append(
                Claim(
                    claim_id=f"510100-H51010000001-{uuid.uuid4().hex}",
                    kind="settle",
                    recipient_id=recipient,
                    recipient_region="510100",
                    category="institution",
                    institution_code="H51010000001",
                    service_region="510100",
                    amount_fen=100,
                    occurred_at=NOON,
                )
            )
        t0 = time.perf_counter()
        requests = [m for m in await through_claim_path(settlement, messages) if isinstance(m, DrawRequested)]
        answers = [m for m in await wallet.on_draw_requests(requests) if isinstance(m, DrawAnswered)]
        settled = [m for m in await through_claim_path(settlement, answers) if isinstance(m, SettlementEvent)]
        # Timed only if it did the work: every claim asked, answered and settled.
        assert len(requests) == len(answers) == len(settled) == batch and {m.status for m in settled} == {"settled"}
        histogram.record_value(max(1, int((time.perf_counter() - t0) / batch * 1e6)))
    return (time.perf_counter() - started) / claims * 1e6, histogram


async def test_cost_per_claim_stays_flat_as_the_population_grows(infrastructure) -> None:
    sizes = [int(size) for size in os.environ.get("GONGJI_BENCH_POPULATIONS", "10000,100000").split(",")]
    redis = Redis.from_url(in_database(infrastructure.redis_url, 14), **redis_options(infrastructure, OPERATOR.name))
    await redis.flushdb()
    wallet_store, settlement_store = WalletStore(redis), SettlementStore(redis, 64)
    await wallet_store.load()
    await settlement_store.load()
    clock = FixedClock(NOON)
    wallet = WalletHandlers(wallet_store, clock, PolicyCache(redis, 60))
    settlement = SettlementHandlers(settlement_store, clock)
    results = []
    loaded: list[tuple[str, str]] = []
    for persons in sizes:
        families = persons // 2
        started = time.perf_counter()
        loaded += await _preload(wallet, settlement, len(loaded), max(0, families - len(loaded)))
        preload_seconds = time.perf_counter() - started
        cost_us, histogram = await _cost_per_claim(redis, loaded, min(CLAIMS, 10_000))
        results.append((persons, cost_us, histogram))
        print(
            f"\n{persons:>9,} persons (preloaded in {preload_seconds:.0f}s, {await redis.dbsize():,} keys): "
            f"{cost_us:,.0f} µs per claim; per-batch p50 {histogram.get_value_at_percentile(50)} µs, "
            f"p99 {histogram.get_value_at_percentile(99)} µs"
        )
    print(f"cost ratio largest / smallest population: {results[-1][1] / results[0][1]:.2f}")
    await redis.flushdb()
    await redis.aclose()


async def test_a_batch_through_send_all_beside_redis_py_s_pipeline(infrastructure) -> None:
    """200 commands of 11 arguments a batch, 150 batches each way, alternated twice."""
    redis = Redis.from_url(in_database(infrastructure.redis_url, 14), **redis_options(infrastructure, OPERATOR.name))
    commands = [("HMGET", f"bench:{number}", *"abcdefg", 12345, "xyz") for number in range(200)]

    async def through_the_pipeline() -> list:
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

    async def through_send_all() -> list:
        return await send_all(redis, commands)

    for name, batch in [("redis-py's pipeline", through_the_pipeline), ("send_all", through_send_all)] * 2:
        assert await batch() == [[None] * 9] * len(commands)
        started = time.process_time()
        for _ in range(150):
            await batch()
        print(
            f"\n{name:<20} {(time.process_time() - started) / (150 * len(commands)) * 1e6:6.1f} µs of CPU per command"
        )
    await redis.aclose()


async def test_outputs_in_one_record_batch_per_partition_beside_record_by_record(infrastructure) -> None:
    """400 outputs of 600 bytes a round to the 24 partitions of a topic, 25 rounds each way,
    alternated twice, each round confirmed."""
    from gongji.ops.kafka_io import make_producer
    from shared.topics import WALLET_EVENTS

    producer = make_producer(infrastructure, OPERATOR.name)
    await producer.start()
    topic = WALLET_EVENTS.name
    partitions = len(await producer.partitions_for(topic))
    value = b"{" + b" " * 598 + b"}"
    keys = [_person(number).encode() for number in range(400)]

    async def record_by_record() -> None:
        sent = [await producer.send(topic, value, key=key, partition=partition_of(key, partitions)) for key in keys]
        await asyncio.gather(*sent)

    async def a_batch_per_partition() -> None:
        batches: dict = {}
        for key in keys:
            batch = batches.setdefault(partition_of(key, partitions), producer.create_batch())
            assert batch.append(key=key, value=value, timestamp=None) is not None
        await asyncio.gather(*[await producer.send_batch(b, topic, partition=p) for p, b in batches.items()])

    try:
        for name, send in [
            ("record by record", record_by_record),
            ("a batch per partition", a_batch_per_partition),
        ] * 2:
            await send()
            started = time.process_time()
            for _ in range(25):
                await send()
            print(f"\n{name:<22} {(time.process_time() - started) / (25 * len(keys)) * 1e6:6.1f} µs of CPU per record")
    finally:
        await producer.stop()


HOP_RECORDS = int(os.environ.get("GONGJI_BENCH_HOP_RECORDS", "10000"))


@pytest.mark.parametrize("batch", [500, 20])
async def test_a_hop_through_aiokafka_beside_librdkafka(infrastructure, batch: int) -> None:
    """The lever of issue 26 measured before a migration: `HOP_RECORDS` records of 600 bytes on a
    new topic of 24 partitions, moved to another by each client in turn (a group of its own each
    time), alternated twice. Each client as the services would use it: aiokafka with a record
    batch per partition (shared/runtime.py: Outbox), librdkafka record by record into its own queue."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from gongji.ops.kafka_io import make_producer

    source, sink = f"bench-hop-in-{uuid.uuid4().hex[:8]}", f"bench-hop-out-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**aiokafka_options(infrastructure, OPERATOR.name))
    await admin.start()
    await admin.create_topics(
        [NewTopic(topic, 24, infrastructure.topic_replication_factor) for topic in (source, sink)]
    )
    try:
        producer = make_producer(infrastructure, OPERATOR.name)
        await producer.start()
        await producer.partitions_for(source)
        value = json.dumps({"claim_id": "x" * 40, "padding": " " * 530}).encode()
        sent = [await producer.send(source, value, key=_person(number).encode()) for number in range(HOP_RECORDS)]
        await asyncio.gather(*sent)
        await producer.stop()
        hops = {"aiokafka": _aiokafka_hop, "librdkafka": _librdkafka_hop, "librdkafka, asyncio": _librdkafka_aio_hop}
        for name, hop in [*hops.items()] * 2:
            cpu_us, rate = await hop(infrastructure, source, sink, batch)
            print(f"\nbatches of {batch:<3} {name:<20} {cpu_us:6.1f} µs of CPU per record {rate:>8,.0f} records/s")
    finally:
        await admin.delete_topics([source, sink])
        await admin.close()


class _HopClock:
    """CPU and wall time from the first batch on (joining the group is not moving records)."""

    def __init__(self) -> None:
        self.moved, self._cpu, self._wall = 0, 0.0, 0.0

    def first_batch(self) -> None:
        if not self._wall:
            self._cpu, self._wall = time.process_time(), time.perf_counter()

    def result(self) -> tuple[float, float]:
        return (time.process_time() - self._cpu) / self.moved * 1e6, self.moved / (time.perf_counter() - self._wall)


def _librdkafka_consumer_options(settings) -> dict:
    """As the aiokafka side's consumer: a group of its own, from the beginning, the claim path's fetch."""
    return librdkafka_options(settings, OPERATOR.name) | {
        "group.id": f"bench-hop-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 25,
        "fetch.min.bytes": 4096,
    }


def _librdkafka_producer_options(settings) -> dict:
    """As the aiokafka side's (gongji/ops/kafka_io.py: make_producer): idempotent, every replica, no linger."""
    return librdkafka_options(settings, OPERATOR.name) | {"acks": "all", "enable.idempotence": True, "linger.ms": 0}


async def _aiokafka_hop(settings, source: str, sink: str, batch: int) -> tuple[float, float]:
    from aiokafka import AIOKafkaConsumer

    from gongji.ops.kafka_io import make_producer

    client = aiokafka_options(settings, OPERATOR.name)
    consumer = AIOKafkaConsumer(
        source,
        **client,
        group_id=f"bench-hop-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=25,
        fetch_min_bytes=4096,
    )
    producer = make_producer(settings, OPERATOR.name)
    await consumer.start()
    await producer.start()
    partitions, clock = len(await producer.partitions_for(sink)), _HopClock()
    try:
        while clock.moved < HOP_RECORDS:
            fetched = await consumer.getmany(timeout_ms=200, max_records=batch)
            if not fetched:
                continue
            clock.first_batch()
            batches: dict = {}
            for record in chain.from_iterable(fetched.values()):
                json.loads(record.value)
                one = batches.setdefault(partition_of(record.key, partitions), producer.create_batch())
                one.append(key=record.key, value=record.value, timestamp=None)
                clock.moved += 1
            await asyncio.gather(*[await producer.send_batch(b, sink, partition=p) for p, b in batches.items()])
            await consumer.commit()
        return clock.result()
    finally:
        await consumer.stop()
        await producer.stop()


async def _librdkafka_hop(settings, source: str, sink: str, batch: int) -> tuple[float, float]:
    """Its blocking client in a thread of its own: librdkafka's cost without an asyncio bridge."""
    from confluent_kafka import Consumer, Producer

    def hop() -> tuple[float, float]:
        consumer, producer = (
            Consumer(_librdkafka_consumer_options(settings)),
            Producer(_librdkafka_producer_options(settings)),
        )
        consumer.subscribe([source])
        clock = _HopClock()
        try:
            while clock.moved < HOP_RECORDS:
                if not (fetched := consumer.consume(num_messages=batch, timeout=0.2)):
                    continue
                clock.first_batch()
                for message in fetched:
                    json.loads(message.value())
                    producer.produce(sink, value=message.value(), key=message.key())
                    clock.moved += 1
                producer.flush()
                consumer.commit(asynchronous=False)
            return clock.result()
        finally:
            consumer.close()

    return await asyncio.get_running_loop().run_in_executor(None, hop)


async def _librdkafka_aio_hop(settings, source: str, sink: str, batch: int) -> tuple[float, float]:
    """confluent-kafka's asyncio classes (stable since 2.13), as a service on asyncio would use them."""
    from confluent_kafka.aio import AIOConsumer, AIOProducer

    consumer = AIOConsumer(_librdkafka_consumer_options(settings))
    producer = AIOProducer(_librdkafka_producer_options(settings))
    await consumer.subscribe([source])
    clock = _HopClock()
    try:
        while clock.moved < HOP_RECORDS:
            if not (fetched := await consumer.consume(num_messages=batch, timeout=0.2)):
                continue
            clock.first_batch()
            confirmations = []
            for message in fetched:
                json.loads(message.value())
                confirmations.append(await producer.produce(sink, value=message.value(), key=message.key()))
                clock.moved += 1
            await producer.flush()
            await asyncio.gather(*confirmations)
            await consumer.commit(asynchronous=False)
        return clock.result()
    finally:
        await consumer.close()
        await producer.close()


def test_draw_hop_messages_read_one_per_record_beside_an_array_lax_and_strict() -> None:
    """6,000 draw requests and answers (a hop's messages of 24 partitions, 250 to a record), read
    from their JSON as the services read them: a record each (the first version of the hop), an
    array a record (the second), and an array through a strict TypeAdapter (the issue's lever for
    the internal hops); alternated twice, CPU per message."""
    from pydantic import TypeAdapter

    from shared.contracts import ClaimContext, Payer

    context = ClaimContext(requested_fen=5_000, service_region="510100", claim_day="20260302")
    requests = [
        DrawRequested(
            request_id=f"r{number}", claim_id=f"c{number}", recipient_id=_person(number), amount_fen=5_000,
            context=context, requested_at=NOON,
        )
        for number in range(6_000)
    ]  # fmt: skip
    answers = [
        DrawAnswered(
            event_id=f"a{number}", claim_id=f"c{number}", recipient_id=_person(number), requested_fen=5_000,
            paid_fen=5_000, payers=[Payer(provider_id=_person(number + 1), provider_region="440300", amount_fen=5_000)],
            context=context, answered_at=NOON,
        )
        for number in range(6_000)
    ]  # fmt: skip
    for model, messages in ((DrawRequested, requests), (DrawAnswered, answers)):
        each = [message.model_dump_json().encode() for message in messages]
        arrays = [b"[" + b",".join(each[start : start + 250]) + b"]" for start in range(0, len(each), 250)]
        lax = strict = TypeAdapter(list[model])
        ways = {
            "a record each": lambda each=each, model=model: [model.model_validate_json(value) for value in each],
            "an array a record": lambda arrays=arrays, lax=lax: [lax.validate_json(value) for value in arrays],
            "an array, strict": lambda arrays=arrays, strict=strict: [
                strict.validate_json(value, strict=True) for value in arrays
            ],
        }
        assert ways["an array, strict"]()[0][0] == messages[0]
        for name, read in [*ways.items()] * 2:
            started = time.process_time()
            for _ in range(5):
                read()
            print(
                f"\n{model.__name__:<14} {name:<18} {(time.process_time() - started) / (5 * len(each)) * 1e6:5.2f} µs"
            )
