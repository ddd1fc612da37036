"""Who may do what: the one declaration of every principal and its rights on Kafka and Redis.

`gongji infra up` turns it into SCRAM users, Kafka ACLs (StandardAuthorizer, nothing allowed
without an ACL) and Redis ACL users, removing any right it does not declare; docs/security.md's table is
rendered from it by `rights_table()` (a test fails when that copy is stale). Pure data: no I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from shared.policy import POLICY_KEY
from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    APP_DEAD_LETTERS,
    CLAIMS,
    CLEARING,
    DEAD_LETTERS,
    DRAW_ANSWERS,
    DRAW_ANSWERS_V1,
    DRAW_REQUESTS,
    DRAW_REQUESTS_V1,
    ENROLLMENT,
    KINSHIP,
    PROVINCES,
    RECONCILIATION,
    REFUND_REQUESTS,
    REGISTRY_DEAD_LETTERS,
    RELATIONSHIP_COMMANDS,
    RELATIONSHIP_EVENTS,
    RELATIONSHIP_GROUP,
    SETTLEMENT_GROUP,
    SETTLEMENTS,
    STATISTICS,
    SUPERVISION,
    SUPERVISOR_DEAD_LETTERS,
    WALLET_COMMANDS,
    WALLET_EVENTS,
    WALLET_GROUP,
    Topic,
    province_claims,
    province_clearing,
    province_dead_letters,
    province_reconciliation,
    province_settlements,
    province_topic_prefix,
    route_group_prefix,
)

Operation = Literal["read", "write"]


@dataclass(frozen=True)
class KafkaRight:
    """READ of a topic (consume) or a consumer group (join, commit), or WRITE of a topic (produce);
    a prefixed right covers every name that starts with `name`."""

    resource: Literal["topic", "group"]
    name: str
    operation: Operation
    prefixed: bool = False


@dataclass(frozen=True)
class RedisAccess:
    """A Redis ACL user: its key patterns (read and write), keys it may only read, and the only
    commands it may run (inside its Redis Functions too: Redis checks them as the calling user)."""

    keys: tuple[str, ...]
    read_only_keys: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()


@dataclass(frozen=True)
class KafkaQuota:
    """What one principal may ask of the broker, all its connections together (Kafka client quotas):
    bytes produced and fetched per second (beyond them the broker delays its answers), and the share
    of the broker's request threads it may keep busy (percent of one thread)."""

    producer_byte_rate: int
    consumer_byte_rate: int
    request_percentage: int

    def shown(self) -> str:
        return (
            f"produce {self.producer_byte_rate // 1024:,} KiB/s, fetch {self.consumer_byte_rate // 1024:,} KiB/s, "
            f"{self.request_percentage}% of a request thread"
        )


# Every client outside the platform. A province sends about 1 M / 32 claims a day (12/s, ~1 KB
# each) and reads its results: 1 MiB/s is a hundred times its peak, and a province that sends
# more (a bug, a stolen password) is slowed instead of taking the broker from every other.
CLIENT_QUOTA = KafkaQuota(producer_byte_rate=1024 * 1024, consumer_byte_rate=4 * 1024 * 1024, request_percentage=25)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    kafka: tuple[KafkaRight, ...] = ()
    redis: RedisAccess | None = None
    super_user: bool = False  # a Kafka super user: every ACL check passes
    # None: not throttled (the broker, the operator and the services, whose load follows the clients').
    quota: KafkaQuota | None = None


def reads(*topics: Topic) -> tuple[KafkaRight, ...]:
    return tuple(KafkaRight("topic", topic.name, "read") for topic in topics)


def writes(*topics: Topic) -> tuple[KafkaRight, ...]:
    return tuple(KafkaRight("topic", topic.name, "write") for topic in topics)


def group(name: str, prefixed: bool = False) -> tuple[KafkaRight, ...]:
    return (KafkaRight("group", name, "read", prefixed),)


# What a service's instances of the release before write and this release's do not: granted until
# the next release, so that both run side by side through a rolling upgrade (refused, the old
# instances would lose nothing, but crash again and again and stall their hop).
UPGRADE_WRITES: dict[str, tuple[Topic, ...]] = {"wallet": (DRAW_ANSWERS_V1,), "settlement": (DRAW_REQUESTS_V1,)}

# What every service's Redis user may run besides its own functions' commands: the durability
# check at start (CONFIG GET: no narrower command tells `appendfsync`), FCALL itself, FCALL_RO
# (the check that its release's library is loaded; FUNCTION LIST would show every library's code),
# and what redis-py may send on connecting (its CLIENT SETINFO may be refused: it ignores that);
# on a Redis Cluster, what its cluster client asks to route (the slots' owners, the command table
# it reads keys by) and ASKING, which a call redirected while a slot moves is sent with; and the
# replication barrier's INCRBY of its marker and WAIT (shared/redis_client.py).
_SERVICE_COMMANDS = (
    "fcall", "fcall_ro", "config|get", "ping", "select",
    "cluster|slots", "cluster|shards", "command", "asking",
    "incrby", "wait",
)  # fmt: skip

