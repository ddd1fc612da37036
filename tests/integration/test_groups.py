"""`gongji infra up` moves a service's consumer offsets from the one group of releases before route
groups to each route's own group (gongji/ops/groups.py), once, and never while the old release runs."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from gongji.ops import infra
from gongji.ops.groups import OldReleaseRunning, adopt_service_group_offsets, committed, forget_service_groups
from services.settlement.app import ROUTES as SETTLEMENT_ROUTES
from shared.credentials import aiokafka_options
from shared.principals import OPERATOR
from shared.topics import CLAIMS, ENROLLMENT, SETTLEMENTS, province_claims, route_group
from tests.support import new_id

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def admin(infrastructure):
    return infra.kafka_admin(infrastructure)


def commit(admin, group: str, offsets: dict[tuple[str, int], int]) -> None:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for (t, p), o in offsets.items()])
    admin.alter_consumer_group_offsets([request])[group].result()


OLD_OFFSETS = {
    (CLAIMS.name, 0): 7,
    (province_claims("11").name, 2): 3,
    (SETTLEMENTS.name, 1): 5,
    (ENROLLMENT.name, 0): 2,
}


def test_each_route_group_starts_where_the_old_group_stopped_and_the_old_group_is_gone(admin) -> None:
    old = new_id("gongji-old")
    commit(admin, old, OLD_OFFSETS)
    enrollment_group = route_group(old, ENROLLMENT)
    commit(admin, enrollment_group, {(ENROLLMENT.name, 0): 9})  # a route group that runs already keeps its own

    notes, adopted = adopt_service_group_offsets(admin, {old: SETTLEMENT_ROUTES})

    assert committed(admin, route_group(old, CLAIMS)) == {(CLAIMS.name, 0): 7, (province_claims("11").name, 2): 3}
    assert committed(admin, route_group(old, SETTLEMENTS)) == {(SETTLEMENTS.name, 1): 5}
    assert committed(admin, enrollment_group) == {(ENROLLMENT.name, 0): 9}
    assert len(notes) == 2 and adopted == [old]
    assert committed(admin, old) == OLD_OFFSETS, "kept until its users are locked out of it"
    forget_service_groups(admin, adopted)
    assert committed(admin, old) == {}, "the old group's offsets would be adopted again some day"
    assert adopt_service_group_offsets(admin, {old: SETTLEMENT_ROUTES}) == ([], [])
    forget_service_groups(admin, adopted)  # again, after a crash: nothing left to delete is fine


async def test_nothing_moves_while_the_old_release_still_reads_in_the_old_group(infrastructure, admin) -> None:
    old = new_id("gongji-old")
    commit(admin, old, OLD_OFFSETS)
    member = AIOKafkaConsumer(CLAIMS.name, **aiokafka_options(infrastructure, OPERATOR.name), group_id=old)
    await member.start()
    try:
        await member.getmany(timeout_ms=3_000)  # joins the group
        with pytest.raises(OldReleaseRunning, match="still run"):
            adopt_service_group_offsets(admin, {old: SETTLEMENT_ROUTES})
        assert committed(admin, route_group(old, CLAIMS)) == {}
        with pytest.raises(OldReleaseRunning, match="members again"):
            forget_service_groups(admin, [old])
        assert committed(admin, old) == OLD_OFFSETS
    finally:
        await member.stop()
