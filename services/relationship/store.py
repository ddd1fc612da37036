"""The relationship service's Redis state (prefix `rel:`); only this service reads or writes it.
Every key of a person carries the hash tag {p:<person_id>}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from services.relationship.domain import Enrollment
from shared.redis_functions import Step, call_step, load_library

LIBRARY = Path(__file__).with_name("relationship.lua")


def _key(person_id: str, part: str) -> str:
    return f"rel:{{p:{person_id}}}:{part}"


class RelationshipStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def load(self) -> None:
        await load_library(self.redis, "gongji_relationship", LIBRARY)

    async def apply_command(
        self, input_id: str, fingerprint: str, action: str, provider_id: str, recipient_id: str,
        refusal: str, kinship: str, recipient_region: str, now: str,
    ) -> Step:
        return await call_step(
            self.redis, "relationship_command",
            [_key(provider_id, "seen"), _key(provider_id, "rels")],
            [input_id, fingerprint, action, recipient_id, refusal, kinship, recipient_region, now],
        )

    async def record_enrollment(
        self, input_id: str, fingerprint: str, person_id: str, enrollment: Enrollment, now: str
    ) -> Step:
        return await call_step(
            self.redis, "relationship_record_enrollment",
            [_key(person_id, part) for part in ("seen", "enrollment", "rels", "incoming")],
            [input_id, fingerprint, enrollment.insurance_type, enrollment.region, enrollment.status, now],
        )

    async def end_relationship(self, input_id: str, provider_id: str, recipient_id: str, now: str) -> Step:
        return await call_step(
            self.redis, "relationship_end",
            [_key(provider_id, "seen"), _key(provider_id, "rels")],
            [input_id, "-", recipient_id, now],
        )

    async def record_kinship(
        self, input_id: str, fingerprint: str, person_id: str, relative_id: str, kinship: str, inverse: str
    ) -> Step:
        step = await call_step(
            self.redis, "relationship_record_kinship",
            [_key(person_id, "seen"), _key(person_id, "kinship")],
            [input_id, fingerprint, relative_id, kinship],
        )
        if not step.conflict:
            # The same fact seen from the relative's side, in the relative's slot (idempotent).
            await self.redis.hset(_key(relative_id, "kinship"), person_id, inverse)
        return step

    async def index_incoming(self, provider_id: str, recipient_id: str, change: str) -> None:
        """Keeps the recipient's set of providers, used to end them when the recipient's insurance changes."""
        if change == "add":
            await self.redis.sadd(_key(recipient_id, "incoming"), provider_id)
        elif change == "remove":
            await self.redis.srem(_key(recipient_id, "incoming"), provider_id)

    async def enrollment(self, person_id: str) -> Enrollment | None:
        values = await self.redis.hmget(_key(person_id, "enrollment"), "insurance_type", "region", "status")
        if values[0] is None:
            return None
        return Enrollment(*(value.decode() for value in values))

    async def recorded_kinship(self, person_id: str, relative_id: str) -> str | None:
        """What the civil registry says `relative_id` is to `person_id`, if anything."""
        value = await self.redis.hget(_key(person_id, "kinship"), relative_id)
        return value.decode() if value else None

    async def relationships_of(self, person_id: str) -> list[dict[str, Any]]:
        """Both directions: where the person provides, and where they receive."""
        rows = []
        for recipient_id, raw in (await self.redis.hgetall(_key(person_id, "rels"))).items():
            rows.append({"provider_id": person_id, "recipient_id": recipient_id.decode(), **json.loads(raw)})
        for provider_id in await self.redis.smembers(_key(person_id, "incoming")):
            raw = await self.redis.hget(_key(provider_id.decode(), "rels"), person_id)
            if raw:
                rows.append({"provider_id": provider_id.decode(), "recipient_id": person_id, **json.loads(raw)})
        return rows