BROKER = Principal("broker", "the Kafka broker itself (inter-broker and controller traffic)", super_user=True)
OPERATOR = Principal(
    "operator",
    "the national platform and the operator: CLI, audit, tools, tests, national topics, dead letters",
    redis=RedisAccess(keys=("*",), commands=("@all",)),
    super_user=True,
)

# A Redis Cluster node that replicates its primary (`masteruser`): it may read the replication
# stream, nothing else. It is no Kafka user.
REPLICA = Principal(
    "replica",
    "a Redis Cluster replica, reading its primary's replication stream",
    redis=RedisAccess(keys=(), commands=("psync", "replconf", "ping")),
)

SERVICES: tuple[Principal, ...] = (
    Principal(
        "relationship",
        "the relationship service",
        kafka=(
            *reads(ENROLLMENT, KINSHIP, RELATIONSHIP_COMMANDS),
            *group(route_group_prefix(RELATIONSHIP_GROUP), prefixed=True),
            *writes(RELATIONSHIP_EVENTS, DEAD_LETTERS, REGISTRY_DEAD_LETTERS, APP_DEAD_LETTERS),
        ),
        redis=RedisAccess(
            keys=("rel:*",),
            read_only_keys=(POLICY_KEY,),
            commands=(
                *_SERVICE_COMMANDS,
                "hget",
                "hmget",
                "hgetall",
                "hexists",
                "hkeys",
                "hset",
                "hdel",
                "hincrby",
                "del",
                "pttl",
                "pexpire",
                "rename",
            ),
        ),
    ),
    Principal(
        "wallet",
        "the wallet service",
        kafka=(
            *reads(
                ACCOUNT_CREDITS,
                ACCOUNT_SPENDS,
                WALLET_COMMANDS,
                RELATIONSHIP_EVENTS,
                ENROLLMENT,
                SUPERVISION,
                DRAW_REQUESTS,
                DRAW_REQUESTS_V1,
                REFUND_REQUESTS,
            ),
            *group(route_group_prefix(WALLET_GROUP), prefixed=True),
            *writes(
                WALLET_EVENTS,
                DRAW_ANSWERS,
                *UPGRADE_WRITES["wallet"],
                DEAD_LETTERS,
                REGISTRY_DEAD_LETTERS,
                APP_DEAD_LETTERS,
                SUPERVISOR_DEAD_LETTERS,
            ),
        ),
        redis=RedisAccess(
            keys=("wal:*",),
            read_only_keys=(POLICY_KEY,),
            commands=(
                *_SERVICE_COMMANDS,
                "hget",
                "hmget",
                "hgetall",
                "hexists",
                "hkeys",
                "hset",
                "hsetnx",
                "hdel",
                "hincrby",
                "zadd",
                "zcard",
                "zpopmin",
                "zrange",
                "zrem",
                "pttl",
                "pexpire",
                "rename",
            ),
        ),
    ),
    Principal(
        "settlement",
        "the settlement service (and `gongji clearing close`, its monthly job)",
        kafka=(
            *reads(CLAIMS, ENROLLMENT, DRAW_ANSWERS, DRAW_ANSWERS_V1),
            *reads(*map(province_claims, PROVINCES)),
            # What it published and every dead letter: the exact statistics and reconciliation.
            *reads(SETTLEMENTS, DEAD_LETTERS),
            *group(route_group_prefix(SETTLEMENT_GROUP), prefixed=True),
            *writes(
                SETTLEMENTS,
                CLEARING,
                STATISTICS,
                RECONCILIATION,
                DRAW_REQUESTS,
                *UPGRADE_WRITES["settlement"],
                REFUND_REQUESTS,
                DEAD_LETTERS,
                REGISTRY_DEAD_LETTERS,
            ),
            *writes(*map(province_settlements, PROVINCES)),
            *writes(*map(province_reconciliation, PROVINCES)),
            *writes(*map(province_clearing, PROVINCES)),
            *writes(*map(province_dead_letters, PROVINCES)),
        ),
        redis=RedisAccess(
            keys=("stl:*",),
            commands=(
                *_SERVICE_COMMANDS,
                "get",
                "set",
                "hget",
                "hmget",
                "hgetall",
                "hexists",
                "hset",
                "hincrby",
                "hsetnx",
                "hdel",
                "expire",
                "pttl",
                "pexpire",
                "rename",
            ),
        ),
    ),
)


