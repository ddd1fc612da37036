"""Rules 1–7 as pure decisions: one test per refusal, in the order the service applies them."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from services.relationship.domain import (
    INVERSE,
    Enrollment,
    Facts,
    Relationship,
    check_accept,
    check_actor,
    check_request,
    registry_kinship,
)
from shared.contracts import Kinship, ReasonCode, RelationshipCommand
from shared.ids import make_person_id
from shared.policy import Policy

PROVIDER = make_person_id("110101", "19600101", 1)
RECIPIENT = make_person_id("310101", "19900101", 2)
OTHER = make_person_id("120101", "19700101", 3)
AFTER = datetime.fromisoformat("2026-01-09T00:00:00+08:00")
BEFORE = datetime.fromisoformat("2026-01-08T23:59:59+08:00")
EMPLOYEE = Enrollment("employee", "440300", "normal")
RESIDENT_SICHUAN = Enrollment("resident", "510100", "normal")
GOOD = Facts(EMPLOYEE, RESIDENT_SICHUAN, "parent")
REQUESTED = Relationship("pending", "510100", recipient_generation=0, version=1)


def command(action: str = "request", actor: str = PROVIDER, **fields) -> RelationshipCommand:
    values = {
        "command_id": "c",
        "action": action,
        "actor_id": actor,
        "provider_id": PROVIDER,
        "recipient_id": RECIPIENT,
        "recipient_region": "510100",
        "kinship": "parent",
        "requested_at": "2026-03-02T10:00:00+08:00",
    } | fields
    return RelationshipCommand.model_validate(values)


def test_a_valid_cross_province_request_after_2026_01_09_passes() -> None:
    assert check_request(command(), GOOD, Policy(), AFTER) is None


def test_cross_province_is_refused_before_2026_01_09_but_in_province_is_not() -> None:
    assert check_request(command(), GOOD, Policy(), BEFORE) == ReasonCode.CROSS_PROVINCE_NOT_IN_FORCE
    same_province = Facts(EMPLOYEE, Enrollment("resident", "440100", "normal"), "parent")
    assert check_request(command(recipient_region="440100"), same_province, Policy(), BEFORE) is None


def test_the_date_in_force_is_configuration() -> None:
    assert (
        check_request(command(), GOOD, Policy(cross_province_since=date(2027, 1, 1)), AFTER)
        == ReasonCode.CROSS_PROVINCE_NOT_IN_FORCE
    )


@pytest.mark.parametrize("closed", ["440300", "44", "510100", "51"])
def test_both_regions_need_the_wallet_opened(closed: str) -> None:
    assert (
        check_request(command(), GOOD, Policy(closed_regions=frozenset({closed})), AFTER)
        == ReasonCode.REGION_WALLET_CLOSED
    )


def test_only_the_provider_may_request() -> None:
    assert check_request(command(actor=RECIPIENT), GOOD, Policy(), AFTER) == ReasonCode.NOT_AUTHORIZED


def test_not_oneself() -> None:
    assert check_request(command(recipient_id=PROVIDER), GOOD, Policy(), AFTER) == ReasonCode.SELF_RELATIONSHIP


@pytest.mark.parametrize("kinship", ["cousin", "uncle", "friend", "parent_in_law"])
def test_close_relatives_only(kinship: str) -> None:
    assert check_request(command(kinship=kinship), GOOD, Policy(), AFTER) == ReasonCode.NOT_CLOSE_RELATIVE


@pytest.mark.parametrize("kinship", [k.value for k in Kinship])
def test_every_close_relative_is_accepted_when_the_registry_backs_it(kinship: str) -> None:
    facts = Facts(EMPLOYEE, RESIDENT_SICHUAN, kinship)
    assert check_request(command(kinship=kinship), facts, Policy(), AFTER) is None


def test_kinship_must_be_backed_by_the_registry_as_stated() -> None:
    assert (
        check_request(command(), Facts(EMPLOYEE, RESIDENT_SICHUAN, None), Policy(), AFTER)
        == ReasonCode.KINSHIP_UNVERIFIED
    )
    assert (
        check_request(command(), Facts(EMPLOYEE, RESIDENT_SICHUAN, "sibling"), Policy(), AFTER)
        == ReasonCode.KINSHIP_UNVERIFIED
    )


@pytest.mark.parametrize(
    ("provider", "reason"),
    [
        (None, ReasonCode.PROVIDER_NOT_EMPLOYEE),
        (Enrollment("resident", "440300", "normal"), ReasonCode.PROVIDER_NOT_EMPLOYEE),
        (Enrollment("employee", "440300", "suspended"), ReasonCode.PROVIDER_STATUS_ABNORMAL),
        (Enrollment("employee", "440300", "terminated"), ReasonCode.PROVIDER_STATUS_ABNORMAL),
    ],
)
def test_the_provider_is_employee_insured_with_normal_status(provider, reason) -> None:
    assert check_request(command(), Facts(provider, RESIDENT_SICHUAN, "parent"), Policy(), AFTER) == reason


@pytest.mark.parametrize(
    ("recipient", "reason"),
    [
        (None, ReasonCode.RECIPIENT_NOT_INSURED),
        (Enrollment("resident", "510100", "suspended"), ReasonCode.RECIPIENT_STATUS_ABNORMAL),
        (Enrollment("employee", "510100", "terminated"), ReasonCode.RECIPIENT_STATUS_ABNORMAL),
        (Enrollment("resident", "510700", "normal"), ReasonCode.RECIPIENT_MISMATCH),
    ],
)
def test_the_recipient_is_insured_normal_and_where_stated(recipient, reason) -> None:
    assert check_request(command(), Facts(EMPLOYEE, recipient, "parent"), Policy(), AFTER) == reason


def test_either_kind_of_insurance_may_receive() -> None:
    employee_recipient = Facts(EMPLOYEE, Enrollment("employee", "510100", "normal"), "parent")
    assert check_request(command(), employee_recipient, Policy(), AFTER) is None


def test_who_may_act() -> None:
    assert check_actor(command("accept", actor=RECIPIENT)) is None
    assert check_actor(command("accept", actor=PROVIDER)) == ReasonCode.NOT_AUTHORIZED
    assert check_actor(command("decline", actor=RECIPIENT)) is None
    assert check_actor(command("dissolve", actor=PROVIDER)) is None
    assert check_actor(command("dissolve", actor=RECIPIENT)) is None
    assert check_actor(command("dissolve", actor=OTHER)) == ReasonCode.NOT_AUTHORIZED


def test_acceptance_rechecks_eligibility() -> None:
    suspended = Facts(EMPLOYEE, Enrollment("resident", "510100", "suspended"), "parent")
    assert check_accept(command("accept", actor=RECIPIENT), GOOD, REQUESTED, Policy(), AFTER) is None
    assert (
        check_accept(command("accept", actor=RECIPIENT), suspended, REQUESTED, Policy(), AFTER)
        == ReasonCode.RECIPIENT_STATUS_ABNORMAL
    )


def test_acceptance_compares_the_recipients_region_with_the_region_of_the_request() -> None:
    moved = Facts(EMPLOYEE, Enrollment("resident", "510700", "normal"), "parent")
    assert (
        check_accept(command("accept", actor=RECIPIENT), moved, REQUESTED, Policy(), AFTER)
        == ReasonCode.RECIPIENT_MISMATCH
    )


def test_acceptance_refuses_when_the_recipients_insurance_changed_since_the_request() -> None:
    changed = Facts(EMPLOYEE, Enrollment("resident", "510100", "normal", generation=1), "parent")
    assert (
        check_accept(command("accept", actor=RECIPIENT), changed, REQUESTED, Policy(), AFTER)
        == ReasonCode.INSURANCE_CHANGED
    )


def test_only_a_pending_request_can_be_accepted() -> None:
    active = Relationship("active", "510100", recipient_generation=0, version=2)
    for relationship in (None, active):
        assert (
            check_accept(command("accept", actor=RECIPIENT), GOOD, relationship, Policy(), AFTER)
            == ReasonCode.RELATIONSHIP_NOT_ACTIVE
        )


def test_the_generation_counts_changes_but_is_no_part_of_the_enrollment() -> None:
    assert not EMPLOYEE.differs_from(Enrollment("employee", "440300", "normal", generation=7))


@pytest.mark.parametrize(
    ("providers_fact", "recipients_fact", "kinship"),
    [
        ("parent", None, "parent"),  # recorded by the provider: the recipient is their parent
        (None, "child", "parent"),  # recorded by the recipient: the provider is their child
        ("parent", "child", "parent"),  # both sides agree
        ("parent", "sibling", None),  # both sides disagree: neither is trusted
        (None, None, None),
    ],
)
def test_the_registry_may_be_recorded_from_either_side_and_the_sides_must_agree(
    providers_fact, recipients_fact, kinship
) -> None:
    assert registry_kinship(providers_fact, recipients_fact) == kinship


def test_kinship_inverse_is_an_involution() -> None:
    for kinship, inverse in INVERSE.items():
        assert INVERSE[inverse] == kinship


def test_any_change_of_type_region_or_status_is_an_insurance_change() -> None:
    assert EMPLOYEE.differs_from(Enrollment("resident", "440300", "normal"))
    assert EMPLOYEE.differs_from(Enrollment("employee", "440100", "normal"))
    assert EMPLOYEE.differs_from(Enrollment("employee", "440300", "suspended"))
    assert not EMPLOYEE.differs_from(Enrollment("employee", "440300", "normal"))
