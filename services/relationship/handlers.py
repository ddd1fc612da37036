"""Relationship service: contract in, decisions (via the store's atomic steps) out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from services.relationship.domain import (
    Enrollment,
    Facts,
    Relationship,
    check_accept,
    check_actor,
    check_request,
    generation_of,
    registry_kinship,
)
from services.relationship.store import RelationshipStore
from shared.clock import Clock, rfc3339
from shared.concurrency import gather_by_key
from shared.contracts import EnrollmentChanged, KinshipRecorded, ReasonCode, RelationshipCommand, RelationshipEvent
from shared.ids import derived_event_id, fingerprint, mask_person_id
from shared.policy import PolicyCache
from shared.records import EndedAsProvider, RelationshipStep
from shared.runtime import CONFLICTS, Refused
from shared.settings import Settings
from shared.topics import ENROLLMENT, KINSHIP, RELATIONSHIP_COMMANDS, Topic
from shared.window import InputWindow

SERVICE = "relationship"

logger = logging.getLogger("gongji.relationship")


def _event_id(topic: Topic, scope: str, input_id: str, *distinguishing: str) -> str:
    """An input id is unique only for its topic and scope (the person whose id space it is in);
    `distinguishing` tells one input's several outputs apart."""
    return derived_event_id(SERVICE, topic.name, scope, input_id, *distinguishing)


def _event(
    event_id: str,
    cause_id: str,
    event_type: str,
    pair: RelationshipStep | EndedAsProvider,
    provider_id: str,
    recipient_id: str,
    reason: str | None,
    at: str,
) -> RelationshipEvent:
    return RelationshipEvent(
        event_id=event_id,
        cause_id=cause_id,
        type=event_type,
        provider_id=provider_id,
        recipient_id=recipient_id,
        recipient_region=pair.recipient_region,
        kinship=pair.kinship,
        reason=reason,
        # A refusal reports no change of the pair; every other event reports the pair's new version.
        version=None if event_type == "rejected" else pair.version,
        occurred_at=datetime.fromisoformat(at),
    )


def _unapplied(command: RelationshipCommand, content: str, reason: ReasonCode, now: datetime) -> RelationshipEvent:
    """The refusal of a command that is not applied at all: its id was used before for other content
    (CONFLICT), or it is outside its window (INPUT_TOO_OLD, INVALID_MESSAGE). Nothing changed."""
    if reason == ReasonCode.CONFLICT:
        CONFLICTS.labels(SERVICE, RELATIONSHIP_COMMANDS.name).inc()
    return RelationshipEvent(
        event_id=_event_id(RELATIONSHIP_COMMANDS, command.provider_id, command.command_id, reason.lower(), content),
        cause_id=command.command_id,
        type="rejected",
        provider_id=command.provider_id,
        recipient_id=command.recipient_id,
        kinship=command.kinship,
        reason=reason,
        occurred_at=now,
    )


def _refused_as_conflict(topic: Topic, message: EnrollmentChanged | KinshipRecorded) -> Refused:
    """Enrollment and kinship have no event stream of their own: the refusal is a dead letter."""
    CONFLICTS.labels(SERVICE, topic.name).inc()
    return Refused(
        message, ReasonCode.CONFLICT, f"event_id {message.event_id!r} was used before on {topic.name} for other content"
    )


