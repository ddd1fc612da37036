"""Builds people, families and money through the public topics, and waits (bounded) for the
running services to have applied each fact before the next step depends on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from services.settlement.store import SettlementStore
from shared.settings import Settings
from shared.topics import (
    ACCOUNT_CREDITS,
    CLAIMS,
    ENROLLMENT,
    KINSHIP,
    RELATIONSHIP_COMMANDS,
    RELATIONSHIP_EVENTS,
    SETTLEMENTS,
    WALLET_COMMANDS,
    WALLET_EVENTS,
)
from tests.support import WAIT_SECONDS, Kafka, new_id, new_person_id, new_reversal_id, now_iso, with_claim_id


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.05)


class World:
    def __init__(self, kafka: Kafka, redis: Redis) -> None:
        self.kafka = kafka
        self.redis = redis

    async def clearing_totals(self) -> dict[str, dict[str, int]]:
        """Every month's clearing accumulators as they stand: what other tests and load runs put
        there, so that a test can tell its own share of a statement."""
        store = SettlementStore(self.redis, Settings().settlement_shards)
        keys = self.redis.scan_iter("stl:*:clearing:*", count=1000)
        months = {key.decode().rsplit(":", 1)[1] async for key in keys}
        return {month: await store.accumulators(month) for month in months}

    async def person(self, insurance_type: str = "employee", region: str = "440300", status: str = "normal") -> str:
        person_id = new_person_id()
        await self.enroll(person_id, insurance_type, region, status)
        return person_id

    async def enroll(self, person_id: str, insurance_type: str, region: str, status: str = "normal") -> None:
        """Publishes an enrollment and waits until all three services hold it."""
        await self.kafka.publish(
            ENROLLMENT,
            {
                "event_id": new_id("enr"),
                "person_id": person_id,
                "insurance_type": insurance_type,
                "region": region,
                "status": status,
                "occurred_at": now_iso(),
            },
        )
        expected = [insurance_type.encode(), region.encode(), status.encode()]
        for key in (
            f"rel:{{p:{person_id}}}:enrollment",
            f"wal:{{p:{person_id}}}:account",
            f"stl:{{p:{person_id}}}:enrollment",
        ):
            await until(lambda key=key: self._has(key, expected), f"{key} to be {expected}")

    async def _has(self, key: str, expected: list[bytes]) -> bool:
        return await self.redis.hmget(key, "insurance_type", "region", "status") == expected

    async def kinship(self, person_id: str, relative_id: str, kinship: str) -> None:
        """Civil registry: relative_id is person_id's `kinship`."""
        await self.kafka.publish(
            KINSHIP,
            {
                "event_id": new_id("kin"),
                "person_id": person_id,
                "relative_id": relative_id,
                "kinship": kinship,
                "occurred_at": now_iso(),
            },
        )
        await until(lambda: self.redis.hget(f"rel:{{p:{person_id}}}:kinship", relative_id), "the kinship fact")

    async def credit(self, person_id: str, amount_fen: int) -> dict:
        event_id = new_id("cred")
        await self.kafka.publish(
            ACCOUNT_CREDITS,
            {"event_id": event_id, "person_id": person_id, "amount_fen": amount_fen, "occurred_at": now_iso()},
        )
        return (await self.kafka.wait_for(WALLET_EVENTS, lambda m: m["cause_id"] == event_id))[0]

    async def relationship_command(self, action: str, actor: str, provider: str, recipient: str, **fields: Any) -> dict:
        command_id = fields.pop("command_id", None) or new_id("cmd")
        message = {
            "command_id": command_id,
            "action": action,
            "actor_id": actor,
            "provider_id": provider,
            "recipient_id": recipient,
            "requested_at": now_iso(),
            **fields,
        }
        return await self._answer(RELATIONSHIP_COMMANDS, message, RELATIONSHIP_EVENTS, "cause_id", command_id)

    async def _answer(self, topic, message: dict, answer_topic, field: str, input_id: str) -> dict:
        """Publishes `message` and returns the next answer to it (earlier answers to the same id
        may exist: a redelivery is answered again)."""
        seen = len(self.kafka.matching(answer_topic, lambda m: m[field] == input_id))
        await self.kafka.publish(topic, message)
        return (await self.kafka.wait_for(answer_topic, lambda m: m[field] == input_id, count=seen + 1))[seen]

    async def request(self, provider: str, recipient: str, region: str, kinship: str = "parent", **fields) -> dict:
        return await self.relationship_command(
            "request", provider, provider, recipient, recipient_region=region, kinship=kinship, **fields
        )

    async def establish(self, provider: str, recipient: str, region: str, kinship: str = "parent") -> None:
        """Registry fact, request, acceptance; returns once the wallet knows the relationship."""
        await self.kinship(provider, recipient, kinship)
        assert (await self.request(provider, recipient, region, kinship))["type"] == "requested"
        assert (await self.relationship_command("accept", recipient, provider, recipient))["type"] == "established"
        await until(
            lambda: self.redis.hexists(f"wal:{{p:{provider}}}:relationships", recipient),
            "the wallet to learn the relationship",
        )

    async def funded_family(
        self, provider_region: str = "440300", recipient_region: str = "510100", quota_fen: int = 100_000
    ) -> tuple[str, str]:
        """A provider with money, a recipient in force and a quota granted: ready for claims."""
        provider = await self.person("employee", provider_region)
        recipient = await self.person("resident", recipient_region)
        await self.credit(provider, 1_000_000)
        await self.establish(provider, recipient, recipient_region)
        assert (await self.grant(provider, recipient, recipient_region, quota_fen))["type"] == "granted"
        return provider, recipient

    async def grant(self, provider: str, recipient: str, region: str, amount_fen: int, **fields) -> dict:
        command_id = fields.pop("command_id", None) or new_id("grant")
        message = {
            "command_id": command_id,
            "action": "grant",
            "actor_id": fields.pop("actor_id", provider),
            "provider_id": provider,
            "recipient_id": recipient,
            "recipient_region": region,
            "amount_fen": amount_fen,
            "requested_at": now_iso(),
            **fields,
        }
        return await self._answer(WALLET_COMMANDS, message, WALLET_EVENTS, "cause_id", command_id)

    def claim_message(
        self,
        recipient: str,
        recipient_region: str,
        amount_fen: int,
        category: str = "institution",
        service_region: str | None = None,
        **fields: Any,
    ) -> dict:
        service_region = service_region or recipient_region
        return with_claim_id(
            {
                "kind": "settle",
                "recipient_id": recipient,
                "recipient_region": recipient_region,
                "category": category,
                "institution_code": f"{'P' if category == 'pharmacy' else 'H'}{service_region}00001",
                "service_region": service_region,
                "amount_fen": amount_fen,
                "occurred_at": now_iso(),
                **fields,
            }
        )

    async def settle(self, message: dict) -> dict:
        return await self._answer(CLAIMS, message, SETTLEMENTS, "claim_id", message["claim_id"])

    async def reverse(self, recipient: str, original_claim_id: str, claim_id: str | None = None) -> dict:
        message = {
            "claim_id": claim_id or new_reversal_id(original_claim_id),
            "kind": "reverse",
            "recipient_id": recipient,
            "reverses": original_claim_id,
            "occurred_at": now_iso(),
        }
        return await self.settle(message)
