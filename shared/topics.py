"""Topic registry: every topic name, its key field, its payload model and its consumer groups."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydantic import BaseModel

from shared import contracts as c
from shared.ids import PROVINCE_CODES
from shared.settings import Settings


@dataclass(frozen=True)
class Topic:
    name: str
    key_field: str
    model: type[BaseModel]
    province: str | None = None  # the province whose own topic this is; None for a national topic
    # The largest record batch the broker takes on this topic (None: the broker's 1 MiB).
    max_message_bytes: int | None = None
    # An input's: where its sender reads the dead letters of its records (None: the national
    # platform's own inputs, whose dead letters it reads on gongji.dead-letters.v1).
    refusals_to: Topic | None = None
    # An internal hop whose every record carries several messages, one batch's for one partition,
    # as a JSON array of the model (shared/runtime.py: Outbox, DeadLetterDecoder): much of what a
    # record costs the producer, the broker and the consumer is per record, not per message.
    batched: bool = False

    @property
    def pattern(self) -> str:
        """The name with the province's code as `PP`: how the 32 topics of one kind are named together."""
        return self.name.replace(f".{self.province}.", ".PP.") if self.province else self.name

    @property
    def description(self) -> str:
        """What a record holds, as the AsyncAPI document says it."""
        what = self.model.__doc__ or ""
        return f"{what} Each record: a JSON array of these, one batch's for one partition." if self.batched else what

    def partitions(self, settings: Settings) -> int:
        return settings.province_topic_partitions if self.province else settings.topic_partitions


# Every refusal reaches its sender: each sender reads the dead letters of its own records, person
# ids masked (the national one, whole, is the operator's).
REGISTRY_DEAD_LETTERS = Topic("gongji.registry.dead-letters.v1", "source_key", c.DeadLetter)
APP_DEAD_LETTERS = Topic("gongji.app.dead-letters.v1", "source_key", c.DeadLetter)
SUPERVISOR_DEAD_LETTERS = Topic("gongji.supervisor.dead-letters.v1", "source_key", c.DeadLetter)

ENROLLMENT = Topic("gongji.enrollment.v1", "person_id", c.EnrollmentChanged, refusals_to=REGISTRY_DEAD_LETTERS)
ACCOUNT_CREDITS = Topic("gongji.account-credits.v1", "person_id", c.AccountCredited)
ACCOUNT_SPENDS = Topic("gongji.account-spends.v1", "person_id", c.AccountSpent)
KINSHIP = Topic("gongji.kinship.v1", "person_id", c.KinshipRecorded, refusals_to=REGISTRY_DEAD_LETTERS)
CLAIMS = Topic("gongji.claims.v1", "recipient_id", c.Claim)
SUPERVISION = Topic("gongji.supervision.v1", "person_id", c.SupervisionActed, refusals_to=SUPERVISOR_DEAD_LETTERS)
RELATIONSHIP_COMMANDS = Topic(
    "gongji.relationship-commands.v1", "provider_id", c.RelationshipCommand, refusals_to=APP_DEAD_LETTERS
)
WALLET_COMMANDS = Topic("gongji.wallet-commands.v1", "provider_id", c.WalletCommand, refusals_to=APP_DEAD_LETTERS)
RELATIONSHIP_EVENTS = Topic("gongji.relationship-events.v1", "provider_id", c.RelationshipEvent)
WALLET_EVENTS = Topic("gongji.wallet-events.v1", "provider_id", c.WalletEvent)
SETTLEMENTS = Topic("gongji.settlements.v1", "recipient_id", c.SettlementEvent)
CLEARING = Topic("gongji.clearing.v1", "month", c.ClearingRow)
DEAD_LETTERS = Topic("gongji.dead-letters.v1", "source_key", c.DeadLetter)
STATISTICS = Topic("gongji.statistics.v1", "minute", c.StatisticsSnapshot)
RECONCILIATION = Topic("gongji.reconciliation.v1", "province", c.ReconciliationDay)

# Internal: the claim saga. Keyed by recipient so that one claim's messages stay in order.
DRAW_REQUESTS = Topic("gongji.internal.draw-requests.v2", "recipient_id", c.DrawRequested, batched=True)
DRAW_ANSWERS = Topic("gongji.internal.draw-answers.v2", "recipient_id", c.DrawAnswered, batched=True)
# Releases before 2026-12-07 sent a record per draw here: still read, so that what they left
# unread when an upgrade stopped them is answered, and written no more. A route that reads one
# keeps it first, so that its consumer group keeps its name and its offsets.
DRAW_REQUESTS_V1 = Topic("gongji.internal.draw-requests.v1", "recipient_id", c.DrawRequested)
DRAW_ANSWERS_V1 = Topic("gongji.internal.draw-answers.v1", "recipient_id", c.DrawAnswered)
REFUND_REQUESTS = Topic("gongji.internal.refund-requests.v1", "recipient_id", c.RefundRequested)

