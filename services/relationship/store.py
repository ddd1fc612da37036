"""The relationship service's Redis state (prefix `rel:`); only this service reads or writes it.
Every key of a person carries the hash tag {p:<person_id>}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from services.relationship.domain import Enrollment, Relationship
from shared.redis_functions import Library, Step, call_step, execute

LIBRARY = Library("gongji_relationship", Path(__file__).with_name("relationship.lua"))


def _key(person_id: str, part: str) -> str:
    return f"rel:{{p:{person_id}}}:{part}"


class RelationshipStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def load(self) -> None:
        await LIBRARY.load(self.redis)

    async def ready(self) -> None:
        await LIBRARY.require_loaded(self.redis)

    async def apply_command(
        self, input_id: str, fingerprint: str, action: str, provider_id: str, recipient_id: str,
        refusal: str, kinship: str, recipient_region: str, recipient_generation: int, provider_generation: int,
        version: int, now: str,
    ) -> Step:
        return await call_step(
            self.redis, LIBRARY.function("relationship_command"),
            [_key(provider_id, part)
             for part in ("seen:commands", "rels", "versions", "enrollment", "recipient-generations")],
            [input_id, fingerprint, action, recipient_id, refusal, kinship, recipient_region, recipient_generation,
             provider_generation, version, now],
        )

    async def command_seen(self, provider_id: str, input_id: str) -> bool:
        return bool(await self.redis.hexists(_key(provider_id, "seen:commands"), input_id))

    async def record_enrollment(
        self, input_id: str, fingerprint: str, person_id: str, enrollment: Enrollment, now: str
    ) -> Step:
        return await call_step(
            self.redis, LIBRARY.function("relationship_record_enrollment"),
            [_key(person_id, part) for part in ("seen:enrollment", "enrollment", "rels", "versions", "providers")],
            [input_id, fingerprint, enrollment.insurance_type, enrollment.region, enrollment.status, now],
        )

    async def end_relationship(self, provider_id: str, recipient_id: str, generation: int) -> Step:
        return await call_step(
            self.redis, LIBRARY.function("relationship_end"),
            [_key(provider_id, part) for part in ("terminations", "rels", "versions", "recipient-generations")],
            [recipient_id, generation],
        )

    async def record_kinship(
        self, input_id: str, fingerprint: str, person_id: str, relative_id: str, kinship: str
    ) -> Step:
        return await call_step(
            self.redis, LIBRARY.function("relationship_record_kinship"),
            [_key(person_id, "seen:kinship"), _key(person_id, "kinship")],
            [input_id, fingerprint, relative_id, kinship],
        )

    async def index_provider(self, provider_id: str, recipient_id: str, version: int, state: str) -> None:
        """Keeps the recipient's index of providers, used to end them when the recipient's insurance
        changes; an update older than the index's holds nothing."""
        await self.redis.fcall(LIBRARY.function("relationship_index_provider"), 1, _key(recipient_id, "providers"),
                               provider_id, version, state)

    async def expect_provider(self, provider_id: str, recipient_id: str) -> None:
        await self.redis.fcall(LIBRARY.function("relationship_expect_provider"), 1, _key(recipient_id, "providers"),
                               provider_id)

    async def enrollment(self, person_id: str) -> Enrollment | None:
        values = await self.redis.hmget(_key(person_id, "enrollment"),
                                        "insurance_type", "region", "status", "generation")
        if values[0] is None:
            return None
        return Enrollment(*(value.decode() for value in values[:3]), generation=int(values[3] or 0))

    async def relationship(self, provider_id: str, recipient_id: str) -> Relationship | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(_key(provider_id, "rels"), recipient_id)
            pipe.hget(_key(provider_id, "versions"), recipient_id)
            raw, version = await execute(pipe)
        if raw is None:
            return None
        stored = json.loads(raw)
        # A relationship stored before generations existed counts as requested on generation 0.
        return Relationship(stored["state"], stored["recipient_region"], stored.get("recipient_generation", 0),
                            int(version or 0))

    async def recorded_kinship(self, person_id: str, relative_id: str) -> str | None:
        """What the civil registry says `relative_id` is to `person_id`, by `person_id`'s own facts."""
        value = await self.redis.hget(_key(person_id, "kinship"), relative_id)
        return value.decode() if value else None

    async def relationships_of(self, person_id: str) -> list[dict[str, Any]]:
        """Both directions: where the person provides, and where they receive."""
        rows = []
        for recipient_id, raw in (await self.redis.hgetall(_key(person_id, "rels"))).items():
            rows.append({"provider_id": person_id, "recipient_id": recipient_id.decode(), **json.loads(raw)})
        for provider_id in await self.redis.hkeys(_key(person_id, "providers")):
            raw = await self.redis.hget(_key(provider_id.decode(), "rels"), person_id)
            if raw:
                rows.append({"provider_id": provider_id.decode(), "recipient_id": person_id, **json.loads(raw)})
        return rows
