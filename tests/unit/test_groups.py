"""The offsets move (gongji/ops/groups.py) trusts nothing it has not read back: Kafka answers an
offset commit or fetch partition by partition, the group's answer a success all the same."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from gongji.ops.groups import without_partition_errors


def test_a_partition_that_failed_fails_the_whole_answer() -> None:
    answer = SimpleNamespace(
        topic_partitions=[
            SimpleNamespace(topic="gongji.claims.v1", partition=0, offset=7, error=None),
            SimpleNamespace(
                topic="gongji.claims.v1", partition=1, offset=-1001, error=KafkaError(KafkaError.NOT_COORDINATOR)
            ),
        ]
    )
    with pytest.raises(KafkaException) as raised:
        without_partition_errors(answer)
    assert raised.value.args[0].code() == KafkaError.NOT_COORDINATOR


def test_an_answerwithout_partition_errors_is_passed_on() -> None:
    answer = SimpleNamespace(topic_partitions=[SimpleNamespace(topic="t", partition=0, offset=7, error=None)])
    assert without_partition_errors(answer) is answer
