"""Gongji's outputs land in the partition every Kafka client would choose for their key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from shared.partitioner import murmur2, partition_of


def signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def test_murmur2_gives_the_java_client_s_values() -> None:
    """Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java)."""
    assert {
        text: signed(murmur2(text.encode()))
        for text in ("21", "foobar", "a-little-bit-long-string", "a-little-bit-longer-string", "abc")
    } == {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
        "a-little-bit-longer-string": -1486304829,
        "abc": 479470107,
    }


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=200))
def test_a_key_lands_where_aiokafka_would_put_it(key: bytes, partitions: int) -> None:
    assert murmur2(key) == aiokafka_murmur2(key) & 0xFFFFFFFF
    every = list(range(partitions))
    assert partition_of(key, partitions) == DefaultPartitioner()(key, every, every)