ALL_TOPICS: tuple[Topic, ...] = (
    ENROLLMENT,
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    KINSHIP,
    CLAIMS,
    SUPERVISION,
    RELATIONSHIP_COMMANDS,
    WALLET_COMMANDS,
    RELATIONSHIP_EVENTS,
    WALLET_EVENTS,
    SETTLEMENTS,
    CLEARING,
    DEAD_LETTERS,
    STATISTICS,
    RECONCILIATION,
    DRAW_REQUESTS,
    DRAW_ANSWERS,
    DRAW_REQUESTS_V1,
    DRAW_ANSWERS_V1,
    REFUND_REQUESTS,
    REGISTRY_DEAD_LETTERS,
    APP_DEAD_LETTERS,
    SUPERVISOR_DEAD_LETTERS,
)

# Per-province topics (wave 2), for provinces that connect directly: a province sends its claims on
# its own topic and reads only its own results. Same payloads as the national topics.
# A province's claims topic takes records the size the contract allows: the largest valid claim
# (1,000 items with 64-character codes) is about 130 KB. Anything bigger is refused by the broker
# before it costs the services or the disk anything.
PROVINCE_CLAIM_MAX_BYTES = 192 * 1024


def province_claims(province: str) -> Topic:
    return Topic(
        f"gongji.province.{province}.claims.v1",
        CLAIMS.key_field,
        CLAIMS.model,
        province,
        max_message_bytes=PROVINCE_CLAIM_MAX_BYTES,
        refusals_to=province_dead_letters(province),
    )


def province_dead_letters(province: str) -> Topic:
    """The province's own records that could not be read at all (a claim whose id can be read is
    answered on its settlements topic instead)."""
    return Topic(f"gongji.province.{province}.dead-letters.v1", DEAD_LETTERS.key_field, DEAD_LETTERS.model, province)


@functools.cache  # a province's copy of every result is addressed by it
def province_settlements(province: str) -> Topic:
    return Topic(f"gongji.province.{province}.settlements.v1", SETTLEMENTS.key_field, SETTLEMENTS.model, province)


def province_clearing(province: str) -> Topic:
    return Topic(f"gongji.province.{province}.clearing.v1", CLEARING.key_field, CLEARING.model, province)


def province_reconciliation(province: str) -> Topic:
    return Topic(
        f"gongji.province.{province}.reconciliation.v1", RECONCILIATION.key_field, RECONCILIATION.model, province
    )


def province_topic_prefix(province: str) -> str:
    return f"gongji.province.{province}."


PROVINCES: tuple[str, ...] = tuple(sorted(PROVINCE_CODES))
PROVINCE_CLAIMS: tuple[Topic, ...] = tuple(province_claims(province) for province in PROVINCES)
# The hops a claim waits on: their consumers fetch with a short wait (shared/runtime.py).
CLAIM_PATH: frozenset[str] = frozenset(
    {
        CLAIMS.name,
        *(topic.name for topic in (DRAW_REQUESTS, DRAW_ANSWERS, DRAW_REQUESTS_V1, DRAW_ANSWERS_V1)),
        *(topic.name for topic in PROVINCE_CLAIMS),
    }
)
PROVINCE_TOPICS: tuple[Topic, ...] = tuple(
    topic(province)
    for province in PROVINCES
    for topic in (
        province_claims,
        province_settlements,
        province_clearing,
        province_dead_letters,
        province_reconciliation,
    )
)

_PATTERNS = {topic.name: topic.pattern for topic in (*ALL_TOPICS, *PROVINCE_TOPICS)}


def pattern_of(name: str) -> str:
    """A topic's name as the 32 of its kind are named together (`gongji.province.PP.claims.v1`);
    `other` for a name that is no topic of the contract."""
    return _PATTERNS.get(name, "other")


# Each service's consumer groups are named under its prefix. Releases before 2026-12-06 read
# every route of a service in one group of this name (`gongji infra up` moves its offsets over).
RELATIONSHIP_GROUP = "gongji-relationship"
WALLET_GROUP = "gongji-wallet"
SETTLEMENT_GROUP = "gongji-settlement"


def route_group(service_group: str, first_topic: Topic) -> str:
    """The consumer group of one route of a service (`gongji-wallet.gongji.account-credits.v1`):
    N instances share each route's partitions. One group per route, not per service: an instance
    joining or leaving rebalances each route's group apart, where one group of all its routes
    stopped every route while each of the instance's consumers joined in turn."""
    return f"{route_group_prefix(service_group)}{first_topic.name}"


def route_group_prefix(service_group: str) -> str:
    return f"{service_group}."
