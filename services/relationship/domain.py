"""Who may share with whom (rules 1–7): pure decisions, no Kafka or Redis."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shared.contracts import Kinship, ReasonCode, RelationshipCommand
from shared.ids import province_of
from shared.policy import Policy

CLOSE_RELATIVES: frozenset[str] = frozenset(kinship.value for kinship in Kinship)

# If B is A's `k`, then A is B's `INVERSE[k]`.
INVERSE: dict[Kinship, Kinship] = {
    Kinship.SPOUSE: Kinship.SPOUSE,
    Kinship.SIBLING: Kinship.SIBLING,
    Kinship.PARENT: Kinship.CHILD,
    Kinship.CHILD: Kinship.PARENT,
    Kinship.GRANDPARENT: Kinship.GRANDCHILD,
    Kinship.GRANDCHILD: Kinship.GRANDPARENT,
    Kinship.MATERNAL_GRANDPARENT: Kinship.MATERNAL_GRANDCHILD,
    Kinship.MATERNAL_GRANDCHILD: Kinship.MATERNAL_GRANDPARENT,
}


@dataclass(frozen=True)
class Enrollment:
    insurance_type: str
    region: str
    status: str
    # How many times type, region or status changed: a decision made on generation g is stale once
    # the person is at another. It counts changes; it is not itself part of the enrollment.
    generation: int = field(default=0, compare=False)

    def differs_from(self, other: Enrollment) -> bool:
        """Rule 7: a change of type, region or status is an insurance-relationship change."""
        return self != other


def generation_of(enrollment: Enrollment | None) -> int:
    return enrollment.generation if enrollment else 0


@dataclass(frozen=True)
class Facts:
    """What the service knows when it decides a command: both parties' enrollment and the
    civil-registry kinship of the recipient to the provider (None when unverified: see
    `registry_kinship`)."""

    provider: Enrollment | None
    recipient: Enrollment | None
    recorded_kinship: str | None


@dataclass(frozen=True)
class Relationship:
    """A (provider, recipient) pair as stored: its state, what the request recorded, and the pair's
    version (one more at each change of the pair)."""

    state: str  # pending | active
    recipient_region: str
    recipient_generation: int  # the recipient's enrollment generation the request was decided on
    version: int


def registry_kinship(providers_fact: str | None, recipients_fact: str | None) -> str | None:
    """Rule 2: what the civil registry says the recipient is to the provider. A fact may be recorded
    by either side (the recipient's, about the provider, is inverted); each side's fact is its own
    latest, so no side can overwrite the other's. Two sides that disagree verify nothing."""
    inverted = INVERSE[Kinship(recipients_fact)].value if recipients_fact else None
    if providers_fact and inverted and providers_fact != inverted:
        return None
    return providers_fact or inverted


def check_actor(command: RelationshipCommand) -> ReasonCode | None:
    """`request` comes from the provider, `accept`/`decline` from the recipient, `dissolve` from either."""
    allowed = {
        "request": {command.provider_id},
        "accept": {command.recipient_id},
        "decline": {command.recipient_id},
        "dissolve": {command.provider_id, command.recipient_id},
    }[command.action]
    return None if command.actor_id in allowed else ReasonCode.NOT_AUTHORIZED


def check_eligibility(
    provider_id: str, recipient_id: str, recipient_region: str, facts: Facts, policy: Policy, now: datetime
) -> ReasonCode | None:
    """Rules 1, 3 and 4, judged at processing time: both parties' insurance and regions."""
    provider, recipient = facts.provider, facts.recipient
    if provider is None or provider.insurance_type != "employee":
        return ReasonCode.PROVIDER_NOT_EMPLOYEE
    if provider.status != "normal":
        return ReasonCode.PROVIDER_STATUS_ABNORMAL
    if recipient is None:
        return ReasonCode.RECIPIENT_NOT_INSURED
    if recipient.status != "normal":
        return ReasonCode.RECIPIENT_STATUS_ABNORMAL
    if recipient.region != recipient_region:
        return ReasonCode.RECIPIENT_MISMATCH
    if not (policy.wallet_open(provider.region) and policy.wallet_open(recipient.region)):
        return ReasonCode.REGION_WALLET_CLOSED
    if province_of(provider.region) != province_of(recipient.region) and not policy.cross_province_in_force(now):
        return ReasonCode.CROSS_PROVINCE_NOT_IN_FORCE
    return None


def check_request(command: RelationshipCommand, facts: Facts, policy: Policy, now: datetime) -> ReasonCode | None:
    """Every refusal of a `request` except a duplicate, which the store decides atomically."""
    if reason := check_actor(command):
        return reason
    if command.provider_id == command.recipient_id:
        return ReasonCode.SELF_RELATIONSHIP
    if command.kinship not in CLOSE_RELATIVES:
        return ReasonCode.NOT_CLOSE_RELATIVE
    if facts.recorded_kinship != command.kinship:
        return ReasonCode.KINSHIP_UNVERIFIED
    assert command.recipient_region is not None  # the contract requires it for a request
    return check_eligibility(command.provider_id, command.recipient_id, command.recipient_region, facts, policy, now)


def check_accept(
    command: RelationshipCommand, facts: Facts, requested: Relationship | None, policy: Policy, now: datetime
) -> ReasonCode | None:
    """Acceptance re-checks eligibility against what the request recorded: the world may have
    changed since. A recipient whose insurance changed since the request is refused, whatever it
    changed to (rule 7 ends the request); the store ends it."""
    if reason := check_actor(command):
        return reason
    if requested is None or requested.state != "pending":
        return ReasonCode.RELATIONSHIP_NOT_ACTIVE
    if generation_of(facts.recipient) != requested.recipient_generation:
        return ReasonCode.INSURANCE_CHANGED
    return check_eligibility(command.provider_id, command.recipient_id, requested.recipient_region, facts, policy, now)
