"""The relationship service's Redis state (prefix `rel:`); only this service reads or writes it.
Every key of a person carries the hash tag {p:<person_id>}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from services.relationship.domain import Enrollment, Relationship
from shared.records import EnrollmentStep, Recorded, RelationshipRecord, RelationshipStep
from shared.redis_functions import Library, Step, call_step, execute
from shared.window import SEEN_ARGS, SEEN_KEYS, SeenIds

LIBRARY = Library("gongji_relationship", Path(__file__).with_name("relationship.lua"))

COMMAND = LIBRARY.declare(
    "relationship_command",
    keys=(*SEEN_KEYS, "rels_key", "versions_key", "enrollment_key", "generations_key"),
    args=(
        "input_id",
        "fingerprint",
        *SEEN_ARGS,
        "action",
        "recipient",
        "refusal",
        "kinship",
        "recipient_region",
        "recipient_generation",
        "provider_generation",
        "version",
        "now",
    ),
    result=RelationshipStep,
)
RECORD_ENROLLMENT = LIBRARY.declare(
    "relationship_record_enrollment",
    keys=(*SEEN_KEYS, "enrollment_key", "rels_key", "versions_key", "providers_key"),
    args=("input_id", "fingerprint", *SEEN_ARGS, "insurance_type", "region", "status", "now"),
    result=EnrollmentStep,
)
END = LIBRARY.declare(
    "relationship_end",
    keys=(*SEEN_KEYS, "rels_key", "versions_key", "generations_key"),
    args=("recipient", "generation", *SEEN_ARGS),
    result=RelationshipStep,
)
RECORD_KINSHIP = LIBRARY.declare(
    "relationship_record_kinship",
    keys=(*SEEN_KEYS, "kinship_key"),
    args=("input_id", "fingerprint", *SEEN_ARGS, "relative", "kinship"),
    result=Recorded,
)
INDEX_PROVIDER = LIBRARY.declare(
    "relationship_index_provider", keys=("providers_key",), args=("provider", "version", "state")
)
EXPECT_PROVIDER = LIBRARY.declare("relationship_expect_provider", keys=("providers_key",), args=("provider",))


PREFIX = "rel:"


def _key(person_id: str, part: str) -> str:
    return f"{PREFIX}{{p:{person_id}}}:{part}"


def _row(stored: bytes) -> dict[str, Any]:
    return RelationshipRecord.model_validate_json(stored).model_dump()


class RelationshipStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def load(self) -> None:
        await LIBRARY.load(self.redis)

    async def ready(self) -> None:
        await LIBRARY.require_loaded(self.redis)

    async def apply_command(
        self,
        input_id: str,
        fingerprint: str,
        action: str,
        provider_id: str,
        recipient_id: str,
        refusal: str,
        kinship: str,
        recipient_region: str,
        recipient_generation: int,
        provider_generation: int,
        version: int,
        now: str,
        seen: SeenIds,
    ) -> Step[RelationshipStep]:
        return await call_step(
            self.redis,
            COMMAND.call(
                **seen.of(_key(provider_id, "seen:commands")),
                rels_key=_key(provider_id, "rels"),
                versions_key=_key(provider_id, "versions"),
                enrollment_key=_key(provider_id, "enrollment"),
                generations_key=_key(provider_id, "recipient-generations"),
                input_id=input_id,
                fingerprint=fingerprint,
                action=action,
                recipient=recipient_id,
                refusal=refusal,
                kinship=kinship,
                recipient_region=recipient_region,
                recipient_generation=recipient_generation,
                provider_generation=provider_generation,
                version=version,
                now=now,
            ),
        )

    async def command_seen(self, provider_id: str, input_id: str) -> bool:
        """Whether the command's id is held, in either generation of seen ids."""
        seen_key = _key(provider_id, "seen:commands")
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in SeenIds.keys_of(seen_key):
                pipe.hexists(key, input_id)
            return any(await execute(pipe))

    async def record_enrollment(
        self, input_id: str, fingerprint: str, person_id: str, enrollment: Enrollment, now: str, seen: SeenIds
    ) -> Step[EnrollmentStep]:
        return await call_step(
            self.redis,
            RECORD_ENROLLMENT.call(
                **seen.of(_key(person_id, "seen:enrollment")),
                enrollment_key=_key(person_id, "enrollment"),
                rels_key=_key(person_id, "rels"),
                versions_key=_key(person_id, "versions"),
                providers_key=_key(person_id, "providers"),
                input_id=input_id,
                fingerprint=fingerprint,
                insurance_type=enrollment.insurance_type,
                region=enrollment.region,
                status=enrollment.status,
                now=now,
            ),
        )

    async def end_relationship(
        self, provider_id: str, recipient_id: str, generation: int, seen: SeenIds
    ) -> Step[RelationshipStep]:
        """Rule 7 from the recipient's side, once per (recipient, generation): kept as seen ids are,
        since it is asked again only while the enrollment change that asks it can come again."""
        return await call_step(
            self.redis,
            END.call(
                **seen.of(_key(provider_id, "terminations")),
                rels_key=_key(provider_id, "rels"),
                versions_key=_key(provider_id, "versions"),
                generations_key=_key(provider_id, "recipient-generations"),
                recipient=recipient_id,
                generation=generation,
            ),
        )

    async def record_kinship(
        self, input_id: str, fingerprint: str, person_id: str, relative_id: str, kinship: str, seen: SeenIds
    ) -> Step[Recorded]:
        return await call_step(
            self.redis,
            RECORD_KINSHIP.call(
                **seen.of(_key(person_id, "seen:kinship")),
                kinship_key=_key(person_id, "kinship"),
                input_id=input_id,
                fingerprint=fingerprint,
                relative=relative_id,
                kinship=kinship,
            ),
        )

    async def index_provider(self, provider_id: str, recipient_id: str, version: int, state: str) -> None:
        """Keeps the recipient's index of providers, used to end them when the recipient's insurance
        changes; an update older than the index's holds nothing."""
        await INDEX_PROVIDER.call(
            providers_key=_key(recipient_id, "providers"), provider=provider_id, version=version, state=state
        ).on(self.redis)

    async def expect_provider(self, provider_id: str, recipient_id: str) -> None:
        await EXPECT_PROVIDER.call(providers_key=_key(recipient_id, "providers"), provider=provider_id).on(self.redis)

    async def enrollment(self, person_id: str) -> Enrollment | None:
        values = await self.redis.hmget(
            _key(person_id, "enrollment"), "insurance_type", "region", "status", "generation"
        )
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
        stored = RelationshipRecord.model_validate_json(raw)
        return Relationship(stored.state, stored.recipient_region, stored.recipient_generation, int(version or 0))

    async def recorded_kinship(self, person_id: str, relative_id: str) -> str | None:
        """What the civil registry says `relative_id` is to `person_id`, by `person_id`'s own facts."""
        value = await self.redis.hget(_key(person_id, "kinship"), relative_id)
        return value.decode() if value else None

    async def relationships_of(self, person_id: str) -> list[dict[str, Any]]:
        """Both directions: where the person provides, and where they receive."""
        rows = []
        for recipient_id, raw in (await self.redis.hgetall(_key(person_id, "rels"))).items():
            rows.append({"provider_id": person_id, "recipient_id": recipient_id.decode(), **_row(raw)})
        for provider_id in await self.redis.hkeys(_key(person_id, "providers")):
            raw = await self.redis.hget(_key(provider_id.decode(), "rels"), person_id)
            if raw:
                rows.append({"provider_id": provider_id.decode(), "recipient_id": person_id, **_row(raw)})
        return rows
