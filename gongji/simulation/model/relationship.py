"""The model of the relationship service: enrollment, kinship, relationships."""

from __future__ import annotations

from gongji.simulation.model.base import WALLET_RELEVANT, ModelBase, RelEnrollment, require
from shared.contracts import (
    EnrollmentChanged,
    KinshipRecorded,
    ReasonCode,
    RelationshipCommand,
    RelationshipEvent,
)


class RelationshipModel(ModelBase):
    # ---- relationship ---------------------------------------------------------------------

    def _relationship_enrollment(self, change: EnrollmentChanged, group: list) -> None:
        effects = self._decided("relationship/enrollment", change.person_id, change.event_id, change, group)
        if effects is None:
            return
        person = change.person_id
        before = self.rel_enrollment.get(person)
        facts = (change.insurance_type, change.region, change.status)
        changed = before is None or (before.insurance_type, before.region, before.status) != facts
        generation = (before.generation if before else 0) + (1 if changed else 0)
        self.rel_enrollment[person] = RelEnrollment(*facts, generation)
        ending = (
            {pair for pair, held in self.pairs.items() if held.state != "none" and person in pair}
            if changed and before
            else set()
        )
        ended = {(e.provider_id, e.recipient_id) for e in effects}
        require(
            all(e.type == "terminated" and e.reason == ReasonCode.INSURANCE_CHANGED for e in effects)
            and ended == ending,
            "rule-7",
            lambda: (
                f"enrollment {change.event_id} of {self.a(person)} ended "
                f"{sorted(f'{self.a(p)}>{self.a(r)}' for p, r in ended)}, books: "
                f"{sorted(f'{self.a(p)}>{self.a(r)}' for p, r in ending)} must end"
            ),
        )
        for event in effects:
            self._change(event, "none")

    def _relationship_kinship(self, fact: KinshipRecorded, group: list) -> None:
        effects = self._decided("relationship/kinship", fact.person_id, fact.event_id, fact, group)
        require(not effects, "answer", f"kinship {fact.event_id}: {effects}")

    def _change(self, event: RelationshipEvent, state: str) -> None:
        pair = self.pairs[(event.provider_id, event.recipient_id)]
        require(
            event.version == pair.version + 1,
            "pair-version",
            lambda: (
                f"{event.type} {self.a(event.provider_id)}>{self.a(event.recipient_id)} has version "
                f"{event.version}; the pair was at {pair.version}"
            ),
        )
        pair.version, pair.state = event.version, state  # type: ignore[assignment]
        if event.type in WALLET_RELEVANT:
            pair.wallet_version = pair.version

    def _eligible(self, provider: str, recipient: str, region: str) -> bool:
        """Rules 3, 4 as the relationship service knows both parties (policy may race: the wallet holds it at grant)."""
        p, r = self.rel_enrollment.get(provider), self.rel_enrollment.get(recipient)
        return (
            p is not None
            and p.insurance_type == "employee"
            and p.status == "normal"
            and r is not None
            and r.status == "normal"
            and r.region == region
        )

    def _relationship_commands(self, command: RelationshipCommand, group: list) -> None:
        effects = self._decided("relationship/commands", command.provider_id, command.command_id, command, group)
        if effects is None:
            return
        provider, recipient = command.provider_id, command.recipient_id
        pair = self.pairs[(provider, recipient)]
        between = f"{self.a(provider)}>{self.a(recipient)}"
        what = f"{command.action} {command.command_id} {between} by {self.a(command.actor_id)}"
        types = [event.type for event in effects]
        require(
            types
            in (["requested"], ["established"], ["declined"], ["dissolved"], ["rejected"], ["rejected", "terminated"]),
            "answer",
            f"{what}: {types}",
        )
        first = effects[0]
        if first.type == "rejected":
            require(first.version is None, "pair-version", f"{what}: a refusal carries version {first.version}")
            if len(effects) == 2:
                require(pair.state == "pending", "relationship-decision", f"{what}: ended a {pair.state} request")
                self._change(effects[1], "none")
            return
        recipient_now = self.rel_enrollment.get(recipient)
        allowed = {
            "requested": command.action == "request"
            and command.actor_id == provider
            and pair.state == "none"
            and self._eligible(provider, recipient, command.recipient_region or ""),
            "established": command.action == "accept"
            and command.actor_id == recipient
            and pair.state == "pending"
            and recipient_now is not None
            and recipient_now.generation == pair.request_generation
            and self._eligible(provider, recipient, pair.region),
            "declined": command.action == "decline" and command.actor_id == recipient and pair.state == "pending",
            "dissolved": command.action == "dissolve"
            and command.actor_id in (provider, recipient)
            and pair.state != "none",
        }[first.type]
        require(
            allowed,
            "relationship-decision",
            lambda: (
                f"{what}: {first.type}, books: pair {pair.state}, provider {self.rel_enrollment.get(provider)}, "
                f"recipient {recipient_now}, requested for {pair.region} at generation {pair.request_generation}"
            ),
        )
        if first.type == "requested":
            pair.region = command.recipient_region or ""
            pair.request_generation = recipient_now.generation if recipient_now else 0
        self._change(first, {"requested": "pending", "established": "active"}.get(first.type, "none"))
