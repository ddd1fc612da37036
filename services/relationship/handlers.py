"""Relationship service: contract in, decisions (via the store's atomic steps) out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from services.relationship.domain import INVERSE, Enrollment, Facts, check_accept, check_actor, check_request
from services.relationship.store import RelationshipStore
from shared.clock import Clock, rfc3339
from shared.concurrency import gather_by_key
from shared.contracts import EnrollmentChanged, KinshipRecorded, ReasonCode, RelationshipCommand, RelationshipEvent
from shared.ids import derived_event_id, fingerprint, mask_person_id
from shared.policy import PolicyCache
from shared.runtime import CONFLICTS

logger = logging.getLogger("gongji.relationship")


def _event(cause_id: str, step_result: dict, provider_id: str, recipient_id: str, **fields) -> RelationshipEvent:
    event_type = fields.pop("type", None) or step_result["type"]
    return RelationshipEvent(
        event_id=derived_event_id("relationship", cause_id, provider_id, recipient_id, event_type),
        cause_id=cause_id,
        type=event_type,
        provider_id=provider_id,
        recipient_id=recipient_id,
        recipient_region=step_result.get("recipient_region"),
        kinship=step_result.get("kinship"),
        reason=step_result.get("reason"),
        occurred_at=datetime.fromisoformat(step_result["at"]),
        **fields,
    )


def _conflict_event(command: RelationshipCommand, content: str, now: datetime) -> RelationshipEvent:
    """The refusal of a command whose id was used before for other content; nothing changed."""
    return RelationshipEvent(
        event_id=derived_event_id("relationship", command.command_id, "conflict", content),
        cause_id=command.command_id,
        type="rejected",
        provider_id=command.provider_id,
        recipient_id=command.recipient_id,
        kinship=command.kinship,
        reason=ReasonCode.CONFLICT,
        occurred_at=now,
    )


class RelationshipHandlers:
    """Each `on_*` takes a batch: messages of one key in order, different keys concurrently."""

    def __init__(self, store: RelationshipStore, policy: PolicyCache, clock: Clock) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    async def _facts(self, provider_id: str, recipient_id: str) -> Facts:
        return Facts(
            provider=await self.store.enrollment(provider_id),
            recipient=await self.store.enrollment(recipient_id),
            recorded_kinship=await self.store.recorded_kinship(provider_id, recipient_id),
        )

    async def on_commands(self, commands: Sequence[RelationshipCommand]) -> list[RelationshipEvent]:
        return await gather_by_key(commands, lambda command: command.provider_id, self._command)

    async def _command(self, command: RelationshipCommand) -> list[RelationshipEvent]:
        now = self.clock.now()
        if command.action == "request":
            refusal = check_request(command, await self._facts(command.provider_id, command.recipient_id),
                                    await self.policy.get(), now)
        elif command.action == "accept":
            refusal = check_accept(command, await self._facts(command.provider_id, command.recipient_id),
                                   await self.policy.get(), now)
        else:
            refusal = check_actor(command)
        content = fingerprint(command.model_dump_json())
        step = await self.store.apply_command(
            command.command_id, content, command.action, command.provider_id, command.recipient_id,
            refusal or "", command.kinship or "", command.recipient_region or "", rfc3339(now),
        )
        if step.conflict:
            CONFLICTS.labels("relationship", "relationship-commands").inc()
            return [_conflict_event(command, content, now)]
        await self.store.index_incoming(command.provider_id, command.recipient_id, step.result["index"])
        return [_event(command.command_id, step.result, command.provider_id, command.recipient_id)]

    async def on_enrollment(self, changes: Sequence[EnrollmentChanged]) -> list[RelationshipEvent]:
        return await gather_by_key(changes, lambda change: change.person_id, self._enrollment)

    async def _enrollment(self, change: EnrollmentChanged) -> list[RelationshipEvent]:
        """Rule 7: a change of insurance type, region or status ends all the person's relationships."""
        enrollment = Enrollment(change.insurance_type, change.region, change.status)
        step = await self.store.record_enrollment(
            change.event_id, fingerprint(change.model_dump_json()), change.person_id, enrollment,
            rfc3339(self.clock.now()),
        )
        if step.conflict:
            CONFLICTS.labels("relationship", "enrollment").inc()
            logger.warning("enrollment %s refused: CONFLICT (same event_id, other content)", change.event_id)
            return []
        if not step.result["changed"]:
            return []
        logger.info("insurance of %s changed: ending its relationships", mask_person_id(change.person_id))
        ended = {"type": "terminated", "reason": ReasonCode.INSURANCE_CHANGED, "at": step.result["at"]}
        events = []
        for relationship in step.result["ended_as_provider"] or []:
            recipient_id = relationship["recipient_id"]
            await self.store.index_incoming(change.person_id, recipient_id, "remove")
            events.append(_event(change.event_id, {**ended, **relationship}, change.person_id, recipient_id))
        for provider_id in step.result["providers"] or []:
            ending = await self.store.end_relationship(
                f"{change.event_id}/{change.person_id}", provider_id, change.person_id, step.result["at"]
            )
            if ending.result["ended"]:
                events.append(_event(change.event_id, {**ended, **ending.result, "at": step.result["at"]},
                                     provider_id, change.person_id))
        return events

    async def on_kinship(self, facts: Sequence[KinshipRecorded]) -> list[RelationshipEvent]:
        return await gather_by_key(facts, lambda fact: fact.person_id, self._kinship)

    async def _kinship(self, fact: KinshipRecorded) -> list[RelationshipEvent]:
        step = await self.store.record_kinship(
            fact.event_id, fingerprint(fact.model_dump_json()), fact.person_id, fact.relative_id,
            fact.kinship.value, INVERSE[fact.kinship].value,
        )
        if step.conflict:
            CONFLICTS.labels("relationship", "kinship").inc()
            logger.warning("kinship fact %s refused: CONFLICT (same event_id, other content)", fact.event_id)
        return []
