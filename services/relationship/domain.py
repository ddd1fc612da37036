"""Who may share with whom (rules 1–7): pure decisions, no Kafka or Redis."""

from __future__ import annotations

from dataclasses import dataclass
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

    def differs_from(self, other: "Enrollment") -> bool:
        """Rule 7: a change of type, region or status is an insurance-relationship change."""
        return self != other


@dataclass(frozen=True)
class Facts:
    """What the service knows when it decides a command: both parties' enrollment and the
    civil-registry kinship of the recipient to the provider (None when no fact is recorded)."""

    provider: Enrollment | None
    recipient: Enrollment | None
    recorded_kinship: str | None


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


def check_accept(command: RelationshipCommand, facts: Facts, policy: Policy, now: datetime) -> ReasonCode | None:
    """Acceptance re-checks eligibility: the world may have changed since the request."""
    if reason := check_actor(command):
        return reason
    recipient_region = facts.recipient.region if facts.recipient else ""
    return check_eligibility(command.provider_id, command.recipient_id, recipient_region, facts, policy, now)
