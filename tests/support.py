"""Helpers for tests against the real Kafka and Redis that `gongji infra up` starts."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from gongji.ops.kafka_io import TopicWatcher
from shared.clock import SHANGHAI, SystemClock
from shared.contracts import DrawAnswered
from shared.credentials import aiokafka_options
from shared.ids import claim_id_prefix, make_person_id
from shared.principals import OPERATOR
from shared.runtime import Delivery
from shared.settings import Settings
from shared.topics import ALL_TOPICS, CLAIMS, DRAW_ANSWERS, PROVINCE_TOPICS, Topic
from shared.window import InputWindow

WAIT_SECONDS = 45.0
# How a store call made straight from a test keeps its input's id: the default window, by real time.
SEEN = InputWindow().seen_ids(SystemClock())


def new_person_id() -> str:
    """A valid, practically unique resident ID (random birth date and serial)."""
    rng = random.Random(uuid.uuid4().int)
    birth = f"{rng.randint(1940, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    return make_person_id(rng.choice(["110101", "120101", "310101"]), birth, rng.randint(0, 999))


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def with_claim_id(claim: dict[str, Any]) -> dict[str, Any]:
    """A settle claim with an id of its own as the contract has it, unless it has one: its service
    region, its institution's code, then a serial."""
    prefix = claim_id_prefix(claim["service_region"], claim.get("institution_code"))
    return {"claim_id": prefix + uuid.uuid4().hex[:16], **claim}


def another_claim_id(claim: dict[str, Any]) -> str:
    """A new id for a claim like `claim`: the same service region and institution, another serial."""
    return with_claim_id({name: value for name, value in claim.items() if name != "claim_id"})["claim_id"]


def new_reversal_id(reverses: str) -> str:
    """A reversal's id begins with the service region its reversed claim's id begins with."""
    return f"{reverses.partition('-')[0]}-R{uuid.uuid4().hex[:16]}"


async def through_claim_path(settlement: Any, messages: list[BaseModel], topic: Topic = CLAIMS) -> list[Any]:
    """Claims (sent on `topic`) and draw answers through settlement's claim path, as its consumer
    hands them over (services/settlement/app.py: ROUTES)."""
    return await settlement.on_claim_path(
        [Delivery(DRAW_ANSWERS if isinstance(message, DrawAnswered) else topic, message) for message in messages]
    )


def now_iso() -> str:
    return datetime.now(SHANGHAI).isoformat()


class Kafka:
    """A producer for inputs and a tap that records every message of every topic from its start,
    both as the operator (tests act as the operator unless a test is about a door)."""

    def __init__(self, settings: Settings) -> None:
        self.producer = AIOKafkaProducer(
            **aiokafka_options(settings, OPERATOR.name), acks="all", enable_idempotence=True, linger_ms=1
        )
        self.watcher = TopicWatcher(settings, (*ALL_TOPICS, *PROVINCE_TOPICS), self._record)
        self.seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._arrived = asyncio.Event()

    def _record(self, topic: str, value: dict[str, Any]) -> None:
        self.seen[topic].append(value)
        self._arrived.set()

    async def start(self) -> None:
        await self.producer.start()
        await self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.producer.stop()

    async def publish(self, topic: Topic, message: BaseModel | dict[str, Any] | bytes, key: str | None = None) -> None:
        if isinstance(message, BaseModel):
            value = message.model_dump_json().encode()
            key = key or str(getattr(message, topic.key_field))
        elif isinstance(message, dict):
            value = json.dumps(message).encode()
            key = key or str(message.get(topic.key_field, ""))
        else:
            value = message
        await self.producer.send_and_wait(topic.name, value, key=(key or "").encode())

    def matching(self, topic: Topic, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [message for message in self.seen[topic.name] if predicate(message)]

    async def wait_for(
        self,
        topic: Topic,
        predicate: Callable[[dict[str, Any]], bool],
        count: int = 1,
        timeout: float = WAIT_SECONDS,
    ) -> list[dict[str, Any]]:
        """Waits (bounded) until at least `count` messages of `topic` match; returns them all."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(topic, predicate)
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"waited {timeout}s for {count} message(s) on {topic.name}; saw {len(found)}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.5))
            except TimeoutError:
                pass

    async def wait_for_each(
        self, topic: Topic, field: str, ids: set[str], timeout: float = WAIT_SECONDS
    ) -> list[dict[str, Any]]:
        """Waits (bounded) until every one of `ids` has a message whose `field` names it (counting
        messages would count one published again twice); returns every message that names one."""
        deadline = time.monotonic() + timeout
        for one in ids:
            await self.wait_for(
                topic, lambda m, one=one: m[field] == one, timeout=max(0.0, deadline - time.monotonic())
            )
        return self.matching(topic, lambda m: m[field] in ids)

    async def settle_quietly(self, seconds: float = 2.0) -> None:
        """Lets late duplicates arrive before a test asserts that something happened only once."""
        await asyncio.sleep(seconds)