@functools.cache  # the load generator asks for each claim's sender
def province_principal(province: str) -> Principal:
    """A province's own system: sends its claims, reads its own results, never another's."""
    return Principal(
        f"province-{province}",
        f"province {province}'s own system",
        kafka=(
            *writes(province_claims(province)),
            KafkaRight("topic", province_topic_prefix(province), "read", prefixed=True),
            *group(f"province-{province}", prefixed=True),
        ),
        quota=CLIENT_QUOTA,
    )


CLIENTS: tuple[Principal, ...] = (
    *(province_principal(province) for province in PROVINCES),
    Principal(
        "registry",
        "civil-registry and enrollment facts, and their refusals",
        kafka=(*writes(KINSHIP, ENROLLMENT), *reads(REGISTRY_DEAD_LETTERS), *group("registry", prefixed=True)),
        quota=CLIENT_QUOTA,
    ),
    Principal(
        "app",
        "the national service platform's app channel: commands, and their answers",
        kafka=(
            *writes(RELATIONSHIP_COMMANDS, WALLET_COMMANDS),
            *reads(RELATIONSHIP_EVENTS, WALLET_EVENTS, APP_DEAD_LETTERS),
            *group("app", prefixed=True),
        ),
        quota=CLIENT_QUOTA,
    ),
    Principal(
        "supervisor",
        "the fund supervisors: freezes and unfreezes, and their refusals",
        kafka=(*writes(SUPERVISION), *reads(SUPERVISOR_DEAD_LETTERS), *group("supervisor", prefixed=True)),
        quota=CLIENT_QUOTA,
    ),
    Principal(
        "dashboard",
        "live dashboards: aggregates only, no personal data",
        kafka=(*reads(STATISTICS, RECONCILIATION), *group("dashboard", prefixed=True)),
        quota=CLIENT_QUOTA,
    ),
)

PRINCIPALS: tuple[Principal, ...] = (BROKER, OPERATOR, REPLICA, *SERVICES, *CLIENTS)
# Who has a SCRAM user on Kafka: every principal with a right there.
KAFKA_USERS: tuple[Principal, ...] = tuple(one for one in PRINCIPALS if one.kafka or one.super_user)
BY_NAME: dict[str, Principal] = {principal.name: principal for principal in PRINCIPALS}


def principal(name: str) -> Principal:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"no principal {name!r}; known: {', '.join(BY_NAME)}") from None


def redis_acl_rules(access: RedisAccess) -> list[str]:
    """The rules of `ACL SETUSER` (after the password) for one user: it starts from nothing."""
    return [
        "on",
        "resetkeys",
        "resetchannels",
        *(f"~{pattern}" for pattern in access.keys),
        *(f"%R~{pattern}" for pattern in access.read_only_keys),
        "-@all",
        *(f"+{command}" for command in access.commands),
    ]


_PROVINCE_IN_NAME = re.compile(r"(?<=province[.-])\d\d(?=\.|$)")


def _shown(right: KafkaRight) -> str:
    """A name as the table shows it: a province code in it as `PP`, a prefix with `*`."""
    name = _PROVINCE_IN_NAME.sub("PP", right.name)
    return f"`{name}*`" if right.prefixed else f"`{name}`"


def rights_table() -> str:
    """docs/security.md's table: one line per principal, the 32 provinces as one (`PP` standing for each)."""
    lines = [
        "| principal | role | writes | reads | consumer groups | Redis | Kafka quota |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for one in PRINCIPALS:
        if one.name.startswith("province-") and one.name != f"province-{PROVINCES[0]}":
            continue
        cells: dict[str, list[str]] = {"write": [], "read": [], "group": []}
        for right in one.kafka:
            cell = cells["group" if right.resource == "group" else right.operation]
            if _shown(right) not in cell:
                cell.append(_shown(right))
        if one.super_user:
            cells = {"write": ["every topic (super user)"], "read": ["every topic"], "group": ["any"]}
        redis = "—"
        if one.redis is not None:
            redis = f"keys {', '.join(f'`{key}`' for key in one.redis.keys)}"
            if one.redis.read_only_keys:
                redis += f"; reads {', '.join(f'`{key}`' for key in one.redis.read_only_keys)}"
            redis += f"; commands {', '.join(command.replace('|', ' ') for command in one.redis.commands)}"
        name = _PROVINCE_IN_NAME.sub("PP", one.name)
        role = one.role.replace(f"province {PROVINCES[0]}'s", "each province's")
        lines.append(
            f"| `{name}` | {role} | {', '.join(cells['write']) or '—'} | {', '.join(cells['read']) or '—'} "
            f"| {', '.join(cells['group']) or '—'} | {redis} | {one.quota.shown() if one.quota else '—'} |"
        )
    return "\n".join(lines)