class RelationshipHandlers:
    """Each `on_*` takes a batch: messages of one key in order, different keys concurrently."""

    def __init__(
        self, store: RelationshipStore, policy: PolicyCache, clock: Clock, inputs: InputWindow | None = None
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.inputs = inputs or InputWindow.from_settings(Settings())

    async def _facts(self, provider_id: str, recipient_id: str) -> Facts:
        return Facts(
            provider=await self.store.enrollment(provider_id),
            recipient=await self.store.enrollment(recipient_id),
            recorded_kinship=registry_kinship(
                await self.store.recorded_kinship(provider_id, recipient_id),
                await self.store.recorded_kinship(recipient_id, provider_id),
            ),
        )

    async def on_commands(self, commands: Sequence[RelationshipCommand]) -> list[RelationshipEvent]:
        return await gather_by_key(commands, lambda command: command.provider_id, self._command)

    async def _decide(
        self, command: RelationshipCommand, now: datetime
    ) -> tuple[Facts, Relationship | None, ReasonCode | None]:
        """What the command is decided on (the facts, the pending request), and its refusal if any."""
        provider_id, recipient_id = command.provider_id, command.recipient_id
        if command.action == "request":
            facts = await self._facts(provider_id, recipient_id)
            refusal = check_request(command, facts, await self.policy.get(), now)
            if refusal is None and not await self.store.command_seen(provider_id, command.command_id):
                # Rule 7: index first, then read the recipient's enrollment the request is decided
                # on. A change before the index is in what is read; a change after it reaches the
                # provider's slot, which ends the request or, if the step has not come yet, makes
                # it refuse the stale request. Not for a redelivery, which must change nothing.
                await self.store.expect_provider(provider_id, recipient_id)
                facts = replace(facts, recipient=await self.store.enrollment(recipient_id))
                refusal = check_request(command, facts, await self.policy.get(), now)
            return facts, None, refusal
        if command.action == "accept":
            facts = await self._facts(provider_id, recipient_id)
            requested = await self.store.relationship(provider_id, recipient_id)
            return facts, requested, check_accept(command, facts, requested, await self.policy.get(), now)
        return Facts(None, None, None), None, check_actor(command)

    async def _command(self, command: RelationshipCommand) -> list[RelationshipEvent]:
        now = self.clock.now()
        content = fingerprint(command.model_dump_json())
        provider_id, recipient_id = command.provider_id, command.recipient_id
        # Outside its window nothing is read: its step answers it if its id is remembered, else refuses it.
        if refused := self.inputs.refused(command.requested_at, now):
            facts, requested, refusal = Facts(None, None, None), None, None
        else:
            facts, requested, refusal = await self._decide(command, now)
        step = await self.store.apply_command(
            command.command_id,
            content,
            command.action,
            provider_id,
            recipient_id,
            refusal or "",
            command.kinship or "",
            command.recipient_region or "",
            generation_of(facts.recipient),
            generation_of(facts.provider),
            requested.version if requested else 0,
            rfc3339(now),
            self.inputs.seen_ids(self.clock, refused),
        )
        if refused and step.outcome == "refused":
            return [_unapplied(command, content, refused[0], now)]
        if step.conflict:
            return [_unapplied(command, content, ReasonCode.CONFLICT, now)]
        result = step.result
        assert result is not None and result.type is not None and result.at is not None

        def answer(event_type: str) -> RelationshipEvent:
            event_id = _event_id(RELATIONSHIP_COMMANDS, provider_id, command.command_id, event_type)
            return _event(
                event_id, command.command_id, event_type, result, provider_id, recipient_id, result.reason, result.at
            )

        events = [answer(result.type)]
        if result.version is not None and result.state is not None:
            # Also on a redelivery: a crash may have come between the step and the index.
            await self.store.index_provider(provider_id, recipient_id, result.version, result.state)
            if result.type == "rejected":
                # The refusal ended the pending request (rule 7, see check_accept): that is a change too.
                events.append(answer("terminated"))
        return events

    async def on_enrollment(self, changes: Sequence[EnrollmentChanged]) -> list[RelationshipEvent | Refused]:
        return await gather_by_key(changes, lambda change: change.person_id, self._enrollment)

    async def _enrollment(self, change: EnrollmentChanged) -> list[RelationshipEvent | Refused]:
        """Rule 7: a change of insurance type, region or status ends all the person's relationships."""
        now = self.clock.now()
        refused = self.inputs.refused(change.occurred_at, now)
        person_id = change.person_id
        enrollment = Enrollment(change.insurance_type, change.region, change.status)
        step = await self.store.record_enrollment(
            change.event_id,
            fingerprint(change.model_dump_json()),
            person_id,
            enrollment,
            rfc3339(now),
            self.inputs.seen_ids(self.clock, refused),
        )
        if refused and step.outcome == "refused":
            return [Refused(change, *refused)]
        # Ended once per (recipient, generation), asked again on a redelivery, however late: a
        # crash may have come before the change reached every provider.
        seen = self.inputs.seen_ids(self.clock)
        if step.conflict:
            return [_refused_as_conflict(ENROLLMENT, change)]
        recorded = step.result
        assert recorded is not None
        if not recorded.changed:
            return []
        assert recorded.generation is not None  # a change raises it
        logger.info("insurance of %s changed: ending its relationships", mask_person_id(person_id))
        events: list[RelationshipEvent | Refused] = []

        def terminated(
            provider_id: str, recipient_id: str, pair: RelationshipStep | EndedAsProvider
        ) -> RelationshipEvent:
            event_id = _event_id(ENROLLMENT, person_id, change.event_id, provider_id, recipient_id)
            return _event(
                event_id,
                change.event_id,
                "terminated",
                pair,
                provider_id,
                recipient_id,
                ReasonCode.INSURANCE_CHANGED,
                recorded.at,
            )

        for pair in recorded.ended_as_provider:
            await self.store.index_provider(person_id, pair.recipient_id, pair.version, "ended")
            events.append(terminated(person_id, pair.recipient_id, pair))
        for provider_id in recorded.providers:
            ending = (await self.store.end_relationship(provider_id, person_id, recorded.generation, seen)).result
            assert ending is not None
            if ending.ended:
                assert ending.version is not None  # ending a pair raises its version
                await self.store.index_provider(provider_id, person_id, ending.version, "ended")
                events.append(terminated(provider_id, person_id, ending))
        return events

    async def on_kinship(self, facts: Sequence[KinshipRecorded]) -> list[Refused]:
        return await gather_by_key(facts, lambda fact: fact.person_id, self._kinship)

    async def _kinship(self, fact: KinshipRecorded) -> list[Refused]:
        # Only the person's own fact: the relative's side is read, inverted, when a request is checked.
        refused = self.inputs.refused(fact.occurred_at, self.clock.now())
        step = await self.store.record_kinship(
            fact.event_id,
            fingerprint(fact.model_dump_json()),
            fact.person_id,
            fact.relative_id,
            fact.kinship.value,
            self.inputs.seen_ids(self.clock, refused),
        )
        if refused and step.outcome == "refused":
            return [Refused(fact, *refused)]
        return [_refused_as_conflict(KINSHIP, fact)] if step.conflict else []
