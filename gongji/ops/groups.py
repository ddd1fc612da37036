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
COORDINATOR_PATIENCE_SECONDS = 120.0
T = TypeVar("T")


class OldReleaseRunning(RuntimeError):
    """The old group still has members: its offsets are still moving."""


def _once_coordinated(ask: Callable[[], T]) -> T:
    """Asks again while the group's coordinator is not ready yet, for up to two minutes."""
    deadline = time.monotonic() + COORDINATOR_PATIENCE_SECONDS
    while True:
        try:
            return ask()
        except KafkaException as error:
            if error.args[0].code() not in _NOT_YET or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def without_partition_errors(result: ConsumerGroupTopicPartitions) -> ConsumerGroupTopicPartitions:
    """Kafka answers an offset fetch or commit partition by partition: the group's answer may be
    a success while some of its partitions failed (not stored, or not read)."""
    for partition in result.topic_partitions:
        if partition.error is not None:
            raise KafkaException(partition.error)
    return result


def committed(admin: AdminClient, group: str) -> dict[tuple[str, int], int]:
    """A group's committed offsets by (topic, partition); empty for a group that never was."""
    request = [ConsumerGroupTopicPartitions(group)]
    listed = _once_coordinated(
        lambda: without_partition_errors(admin.list_consumer_group_offsets(request)[group].result())
    )
    return {(one.topic, one.partition): one.offset for one in listed.topic_partitions if one.offset != _NOT_COMMITTED}


def _existing_groups(admin: AdminClient) -> set[str]:
    """The groups the brokers know, asked of every broker (no coordinator is looked up): on a
    fresh cluster no group's offsets are asked for at all. librdkafka 2.16 aborts the process
    when an offsets request times out while a fresh cluster makes its coordinators."""

    def listed() -> set[str]:
        result = admin.list_consumer_groups().result()
        if result.errors:
            raise result.errors[0]
        return {group.group_id for group in result.valid}

    return _once_coordinated(listed)


def _refuse_if_running(admin: AdminClient, service_group: str) -> None:
    state = _once_coordinated(lambda: admin.describe_consumer_groups([service_group])[service_group].result())
    if state.state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
        raise OldReleaseRunning(
            f"{len(state.members)} member(s) of the old group {service_group} still run: stop the "
            "release before route groups, then `gongji infra up` again"
        )


def adopt_service_group_offsets(
    admin: AdminClient, routes_by_service_group: Mapping[str, Sequence[Route]] = ROUTES_BY_SERVICE_GROUP
) -> tuple[list[str], list[str]]:
    """Each route group without offsets gets its service's old group's offsets for its topics,
    read back to be sure they are stored. Refuses, before changing anything, while an old group
    has members. Returns what was done, and the old groups adopted: `forget_service_groups`
    deletes them once their users may no longer join them."""
    existing = _existing_groups(admin)
    old_groups = {group: committed(admin, group) for group in routes_by_service_group if group in existing}
    old_groups = {group: offsets for group, offsets in old_groups.items() if offsets}
    for service_group in old_groups:
        _refuse_if_running(admin, service_group)
    notes = []
    for service_group, old in old_groups.items():
        for route in routes_by_service_group[service_group]:
            group = route_group(service_group, route.topics[0])
            names = {topic.name for topic in route.topics}
            offsets = {(t, p): offset for (t, p), offset in old.items() if t in names}
            if offsets and (group not in existing or not committed(admin, group)):
                request = ConsumerGroupTopicPartitions(
                    group, [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                )
                _once_coordinated(
                    lambda: without_partition_errors(admin.alter_consumer_group_offsets([request])[group].result())
                )
                if committed(admin, group) != offsets:
                    raise RuntimeError(f"{group} did not keep the offsets given it: `gongji infra up` again")
                notes.append(f"{group}: {len(offsets)} offsets from {service_group}")
    return notes, list(old_groups)


def forget_service_groups(admin: AdminClient, service_groups: Sequence[str]) -> None:
    """Deletes the old groups adopted, so that what they hold is never adopted again (a route
    group's own offsets could be gone one day); called once the services' rights no longer cover
    them, so that no instance of the old release joins one again meanwhile."""
    for service_group in service_groups:
        try:
            _once_coordinated(lambda: admin.delete_consumer_groups([service_group])[service_group].result())
        except KafkaException as error:
            if error.args[0].code() == KafkaError.NON_EMPTY_GROUP:
                raise OldReleaseRunning(
                    f"the old group {service_group} has members again: stop them, then `gongji infra up` again"
                ) from None
            if error.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                raise
