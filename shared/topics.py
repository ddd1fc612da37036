"""Topic registry: every topic name, its key field, its payload model and its consumer groups."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from shared import contracts as c


@dataclass(frozen=True)
class Topic:
    name: str
    key_field: str
    model: type[BaseModel]


ENROLLMENT = Topic("gongji.enrollment.v1", "person_id", c.EnrollmentChanged)
ACCOUNT_CREDITS = Topic("gongji.account-credits.v1", "person_id", c.AccountCredited)
ACCOUNT_SPENDS = Topic("gongji.account-spends.v1", "person_id", c.AccountSpent)
KINSHIP = Topic("gongji.kinship.v1", "person_id", c.KinshipRecorded)
CLAIMS = Topic("gongji.claims.v1", "recipient_id", c.Claim)
SUPERVISION = Topic("gongji.supervision.v1", "person_id", c.SupervisionActed)
RELATIONSHIP_COMMANDS = Topic("gongji.relationship-commands.v1", "provider_id", c.RelationshipCommand)
WALLET_COMMANDS = Topic("gongji.wallet-commands.v1", "provider_id", c.WalletCommand)
RELATIONSHIP_EVENTS = Topic("gongji.relationship-events.v1", "provider_id", c.RelationshipEvent)
WALLET_EVENTS = Topic("gongji.wallet-events.v1", "provider_id", c.WalletEvent)
SETTLEMENTS = Topic("gongji.settlements.v1", "recipient_id", c.SettlementEvent)
CLEARING = Topic("gongji.clearing.v1", "month", c.ClearingRow)
DEAD_LETTERS = Topic("gongji.dead-letters.v1", "source_key", c.DeadLetter)
STATISTICS = Topic("gongji.statistics.v1", "minute", c.StatisticsSnapshot)

# Internal: the claim saga. Keyed by recipient so that one claim's messages stay in order.
DRAW_REQUESTS = Topic("gongji.internal.draw-requests.v1", "recipient_id", c.DrawRequested)
DRAW_ANSWERS = Topic("gongji.internal.draw-answers.v1", "recipient_id", c.DrawAnswered)
REFUND_REQUESTS = Topic("gongji.internal.refund-requests.v1", "recipient_id", c.RefundRequested)

ALL_TOPICS: tuple[Topic, ...] = (
    ENROLLMENT, ACCOUNT_CREDITS, ACCOUNT_SPENDS, KINSHIP, CLAIMS, SUPERVISION,
    RELATIONSHIP_COMMANDS, WALLET_COMMANDS, RELATIONSHIP_EVENTS, WALLET_EVENTS, SETTLEMENTS,
    CLEARING, DEAD_LETTERS, STATISTICS, DRAW_REQUESTS, DRAW_ANSWERS, REFUND_REQUESTS,
)

# One consumer group per service: N instances of a service share its partitions.
RELATIONSHIP_GROUP = "gongji-relationship"
WALLET_GROUP = "gongji-wallet"
SETTLEMENT_GROUP = "gongji-settlement"
