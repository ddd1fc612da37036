"""Consumer groups across releases. Releases before 2026-12-06 read every route of a service in
one group named after the service (`gongji-wallet`); each route now has a group of its own
(shared/topics.py: route_group). `gongji infra up` gives each new group the old group's offsets
for its topics, once, before the new release starts: started without them, a route would read
its topics from the beginning, and a claim older than the window Redis keeps its id for would be
paid again."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from services.relationship.app import ROUTES as RELATIONSHIP_ROUTES
from services.settlement.app import ROUTES as SETTLEMENT_ROUTES
from services.wallet.app import ROUTES as WALLET_ROUTES
from shared.runtime import Route
from shared.topics import RELATIONSHIP_GROUP, SETTLEMENT_GROUP, WALLET_GROUP, route_group

ROUTES_BY_SERVICE_GROUP: Mapping[str, Sequence[Route]] = {
    RELATIONSHIP_GROUP: RELATIONSHIP_ROUTES,
    WALLET_GROUP: WALLET_ROUTES,
    SETTLEMENT_GROUP: SETTLEMENT_ROUTES,
}

# Partitions a group has never committed are listed with this offset.
_NOT_COMMITTED = -1001
# A cluster just started answers these while its group coordinators load their state.
_NOT_YET = {
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError._TIMED_OUT,
}
COORDINATOR_PATIENCE_SECONDS = 60.0
T = TypeVar("T")


class OldReleaseRunning(RuntimeError):
    """The old group still has members: its offsets are still moving."""


def _once_coordinated(ask: Callable[[], T]) -> T:
    """Asks again while the group's coordinator is not ready yet, for up to a minute."""
    deadline = time.monotonic() + COORDINATOR_PATIENCE_SECONDS
    while True:
        try:
            return ask()
        except KafkaException as error:
            if error.args[0].code() not in _NOT_YET or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def committed(admin: AdminClient, group: str) -> dict[tuple[str, int], int]:
    """A group's committed offsets by (topic, partition); empty for a group that never was."""
    request = [ConsumerGroupTopicPartitions(group)]
    listed = _once_coordinated(lambda: admin.list_consumer_group_offsets(request)[group].result())
    return {(one.topic, one.partition): one.offset for one in listed.topic_partitions if one.offset != _NOT_COMMITTED}


def adopt_service_group_offsets(
    admin: AdminClient, routes_by_service_group: Mapping[str, Sequence[Route]] = ROUTES_BY_SERVICE_GROUP
) -> list[str]:
    """Each route group without offsets gets its service's old group's offsets for its topics;
    then the old group is deleted, so that offsets it held are never adopted again (a route
    group's own offsets could expire after a long stop). Returns what was done."""
    notes = []
    for service_group, routes in routes_by_service_group.items():
        old = committed(admin, service_group)
        if not old:
            continue
        state = _once_coordinated(lambda: admin.describe_consumer_groups([service_group])[service_group].result())
        if state.state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
            raise OldReleaseRunning(
                f"{len(state.members)} member(s) of the old group {service_group} still run: stop the "
                "release before route groups, then `gongji infra up` again"
            )
        for route in routes:
            group = route_group(service_group, route.topics[0])
            names = {topic.name for topic in route.topics}
            offsets = [TopicPartition(t, p, offset) for (t, p), offset in sorted(old.items()) if t in names]
            if offsets and not committed(admin, group):
                request = ConsumerGroupTopicPartitions(group, offsets)
                _once_coordinated(lambda: admin.alter_consumer_group_offsets([request])[group].result())
                notes.append(f"{group}: {len(offsets)} offsets from {service_group}")
        try:
            _once_coordinated(lambda: admin.delete_consumer_groups([service_group])[service_group].result())
        except KafkaException as error:
            if error.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                raise
    return notes
