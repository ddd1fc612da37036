"""What one province, or anyone, can cost the platform: its bytes and requests per second, the
size of a record, the connections an address opens, and Redis's memory. Each bound tried on the
real broker and Redis (shared/principals.py, shared/topics.py, gongji/ops/quotas.py, gongji/ops/infra.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from gongji.ops import infra
from gongji.ops.quotas import CONNECTION_CREATION_RATE, described_quotas
from shared.contracts import Claim
from shared.credentials import aiokafka_options
from shared.principals import OPERATOR, PRINCIPALS
from shared.topics import PROVINCE_CLAIM_MAX_BYTES, province_claims
from tests.support import new_id, new_person_id

pytestmark = pytest.mark.timeout(300)


async def test_every_principal_has_exactly_its_declared_quota(infrastructure) -> None:
    users = await described_quotas(infrastructure, "user")
    for principal in PRINCIPALS:
        if principal.quota is None:
            assert principal.name not in users, principal.name
        else:
            assert users[principal.name] == {
                "producer_byte_rate": principal.quota.producer_byte_rate,
                "consumer_byte_rate": principal.quota.consumer_byte_rate,
                "request_percentage": principal.quota.request_percentage,
            }
    assert await described_quotas(infrastructure, "ip") == {
        None: {"connection_creation_rate": CONNECTION_CREATION_RATE}
    }


async def _send_junk(infrastructure, principal: str, total_bytes: int) -> float:
    """Seconds to have `total_bytes` of records confirmed on province 11's claims topic (the
    settlement service dead-letters them: none is a claim)."""
    producer = AIOKafkaProducer(**aiokafka_options(infrastructure, principal), acks="all", linger_ms=5)
    await producer.start()
    try:
        record = b"x" * (128 * 1024)
        started = time.monotonic()
        sent = [
            await producer.send(province_claims("11").name, record, key=b"quota test")
            for _ in range(total_bytes // len(record))
        ]
        await asyncio.gather(*sent)
        # The broker answers a request over the quota at once, then reads nothing more from that
        # connection until the client is back within its rate (KIP-219): the next record waits.
        await producer.send_and_wait(province_claims("11").name, record, key=b"quota test")
        return time.monotonic() - started
    finally:
        await producer.stop()


async def test_a_province_that_sends_beyond_its_byte_rate_is_slowed(infrastructure) -> None:
    """The broker measures a rate over its quota window (11 samples of 1 s), so a burst of 14 MiB
    is 1.4 times the province's 1 MiB/s: the broker holds its requests back for seconds; the
    operator (no quota) sends the same at once."""
    unbounded = await _send_junk(infrastructure, OPERATOR.name, 14 * 1024 * 1024)
    throttled = await _send_junk(infrastructure, "province-11", 14 * 1024 * 1024)
    assert throttled > unbounded + 1.0, (throttled, unbounded)


def _largest_valid_claim() -> bytes:
    items = [{"code": "C" * 64, "in_catalogue": True, "amount_fen": 10**12} for _ in range(1000)]
    return (
        Claim.model_validate(
            {
                "claim_id": f"110101-{'P' * 64}-{'9' * 56}",
                "recipient_id": new_person_id(),
                "recipient_region": "110101",
                "category": "p" * 64,
                "institution_code": "P" * 64,
                "service_region": "110101",
                "amount_fen": 10**12,
                "items": items,
                "occurred_at": "2026-12-04T10:00:00.000000+08:00",
            }
        )
        .model_dump_json()
        .encode()
    )


def test_the_largest_claim_the_contract_allows_fits_a_province_record() -> None:
    assert len(_largest_valid_claim()) < PROVINCE_CLAIM_MAX_BYTES


async def test_a_record_bigger_than_any_claim_is_refused_by_the_broker(infrastructure) -> None:
    producer = AIOKafkaProducer(**aiokafka_options(infrastructure, "province-11"), max_request_size=4 * 1024**2)
    await producer.start()
    try:
        with pytest.raises(MessageSizeTooLargeError):
            await producer.send_and_wait(
                province_claims("11").name, b"x" * (PROVINCE_CLAIM_MAX_BYTES + 1), key=b"too big"
            )
    finally:
        await producer.stop()


def test_redis_refuses_writes_at_its_memory_bound_and_never_evicts(infrastructure) -> None:
    client = infra.operator_redis(infrastructure, socket_timeout=5)
    assert client.config_get("maxmemory")["maxmemory"] == str(infrastructure.redis_max_memory_bytes)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    key = f"stl:{{p:{new_id()}}}:bound-test"
    client.set(key, "kept")
    try:
        client.config_set("maxmemory", 1)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set(f"{key}:2", "refused")
        assert client.get(key) == b"kept"  # nothing evicted to make room
    finally:
        client.config_set("maxmemory", infrastructure.redis_max_memory_bytes)
        client.delete(key)


def test_status_warns_well_before_the_memory_bound(infrastructure) -> None:
    client = infra.operator_redis(infrastructure, socket_timeout=5)

    def status() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gongji", "infra", "status"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )

    assert status().returncode == 0
    used, _ = infra.redis_memory(client)
    try:
        client.config_set("maxmemory", int(used / 0.85))  # about 85% used: room still, but little
        warned = status()
    finally:
        client.config_set("maxmemory", infrastructure.redis_max_memory_bytes)
    assert warned.returncode == 2 and "WARNING: Redis uses" in warned.stdout, warned.stdout
