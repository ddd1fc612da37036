"""The wire contract validates strictly: ids, regions, money, enums, required fields by kind."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from stdnum.cn import ric

from shared.contracts import AccountCredited, Claim, RelationshipCommand, SupervisionActed, WalletCommand
from shared.ids import PROVINCE_CODES, make_person_id, mask_person_id, validate_person_id, validate_region
from shared.money import MAX_AMOUNT_FEN, format_fen, yuan
from shared.topics import ALL_TOPICS

VALID_ID = make_person_id("110101", "19800101", 12)
birth_dates = st.dates().filter(lambda d: 1900 <= d.year <= 2025).map(lambda d: d.strftime("%Y%m%d"))
serials = st.integers(0, 999)


@given(birth_dates, serials)
def test_every_constructed_id_is_valid_and_a_wrong_check_character_is_refused(birth: str, serial: int) -> None:
    person_id = make_person_id("310101", birth, serial)
    assert validate_person_id(person_id) == person_id
    wrong = person_id[:-1] + ("0" if person_id[-1] != "0" else "1")
    with pytest.raises(ValueError, match="invalid resident ID"):
        validate_person_id(wrong)


def test_lower_case_x_is_refused() -> None:
    body = next(f"1101011980010101{n}" for n in range(10) if ric.calc_check_digit(f"1101011980010101{n}0") == "X")
    person_id = body + "X"
    assert validate_person_id(person_id) == person_id
    with pytest.raises(ValueError, match="upper-case X"):
        validate_person_id(body + "x")


@given(st.text(max_size=20))
def test_arbitrary_text_is_never_a_person_id(text: str) -> None:
    if len(text) == 18 and ric.is_valid(text) and ric.compact(text) == text:
        return
    with pytest.raises(ValueError):
        validate_person_id(text)


def test_masking_shows_first_six_and_last_four() -> None:
    assert mask_person_id(VALID_ID) == f"{VALID_ID[:6]}********{VALID_ID[-4:]}"


@pytest.mark.parametrize("province", sorted(PROVINCE_CODES))
def test_every_province_and_the_corps_are_regions(province: str) -> None:
    assert validate_region(f"{province}0100") == f"{province}0100"


@pytest.mark.parametrize("region", ["990100", "12345", "1234567", "44030a", "000000"])
def test_bad_regions_are_refused(region: str) -> None:
    with pytest.raises(ValueError):
        validate_region(region)


def _credit(amount: object) -> dict:
    return {"event_id": "e1", "person_id": VALID_ID, "amount_fen": amount, "occurred_at": "2026-03-02T10:15:00+08:00"}


@given(st.integers(min_value=1, max_value=MAX_AMOUNT_FEN))
def test_positive_integer_fen_is_money(amount: int) -> None:
    assert AccountCredited.model_validate(_credit(amount)).amount_fen == amount


@pytest.mark.parametrize("amount", [MAX_AMOUNT_FEN + 1, 10**15 + 1, 2**63, 2**64 + 5])
def test_money_above_the_bound_is_refused(amount: int) -> None:
    with pytest.raises(ValidationError, match="less than or equal"):
        AccountCredited.model_validate_json(json.dumps(_credit(amount)))


@pytest.mark.parametrize(
    "when", [1772417700, 1772417700.5, "1772417700", "2026-03-02", "yesterday", "2026-03-02T10:15:00"]
)
def test_a_time_is_an_rfc3339_string_with_an_offset(when: object) -> None:
    with pytest.raises(ValidationError, match="RFC 3339"):
        AccountCredited.model_validate_json(json.dumps({**_credit(100), "occurred_at": when}))


@pytest.mark.parametrize("amount", [0, -1, 1.5, 100.0, "100", True, None])
def test_money_that_is_not_a_positive_integer_is_refused(amount: object) -> None:
    with pytest.raises(ValidationError):
        AccountCredited.model_validate_json(json.dumps(_credit(amount)))


def test_a_time_without_offset_is_refused() -> None:
    with pytest.raises(ValidationError):
        AccountCredited.model_validate({**_credit(100), "occurred_at": "2026-03-02T10:15:00"})


def test_unknown_fields_are_ignored_so_senders_may_add_fields() -> None:
    assert AccountCredited.model_validate({**_credit(100), "channel": "app"}).amount_fen == 100


def test_settle_claim_needs_its_figures_and_reverse_needs_what_it_reverses() -> None:
    base = {"claim_id": "440300-H44030500012-2", "recipient_id": VALID_ID, "occurred_at": "2026-03-02T10:15:00+08:00"}
    with pytest.raises(ValidationError, match="amount_fen"):
        Claim.model_validate(
            {
                **base,
                "kind": "settle",
                "recipient_region": "440300",
                "category": "institution",
                "service_region": "440300",
            }
        )
    with pytest.raises(ValidationError, match="reverses"):
        Claim.model_validate({**base, "kind": "reverse"})
    reversal = {**base, "kind": "reverse", "reverses": "440300-H44030500012-1"}
    assert Claim.model_validate(reversal).reverses == "440300-H44030500012-1"
    with pytest.raises(ValidationError):
        Claim.model_validate({**reversal, "kind": "refund"})


HOSPITAL_CLAIM = {
    "claim_id": "440300-H44030500012-000000871",
    "kind": "settle",
    "recipient_id": VALID_ID,
    "recipient_region": "440300",
    "category": "institution",
    "institution_code": "H44030500012",
    "service_region": "440300",
    "amount_fen": 12850,
    "occurred_at": "2026-03-02T10:15:00+08:00",
}


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"claim_id": "110100-H44030500012-000000871"}, "claim_id must be 440300-H44030500012-<serial>"),
        ({"institution_code": "H44030500013"}, "claim_id must be 440300-H44030500013-<serial>"),
        ({"claim_id": "440300-H44030500012-"}, "claim_id must be"),
        ({"claim_id": "000000871"}, "claim_id must be"),
        ({"service_region": "44٠٣٠٠"}, "region must be a 6-digit"),
        ({"category": "resident_premium", "institution_code": None, "claim_id": "440301-1"}, "must be 440300-<serial>"),
    ],
)
def test_a_claim_id_begins_with_its_service_region_and_institution_code(fields, why) -> None:
    """Else another sender could take an institution's next id first (issue 20): the id names its sender."""
    assert Claim.model_validate(HOSPITAL_CLAIM).claim_id == HOSPITAL_CLAIM["claim_id"]
    with pytest.raises(ValidationError, match=why):
        Claim.model_validate({**HOSPITAL_CLAIM, **fields})
    premium = {**HOSPITAL_CLAIM, "category": "ltc_premium", "institution_code": None, "claim_id": "440300-2026-03-77"}
    assert Claim.model_validate(premium).institution_code is None


