"""The one declaration of who may do what (shared/principals.py): docs/security.md shows it as it is, and
each service is granted exactly what its app consumes and publishes, no more."""

from __future__ import annotations

import re

import pytest

from gongji.ops.groups import ROUTES_BY_SERVICE_GROUP
from gongji.ops.launcher import SERVICE_NAMES, app_factory
from shared.principals import BY_NAME, PRINCIPALS, UPGRADE_WRITES, redis_acl_rules, rights_table
from shared.settings import PROJECT_ROOT, Settings
from shared.topics import CLEARING, PROVINCES, province_clearing, route_group


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
    upgrade = {topic.name for topic in UPGRADE_WRITES.get(service, ())}  # the release before's, for now
    assert _rights(service, "topic", "write") == published | monthly_job | upgrade
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


# deploy/kubernetes/kafka-users.yaml writes each rule on one line, in flow style.
_K8S_RULE = re.compile(
    r"\{resource: \{type: (?P<type>\w+), name: (?P<name>[^,}]+)(?:, patternType: (?P<pattern>\w+))?\}, "
    r"operations: \[(?P<operation>Read|Write)\]\}"
)


def test_the_kubernetes_users_carry_the_declared_acls() -> None:
    documents = (PROJECT_ROOT / "deploy" / "kubernetes" / "kafka-users.yaml").read_text().split("\n---\n")[1:]
    checked = 0
    for document in documents:
        name = re.search(r"^  name: (\S+)$", document, re.MULTILINE).group(1)
        principal = BY_NAME[name]
        if principal.super_user:
            continue
        declared = {(right.resource, right.name, right.prefixed, right.operation) for right in principal.kafka}
        written = {
            (rule["type"], rule["name"], rule["pattern"] == "prefix", rule["operation"].lower())
            for rule in _K8S_RULE.finditer(document)
        }
        assert written == declared, (name, written ^ declared)
        checked += 1
    assert checked >= 8


def test_the_route_groups_keep_their_names() -> None:
    # A group renamed (a route's first topic changed, routes split or merged) starts its route from
    # the beginning of its topics: claims older than Redis's window would be paid again. A rename
    # needs its offsets moved first, as gongji/ops/groups.py moved the service groups'.
    groups = {
        route_group(service, route.topics[0]) for service, routes in ROUTES_BY_SERVICE_GROUP.items() for route in routes
    }
    assert groups == {
        "gongji-relationship.gongji.enrollment.v1",
        "gongji-relationship.gongji.kinship.v1",
        "gongji-relationship.gongji.relationship-commands.v1",
        "gongji-wallet.gongji.account-credits.v1",
        "gongji-wallet.gongji.account-spends.v1",
        "gongji-wallet.gongji.wallet-commands.v1",
        "gongji-wallet.gongji.relationship-events.v1",
        "gongji-wallet.gongji.enrollment.v1",
        "gongji-wallet.gongji.supervision.v1",
        "gongji-wallet.gongji.internal.draw-requests.v1",
        "gongji-wallet.gongji.internal.refund-requests.v1",
        "gongji-settlement.gongji.enrollment.v1",
        "gongji-settlement.gongji.claims.v1",
        "gongji-settlement.gongji.settlements.v1",
    }
