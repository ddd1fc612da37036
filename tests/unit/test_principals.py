"""The one declaration of who may do what (shared/principals.py): docs/security.md shows it as it is, and
each service is granted exactly what its app consumes and publishes, no more."""

from __future__ import annotations

import pytest

from gongji.ops.launcher import SERVICE_NAMES, app_factory
from shared.principals import BY_NAME, PRINCIPALS, redis_acl_rules, rights_table
from shared.settings import PROJECT_ROOT, Settings
from shared.topics import CLEARING, PROVINCES, province_clearing


def test_the_security_doc_shows_the_declared_rights() -> None:
    assert rights_table() in (PROJECT_ROOT / "docs" / "security.md").read_text(), (
        "paste shared.principals.rights_table() into docs/security.md's principal table"
    )


def _rights(name: str, resource: str, operation: str) -> set[str]:
    return {right.name for right in BY_NAME[name].kafka if right.resource == resource and right.operation == operation}


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_a_service_is_granted_exactly_what_its_app_uses(service: str) -> None:
    broker = app_factory(service)(Settings.model_construct()).brokers[0]
    consumed = {topic.name for subscriber in broker.subscribers for topic in subscriber.topics}
    published = {publisher.topic for publisher in broker.publishers}
    # `gongji clearing close`, the settlement service's monthly job, publishes the statement.
    monthly_job = {CLEARING.name, *(province_clearing(p).name for p in PROVINCES)} if service == "settlement" else set()
    assert _rights(service, "topic", "read") == consumed
    assert _rights(service, "topic", "write") == published | monthly_job
    (groups,) = [right for right in BY_NAME[service].kafka if right.resource == "group"]
    assert groups.prefixed and groups.operation == "read"
    assert all(subscriber.group_id.startswith(groups.name) for subscriber in broker.subscribers)
    # A route of its own per group: one service's routes never share a group, nor two services'.
    assert len({subscriber.group_id for subscriber in broker.subscribers}) == len(broker.subscribers)


def test_no_services_route_groups_fall_under_another_services_prefix() -> None:
    prefixes = [right.name for name in SERVICE_NAMES for right in BY_NAME[name].kafka if right.resource == "group"]
    assert not any(one != other and other.startswith(one) for one in prefixes for other in prefixes)


def test_only_the_broker_and_the_operator_are_super_users_and_every_right_is_an_allow_of_one_kind() -> None:
    assert {one.name for one in PRINCIPALS if one.super_user} == {"broker", "operator"}
    assert len({one.name for one in PRINCIPALS}) == len(PRINCIPALS)
    assert {f"province-{code}" for code in PROVINCES} <= set(BY_NAME)


def test_a_service_redis_user_starts_from_nothing() -> None:
    rules = redis_acl_rules(BY_NAME["wallet"].redis)
    assert rules[:3] == ["on", "resetkeys", "resetchannels"] and "-@all" in rules
    assert "~wal:*" in rules and "%R~gongji:policy" in rules and not any(rule.startswith("~stl") for rule in rules)
    assert "+function|load" not in rules and "+@all" not in rules