@pytest.mark.parametrize("claim_id", ["110100-H44030500012-9", "reversal-9", "440300", "440301-H44030500012-9"])
def test_a_reversal_id_begins_with_the_service_region_of_the_claim_it_reverses(claim_id) -> None:
    reversal = {
        "claim_id": claim_id,
        "kind": "reverse",
        "recipient_id": VALID_ID,
        "reverses": HOSPITAL_CLAIM["claim_id"],
        "occurred_at": "2026-03-02T10:15:00+08:00",
    }
    with pytest.raises(ValidationError, match="claim_id must be 440300-<serial>"):
        Claim.model_validate(reversal)
    assert Claim.model_validate({**reversal, "claim_id": "440300-H44030500012-R9"}).kind == "reverse"


def test_a_claim_recorded_before_the_id_rule_may_still_be_reversed_by_an_id_of_a_region() -> None:
    """Its id names no region: the reversal's own id names one (the province's topic checks it)."""
    reversal = {
        "claim_id": "440300-R9",
        "kind": "reverse",
        "recipient_id": VALID_ID,
        "reverses": "claim-1f2e",
        "occurred_at": "2026-03-02T10:15:00+08:00",
    }
    assert Claim.model_validate(reversal).reverses == "claim-1f2e"
    with pytest.raises(ValidationError, match="claim_id must be <a service region>-<serial>"):
        Claim.model_validate({**reversal, "claim_id": "R9"})


def test_an_item_of_no_amount_is_refused_every_fen_amount_is_1_to_10_to_the_12() -> None:
    claim = {
        "claim_id": "440300-P44030500012-1",
        "recipient_id": VALID_ID,
        "recipient_region": "440300",
        "category": "pharmacy",
        "institution_code": "P44030500012",
        "service_region": "440300",
        "amount_fen": 100,
        "occurred_at": "2026-03-02T10:15:00+08:00",
    }
    with pytest.raises(ValidationError, match="items.0.amount_fen"):
        Claim.model_validate({**claim, "items": [{"code": "x", "in_catalogue": True, "amount_fen": 0}]})
    assert Claim.model_validate({**claim, "items": [{"code": "x", "in_catalogue": True, "amount_fen": 1}]}).items


def test_a_request_needs_region_and_kinship_and_other_actions_do_not() -> None:
    base = {
        "command_id": "k1",
        "actor_id": VALID_ID,
        "provider_id": VALID_ID,
        "recipient_id": VALID_ID,
        "requested_at": "2026-03-02T10:15:00+08:00",
    }
    with pytest.raises(ValidationError, match="recipient_region and kinship"):
        RelationshipCommand.model_validate({**base, "action": "request"})
    assert RelationshipCommand.model_validate({**base, "action": "dissolve"}).action == "dissolve"


def test_only_grant_is_a_wallet_command_there_is_no_undo() -> None:
    base = {
        "command_id": "k1",
        "actor_id": VALID_ID,
        "provider_id": VALID_ID,
        "recipient_id": VALID_ID,
        "recipient_region": "440300",
        "amount_fen": 100,
        "requested_at": "2026-03-02T10:15:00+08:00",
    }
    assert WalletCommand.model_validate({**base, "action": "grant"}).amount_fen == 100
    with pytest.raises(ValidationError):
        WalletCommand.model_validate({**base, "action": "revoke"})


def test_yuan_and_fen() -> None:
    assert yuan(2000) == 200_000
    assert format_fen(12850) == "¥128.50"
    assert format_fen(-5) == "-¥0.05"


def test_topic_registry_is_unique_and_every_key_field_exists() -> None:
    names = [topic.name for topic in ALL_TOPICS]
    assert len(names) == len(set(names))
    for topic in ALL_TOPICS:
        assert topic.key_field in topic.model.model_fields, topic.name


@pytest.mark.parametrize("reason", ["", "   ", "\t\n"])
def test_a_supervision_action_needs_a_reason_in_words(reason: str) -> None:
    """An empty reason once froze nothing: the reason string was the flag."""
    with pytest.raises(ValidationError):
        SupervisionActed.model_validate(
            {
                "event_id": "s1",
                "person_id": VALID_ID,
                "action": "freeze",
                "reason": reason,
                "occurred_at": "2026-03-02T10:15:00+08:00",
            }
        )
