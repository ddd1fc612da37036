"""The three services' handlers on one Redis database, wired as their apps subscribe them, with every
message kept as the Kafka record it would be: what the deep audit reads, without Kafka. A test can
change any record or any key afterwards, as a defect would."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from pydantic import BaseModel
from redis.asyncio import Redis

from gongji.audit.books import Record
from gongji.simulation.network import OUTPUT_TOPICS, SERVICE_ROUTES, Topics, dead_letter_of
from services.relationship.handlers import RelationshipHandlers
from services.relationship.store import RelationshipStore
from services.settlement.clearing import close_month
from shared.contracts import (
    AccountCredited,
    Claim,
    ClearingRow,
    EnrollmentChanged,
    KinshipRecorded,
    RelationshipCommand,
    WalletCommand,
    WalletEvent,
)
from shared.credentials import redis_options
from shared.policy import PolicyCache
from shared.principals import OPERATOR
from shared.redis_client import in_database
from shared.runtime import Refused, ToTopic
from shared.topics import (
    ACCOUNT_CREDITS,
    CLAIMS,
    CLEARING,
    DEAD_LETTERS,
    ENROLLMENT,
    KINSHIP,
    RELATIONSHIP_COMMANDS,
    WALLET_COMMANDS,
    Topic,
)
from tests.integration.saga import Saga
from tests.support import new_id, new_person_id


class Bus:
    def __init__(self, redis) -> None:
        self.redis = redis
        self.saga = Saga(redis)
        self.clock = self.saga.clock
        self.relationship_store = RelationshipStore(redis)
        relationship = RelationshipHandlers(self.relationship_store, PolicyCache(redis, 0), self.clock)
        self.handlers = {"relationship": relationship, "wallet": self.saga.wallet, "settlement": self.saga.settlement}
        self.topics = Topics()

    async def load(self) -> Bus:
        await self.saga.load()
        await self.relationship_store.load()
        return self

    @property
    def records(self) -> list[Record]:
        return self.topics.records

    def record(self, topic: Topic, message: BaseModel) -> Record:
        return self.topics.publish(topic, message)

    async def publish(self, topic: Topic, message: BaseModel, hold: frozenset[Topic] = frozenset()) -> list[BaseModel]:
        """Publishes a message and delivers it and everything it leads to, until nothing is left in
        flight but the messages of `hold`'s topics: those are published and never delivered. Returns
        every output."""
        queue = deque([(topic, message)])
        outputs: list[BaseModel] = []
        while queue:
            topic, message = queue.popleft()
            record = self.record(topic, message)
            for service, route in [] if topic in hold else self._routes(topic):
                for output in await route.method(self.handlers[service], [route.handed(topic, message)]):
                    if isinstance(output, ToTopic):
                        self.record(output.topic, output.message)  # a province's copy: read by no service
                    elif isinstance(output, Refused):
                        outputs.append(letter := dead_letter_of(record, output, self.clock.now()))
                        queue.append((DEAD_LETTERS, letter))
                    else:
                        outputs.append(output)
                        queue.append((OUTPUT_TOPICS[type(output)], output))
        return outputs

    @staticmethod
    def _routes(topic: Topic):
        """Who reads `topic`, as services/*/app.py declare it."""
        return [
            (service, route) for service, routes in SERVICE_ROUTES.items() for route in routes if topic in route.topics
        ]

    # ---- the world, through the public topics ----

    async def person(self, insurance_type: str, region: str) -> str:
        person = new_person_id()
        await self.publish(
            ENROLLMENT,
            EnrollmentChanged(
                event_id=new_id("enr"),
                person_id=person,
                insurance_type=insurance_type,
                region=region,
                status="normal",
                occurred_at=self.clock.now(),
            ),
        )
        return person

    async def credit(self, person: str, amount_fen: int) -> None:
        await self.publish(
            ACCOUNT_CREDITS,
            AccountCredited(
                event_id=new_id("cred"), person_id=person, amount_fen=amount_fen, occurred_at=self.clock.now()
            ),
        )

    async def command(self, action: str, actor: str, provider: str, recipient: str, **fields) -> list[BaseModel]:
        return await self.publish(
            RELATIONSHIP_COMMANDS,
            RelationshipCommand(
                command_id=new_id("cmd"),
                action=action,
                actor_id=actor,
                provider_id=provider,
                recipient_id=recipient,
                requested_at=self.clock.now(),
                **fields,
            ),
        )

    async def establish(self, provider: str, recipient: str, region: str) -> None:
        await self.publish(
            KINSHIP,
            KinshipRecorded(
                event_id=new_id("kin"),
                person_id=provider,
                relative_id=recipient,
                kinship="parent",
                occurred_at=self.clock.now(),
            ),
        )
        await self.command("request", provider, provider, recipient, recipient_region=region, kinship="parent")
        (established,) = await self.command("accept", recipient, provider, recipient)
        assert established.type == "established", established

    async def grant(self, provider: str, recipient: str, region: str, amount_fen: int) -> WalletEvent:
        (answer, *_) = await self.publish(
            WALLET_COMMANDS,
            WalletCommand(
                command_id=new_id("grant"),
                action="grant",
                actor_id=provider,
                provider_id=provider,
                recipient_id=recipient,
                recipient_region=region,
                amount_fen=amount_fen,
                requested_at=self.clock.now(),
            ),
        )
        return answer

    async def claim(self, claim: Claim, hold: frozenset[Topic] = frozenset(), topic: Topic = CLAIMS) -> list[BaseModel]:
        return await self.publish(topic, claim, hold)

    async def close(self, month: str, now: datetime) -> list[ClearingRow]:
        rows = await close_month(self.saga.sstore, month, now)
        for row in rows:
            self.record(CLEARING, row)
        return rows


@asynccontextmanager
async def bus_on_its_own_database(infrastructure, database: int) -> AsyncIterator[Bus]:
    """A bus on a Redis database emptied for it: for tests that sum every claim of the database
    (closing a month, the deep audit)."""
    redis = Redis.from_url(
        in_database(infrastructure.redis_url, database), **redis_options(infrastructure, OPERATOR.name)
    )
    await redis.flushdb()
    try:
        yield await Bus(redis).load()
    finally:
        await redis.aclose()
