"""The operations port's rules, without a server: which `Host` it answers, and when a consumer
counts as consuming (the port itself is tried in tests/e2e/test_operations_port.py)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)

from shared.acknowledgements import Acknowledgements
from shared.operations import LOOPBACK_HOSTS, consumption_problems, host_allowed, host_name, is_fatal


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:18080", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:18080", "[::1]"),
        ("[::1]", "[::1]"),
        ("attacker.example:18080", "attacker.example"),
        ("", ""),
    ],
)
def test_the_host_name_is_read_without_its_port(header: str, name: str) -> None:
    assert host_name(header) == name


def test_only_loopback_names_and_those_the_operator_adds_are_answered() -> None:
    def scope(host: bytes | None) -> dict:
        return {"headers": [] if host is None else [(b"host", host)]}

    assert host_allowed(scope(b"localhost:18081"), LOOPBACK_HOSTS)
    assert not host_allowed(scope(b"attacker.example"), LOOPBACK_HOSTS)
    assert not host_allowed(scope(b"localhost.attacker.example"), LOOPBACK_HOSTS)
    assert not host_allowed(scope(None), LOOPBACK_HOSTS)
    assert host_allowed(scope(b"metrics.gongji.internal:18082"), LOOPBACK_HOSTS | {"metrics.gongji.internal"})


class Consumer:
    def assignment(self) -> set:
        return set()


async def test_a_consumer_is_healthy_once_a_member_and_while_it_makes_progress() -> None:
    pipeline = Acknowledgements("wallet credits")
    start = pipeline.progressed_at
    assert consumption_problems([pipeline], 30, now=start) == ["wallet credits: not a member of its consumer group"]
    pipeline.reassigned()
    assert consumption_problems([pipeline], 30, now=start + 29) == []
    assert consumption_problems([pipeline], 30, now=start + 31) == ["wallet credits: no progress for 31 s"]
    pipeline.polling(Consumer())
    pipeline.polled(())  # caught up
    assert consumption_problems([pipeline], 30, now=pipeline.progressed_at + 1) == []


async def test_a_batch_that_kafka_does_not_confirm_is_no_progress() -> None:
    pipeline = Acknowledgements("settlement claims")
    pipeline.reassigned()
    pipeline.polling(Consumer())
    pipeline.polled(())
    before = pipeline.progressed_at
    never = asyncio.get_running_loop().create_future()
    await pipeline.send((), lambda: _futures(never))
    pipeline.polled(())  # idle, but the batch still waits for Kafka
    assert pipeline.progressed_at == before
    never.set_exception(KafkaConnectionError())
    await asyncio.sleep(0)
    pipeline.polled(())
    assert pipeline.progressed_at == before


async def _futures(*futures: asyncio.Future) -> list[asyncio.Future]:
    return list(futures)


def test_only_refusals_an_operator_must_act_on_are_fatal() -> None:
    assert is_fatal(GroupAuthorizationFailedError())
    assert is_fatal(TopicAuthorizationFailedError())
    assert not is_fatal(KafkaConnectionError())
    assert not is_fatal(RequestTimedOutError())


def test_the_books_are_kept_for_good_or_past_what_the_deep_audit_reads_back() -> None:
    from pydantic import ValidationError

    from gongji.ops.infra import topic_config
    from shared.settings import Settings
    from shared.topics import SETTLEMENTS

    assert topic_config(SETTLEMENTS, Settings())["retention.ms"] == "-1"
    assert topic_config(SETTLEMENTS, Settings(books_retention_days=400))["retention.ms"] == str(400 * 86_400_000)
    with pytest.raises(ValidationError, match="at least 79"):  # 2 × (30 + 2) + 1 days read back, two weeks more
        Settings(books_retention_days=78)
    assert Settings(books_retention_days=79).books_retention_days == 79
